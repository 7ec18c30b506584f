"""The ReflectEvo tasks: LogiQA, MATH, MBPP, BIG-bench (multiple choice and free text).

Each split is read from the first place that has it:

1. ReflectEvo's own `data_source` format: `<data>/reflectevo/data_source/<name>_<split>.jsonl`;
2. the unified schema: `<data>/benchmarks/<file>.jsonl` (docs/data.md §3);
3. online: ReflectEvo's test files by pinned raw URL (sha256-checked, cached), or a Hugging Face
   dataset (lazy `datasets` import): a local snapshot of the dataset repository under the task option
   `hub_dir` or `$REFLECTEVO_HUB_DIR` (`<hub_dir>/<owner>/<name>`, read by `datasets` like the hub), else
   the hub at the pinned revision (the Hugging Face cache when `HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE` is
   set); one clear line naming the dataset, revision, what was tried and the fix when none works.
   A hub snapshot is read before the unified subsets of step 2 (it is the full split).

`<data>` is the task option `data_dir`, else `$REFLECTEVO_DATA`, else `../shared/data` next to the
repository when it exists. Item ids are stable: the unified files' ids (original ids where the source
has them), whichever local format the split came from. See docs/tasks.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError, unknown
from reflectevo.tasks.answers import last_boxed, options_from_question
from reflectevo.tasks.base import Item
from reflectevo.tasks.typed import TypedTask

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Hugging Face dataset commits (docs/tasks.md "Pinned sources" says where each SHA was found). Every hub
# dataset a loader reads has an entry; None = no commit of it is known (none appears in any public code,
# issue or page searched from a machine that cannot reach the hub): it loads from a branch
# (`UNPINNED_BRANCH`) with a warning, and `reflectevo tasks` marks it [unpinned]. Pin one by writing the
# commit the hub resolves (`huggingface_hub.HfApi().dataset_info(id).sha`) here.
HUB_REVISIONS: dict[str, str | None] = {
    "EleutherAI/hendrycks_math": "21a5633873b6a120296cce3e2df9d5550074f4a3",
    "google-research-datasets/mbpp": "4bb6404fdc6cacfda99d4ac4205087b89d32030c",
    "lucasmccabe/logiqa": None,          # a loading-script dataset: read from its parquet conversion branch
    "tasksource/bigbench": None,         # BIG-bench's JSON tasks (not coqa or squad_shifts: programmatic tasks)
    "stanfordnlp/coqa": None,            # BIG-bench's coqa_conversational_question_answering is built from it
    "ludwigschmidt/squadshifts": None,   # BIG-bench's squad_shifts is built from it (plus SQuAD 1.1 dev)
}
UNPINNED_BRANCH = {"lucasmccabe/logiqa": "refs/convert/parquet"}
_SHA = re.compile(r"[0-9a-f]{40}")
REFLECTEVO_COMMIT = "6634f923bd122f05287ae5573b198822315abb79"
_RAW = f"https://raw.githubusercontent.com/bigai-nlco/ReflectEvo/{REFLECTEVO_COMMIT}/data/data_source/{{name}}_test.jsonl"
# sha256 of ReflectEvo's four test files at that commit (docs/data.md: byte-identical local copies)
REFLECTEVO_SHA256 = {
    "logiqa": "341727c06cf604d90b2adbcfa39736fc81d1a2fcd25c41d4adc8441c621e7f06",
    "math": "291551a7ade17d6a4541c386752f7d7742f11258928878f71fe4e88977add68b",
    "mbpp": "d3605136eaa3d19d23496dd93d3623a637336768068f39835c1e6df44e9bfb81",
    "bigbench": "d6673ddf3b6a06a362d974bd77678492aa75cd19b79033d473e9643e81cd341e",
}
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")

# lucasmccabe/logiqa is a loading-script dataset: read the hub's parquet conversion branch (no commit
# of it is known, so it is unpinned)
LOGIQA_PARQUET = "refs/convert/parquet"

MBPP_LEAD = "You are an expert Python programmer, and here is your task: "
MBPP_TESTS = "Your code should pass these tests:"


DATA_DIR_ORIGINS = ("task option data_dir (params: prepare.tasks[].options.data_dir)", "$REFLECTEVO_DATA",
                    "the default ../shared/data next to the repository")


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data folder: explicit option, else $REFLECTEVO_DATA, else ../shared/data if it exists."""
    return data_dir_and_origin(explicit)[0]


def data_dir_and_origin(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """The local data folder and where it came from (for error messages)."""
    if explicit:
        return Path(explicit), DATA_DIR_ORIGINS[0]
    env = os.environ.get("REFLECTEVO_DATA")
    if env:
        return Path(env), DATA_DIR_ORIGINS[1]
    default = REPO_ROOT.parent / "shared" / "data"
    if default.is_dir():
        return default, DATA_DIR_ORIGINS[2]
    return None, (f"none: {DATA_DIR_ORIGINS[0]} and $REFLECTEVO_DATA are unset and {default} does not exist")


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset split at a commit (`HUB_REVISIONS`) or, where none is known, a branch."""

    dataset: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    revision: str = ""  # "" = the pinned commit from HUB_REVISIONS, else "main"

    @property
    def resolved_revision(self) -> str:
        return self.revision or HUB_REVISIONS.get(self.dataset) or UNPINNED_BRANCH.get(self.dataset, "main")

    @property
    def pinned(self) -> bool:
        return bool(_SHA.fullmatch(self.resolved_revision))

    def describe(self) -> str:
        cfg = "" if self.configs == (None,) else f" ({', '.join(c for c in self.configs if c)})"
        pin = "" if self.pinned else " [unpinned]"
        return f"hf:{self.dataset}@{self.resolved_revision}{cfg} split {self.split}{pin}"


# BIG-bench multiple-choice tasks used as training sources: the six of ReflectEvo-460K that are identified, then
# our stand-ins for its six unidentified small subtasks (reflectevo/resources/paper.yaml says which domain each
# stands in for). All are JSON tasks of tasksource/bigbench (config = the BIG-bench task name).
BIGBENCH_MC = ("vitaminc_fact_verification", "strategyqa", "social_iqa", "timedial", "analytic_entailment",
               "physical_intuition",
               "causal_judgment", "cause_and_effect", "sports_understanding", "social_support", "winowhy",
               "temporal_sequences")
BIGBENCH_FREE = {"squad_shifts": "bigbench_squad_shifts.jsonl", "coqa": "bigbench_coqa.jsonl"}
# Split sizes (train, validation) of tasksource/bigbench, from the catalog of the Hugging Face `bigbench`
# dataset it was converted from (tensorflow/docs-l10n@353467c:site/zh-cn/datasets/community_catalog/huggingface/
# bigbench.md). The last three are estimates: BIG-bench 1.0.0's example counts (shared/docs/data.md: 2,550, 81,
# 54,668) split as that catalog shows the builder splits (validation = max(16, 20%)). winowhy: not known offline.
BIGBENCH_SIZES = {"analytic_entailment": (54, 16), "causal_judgment": (152, 38), "cause_and_effect": (123, 30),
                  "social_iqa": (1548, 387), "social_support": (718, 179), "sports_understanding": (789, 197),
                  "strategyqa": (1832, 457), "temporal_sequences": (800, 200),
                  "timedial": (2040, 510), "physical_intuition": (65, 16), "vitaminc_fact_verification": (43735, 10933)}
# BIG-bench's coqa and squad_shifts are programmatic tasks (not in tasksource/bigbench): their hub sources are
# the datasets BIG-bench built them from. CoQA: questions of the train stories (108,647); SQuADShifts: the four
# new test sets (new_wiki 7,938, nyt 10,065, reddit 9,803, amazon 9,885; its paper's Table 1).
COQA_HUB = HubSource("stanfordnlp/coqa", "train")
SQUADSHIFTS_CONFIGS = ("new_wiki", "nyt", "reddit", "amazon")
SQUADSHIFTS_HUB = HubSource("ludwigschmidt/squadshifts", "test", configs=SQUADSHIFTS_CONFIGS)
FREE_SIZES = {"coqa": 108647, "squad_shifts": 37691}


@dataclass(frozen=True)
class SplitSource:
    data_source: str | None = None  # file name under <data>/reflectevo/data_source/
    unified: tuple[str, ...] = ()  # file names under <data>/benchmarks/
    url: str | None = None  # ReflectEvo raw file (data_source format)
    sha256: str | None = None
    hub: HubSource | None = None
    size: int | None = None  # size of the full split (the hub's metadata; local copies may be subsets)

    def online(self) -> str | None:
        if self.url:
            return self.url
        return self.hub.describe() if self.hub else None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from reflectevo.jsonio import read_jsonl

    return read_jsonl(path)


def _offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("REFLECTEVO_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def fetch_url(url: str, sha256: str | None, timeout: float = 30.0) -> Path:
    """Download `url` once into the cache ($REFLECTEVO_CACHE or ~/.cache/reflectevo), checking its sha256."""
    cache = Path(os.environ.get("REFLECTEVO_CACHE", Path.home() / ".cache" / "reflectevo")) / "sources"
    target = cache / (hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rsplit("/", 1)[-1])
    if target.exists():
        return target
    if _offline():
        raise ReflectEvoError(f"offline (REFLECTEVO_OFFLINE/HF_HUB_OFFLINE set): cannot download {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except OSError as e:
        raise ReflectEvoError(f"cannot download {url}: {e}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ReflectEvoError(f"{url}: sha256 mismatch (expected {sha256})")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def hub_snapshot(dataset: str, hub_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """A local snapshot of a hub dataset repository: `<hub_dir>/<owner>/<name>` (task option `hub_dir`, else
    `$REFLECTEVO_HUB_DIR`), e.g. from `hf download --repo-type dataset <id> --revision <rev> --local-dir ...`."""
    root = hub_dir or os.environ.get("REFLECTEVO_HUB_DIR")
    if not root:
        return None
    path = Path(root) / dataset
    return path if path.is_dir() else None


def _hub_failure(src: HubSource, cfg: str | None, tried: str, why: str) -> ReflectEvoError:
    what = f"hf:{src.dataset}@{src.resolved_revision}" + (f" config {cfg}" if cfg else "") + f" split {src.split}"
    return ReflectEvoError(
        f"cannot load {what}: tried {tried}: {why}. Fix: run once with network access; or set HF_HUB_OFFLINE=1 "
        f"HF_DATASETS_OFFLINE=1 with a Hugging Face cache that holds this revision; or put a local copy at "
        f"$REFLECTEVO_HUB_DIR/{src.dataset} (hf download --repo-type dataset {src.dataset} --revision "
        f"{src.resolved_revision} --local-dir $REFLECTEVO_HUB_DIR/{src.dataset})")


def load_hub(src: HubSource, hub_dir: str | os.PathLike[str] | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    """Rows of a hub split as (config, row), from a local snapshot (`hub_snapshot`) or the hub; one
    ReflectEvoError naming the dataset, revision, what was tried and the fix when neither works."""
    snapshot = hub_snapshot(src.dataset, hub_dir)
    hf_offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")
    if snapshot is not None:
        tried = f"the local snapshot {snapshot}"
    else:
        local = ("no local snapshot ($REFLECTEVO_HUB_DIR/" + src.dataset + " absent)" if
                 (hub_dir or os.environ.get("REFLECTEVO_HUB_DIR")) else "no local snapshot ($REFLECTEVO_HUB_DIR unset)")
        tried = f"{local}, the Hugging Face cache {cache}" + (" (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)"
                                                               if hf_offline else ", the hub")
        if os.environ.get("REFLECTEVO_OFFLINE") == "1" and not hf_offline:
            raise _hub_failure(src, None, local, "offline (REFLECTEVO_OFFLINE=1): the hub is not asked")
    try:
        import datasets
    except ImportError:
        raise ReflectEvoError(f"loading {src.describe()} needs the `datasets` package") from None
    rows: list[tuple[str | None, dict[str, Any]]] = []
    for cfg in src.configs:
        try:
            if snapshot is not None:   # the snapshot is trusted to hold the pinned revision (as a model's path:)
                ds = datasets.load_dataset(str(snapshot), cfg, split=src.split)
            else:
                ds = datasets.load_dataset(src.dataset, cfg, split=src.split, revision=src.resolved_revision)
        except Exception as e:  # network, missing dataset or config, script datasets: one clear line
            raise _hub_failure(src, cfg, tried, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        rows.extend((cfg, dict(r)) for r in ds)
    if snapshot is None and not src.pinned:
        log.warning("source hf:%s is not pinned to a commit (revision %s): its content may change upstream "
                    "(docs/tasks.md, Pinned sources)", src.dataset, src.resolved_revision)
    return rows


def _subset(items: list[Item], n: int, seed: int) -> list[Item]:
    if not n or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


class SourcedTask(TypedTask):
    """A task whose splits come from local files or an online source (see the module docstring)."""

    name = ""
    split_sources: dict[str, SplitSource] = {}

    def __init__(self, data_dir: str | None = None, online: bool = True, timeout: float | None = None,
                 hub_dir: str | None = None) -> None:
        self.data_dir, self.data_dir_origin = data_dir_and_origin(data_dir)
        self.online = online
        self.hub_dir = hub_dir  # local hub snapshots (else $REFLECTEVO_HUB_DIR; see hub_snapshot)
        if timeout is not None:
            self.timeout = float(timeout)
        self._cache: dict[str, list[Item]] = {}

    @property
    def splits(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.split_sources)

    # -- per-format converters (subclasses) -----------------------------------------------------------
    def from_data_source(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        raise ReflectEvoError(f"task {self.name}: no ReflectEvo data_source format for split {split}")

    def from_unified(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        return [self._unified_item(r) for r in rows]

    def from_hub(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        raise ReflectEvoError(f"task {self.name}: no hub source for split {split}")

    def _unified_item(self, r: dict[str, Any]) -> Item:
        meta = dict(r.get("meta") or {})
        choices = r.get("choices")
        if choices and meta.get("options_in_question"):
            meta["choices"] = list(choices)  # the question already lists them: keep prompts clean
            choices = None
        return Item(id=str(r["id"]), task=self.name, question=str(r["question"]), answer=str(r["answer"]),
                    choices=tuple(choices) if choices else None,
                    tests=tuple(r["tests"]) if r.get("tests") else None, meta=meta)

    # -- loading ---------------------------------------------------------------------------------------
    def local_paths(self, split: str) -> list[Path]:
        spec = self.split_sources[split]
        if self.data_dir is None:
            return []
        paths = []
        if spec.data_source:
            paths.append(self.data_dir / "reflectevo" / "data_source" / spec.data_source)
        paths += [self.data_dir / "benchmarks" / f for f in spec.unified]
        return paths

    def all_items(self, split: str) -> list[Item]:
        if split not in self.split_sources:
            raise unknown("split", split, self.splits, f"task {self.name}")
        if split not in self._cache:
            self._cache[split] = self._load_split(split)
        return self._cache[split]

    def load(self, split: str, n: int = 0, seed: int = 0) -> list[Item]:
        return _subset(self.all_items(split), n, seed)

    def _load_split(self, split: str) -> list[Item]:
        spec = self.split_sources[split]
        if self.data_dir is not None:
            ds = self.data_dir / "reflectevo" / "data_source" / spec.data_source if spec.data_source else None
            if ds is not None and ds.exists():
                return self.from_data_source(_read_jsonl(ds), split)
        if spec.hub is not None and hub_snapshot(spec.hub.dataset, self.hub_dir) is not None:
            return self.from_hub(load_hub(spec.hub, self.hub_dir), split)   # the full split, before subsets
        if self.data_dir is not None:
            unified = [self.data_dir / "benchmarks" / f for f in spec.unified]
            if unified and all(p.exists() for p in unified):
                return self.from_unified([r for p in unified for r in _read_jsonl(p)], split)
        where = f"task {self.name}, split {split}: no local copy ({self._looked_for(split)})"
        online = spec.online()
        if online is None:
            raise ReflectEvoError(f"{where} and no online source is known")
        if not self.online:
            raise ReflectEvoError(f"{where}; online source {online} disabled (task option online: false)")
        try:
            if spec.url:
                return self.from_data_source(_read_jsonl(fetch_url(spec.url, spec.sha256)), split)
            assert spec.hub is not None
            return self.from_hub(load_hub(spec.hub, self.hub_dir), split)
        except ReflectEvoError as e:
            raise ReflectEvoError(f"{where}, and the online source failed: {e}") from None

    def _looked_for(self, split: str) -> str:
        """Every local place a split is read from, and where the data folder came from."""
        if self.data_dir is None:
            return f"data folder: {self.data_dir_origin}"
        paths = ", ".join(str(p) for p in self.local_paths(split))
        return f"looked for {paths}; data folder {self.data_dir} from {self.data_dir_origin}"

    def describe(self) -> dict[str, Any]:
        """Source and size of each split (local line counts where a local copy exists). A split whose local copy
        cannot be read is reported as such (with the source's metadata size), not raised."""
        sizes: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for split in self.split_sources:
            try:
                sizes[split], sources[split] = self._describe_split(split)
            except ReflectEvoError as e:
                sizes[split] = self.split_sources[split].size
                sources[split] = f"unreadable: {e}"
        return {"source": sources, "sizes": sizes}

    def _describe_split(self, split: str) -> tuple[Any, str]:
        spec = self.split_sources[split]
        local = [p for p in self.local_paths(split) if p.exists()]
        more = f" (+{len(local) - 1} files)" if len(local) > 1 else ""
        snapshot = hub_snapshot(spec.hub.dataset, self.hub_dir) if spec.hub is not None else None
        if snapshot is not None and not (spec.data_source and local and local[0].name == spec.data_source):
            return len(self.all_items(split)), f"local snapshot {snapshot} of {spec.hub.describe()}"
        if local and split in self._cache:
            return len(self._cache[split]), f"local {local[0]}"
        if local and not self._needs_filter(split):
            n = _count_lines(local[0]) if spec.data_source and local[0].name == spec.data_source \
                else sum(_count_lines(p) for p in local)
            return n, f"local {local[0]}{more}"
        if local:
            return len(self.all_items(split)), f"local {local[0]}{more}"
        return spec.size, f"online {spec.online()}"

    def _needs_filter(self, split: str) -> bool:
        """True when a local file holds more than the split (rows are filtered on load)."""
        return False


# ----------------------------------------------------------------------------------------------------
class LogiQATask(SourcedTask):
    """LogiQA (English), 4-way multiple choice; ReflectEvo's 500 test items keep the options in the question."""

    name = "logiqa"
    answer_type = "choice"
    split_sources = {
        "train": SplitSource(data_source="logiqa_train.jsonl", hub=HubSource("lucasmccabe/logiqa", "train",
                             revision=LOGIQA_PARQUET), size=7376),
        "test": SplitSource(data_source="logiqa_test.jsonl", unified=("reflectevo_logiqa_test.jsonl",),
                            url=_RAW.format(name="logiqa"), sha256=REFLECTEVO_SHA256["logiqa"], size=500),
        "upstream_test": SplitSource(unified=("logiqa_en_test.jsonl",), hub=HubSource(
            "lucasmccabe/logiqa", "test", revision=LOGIQA_PARQUET), size=651),
    }

    def from_data_source(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        items = []
        for i, r in enumerate(rows, start=1):
            oid = r.get("id", i)
            q = str(r["question"])
            items.append(Item(id=f"logiqa-en-{split}-{oid}", task=self.name, question=q,
                              answer=str(r["answer"]).strip().upper(),
                              meta={"original_id": oid, "original_answer": r["answer"], "options_in_question": True,
                                    "choices": options_from_question(q)}))
        return items

    def from_hub(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        items = []
        for i, (_, r) in enumerate(rows, start=1):
            items.append(Item(id=f"logiqa-en-{split}-{i}", task=self.name,
                              question=f"{r['context']}\n{r['query']}", choices=tuple(r["options"]),
                              answer=chr(65 + int(r["correct_option"]))))
        return items


class MathTask(SourcedTask):
    """Hendrycks MATH: the gold is the last \\boxed{} of the solution; answers as Finish<<<...>>>."""

    name = "math"
    answer_type = "math"
    split_sources = {
        "train": SplitSource(data_source="math_train.jsonl", hub=HubSource("EleutherAI/hendrycks_math", "train",
                             configs=MATH_SUBJECTS), size=7500),
        "test": SplitSource(data_source="math_test.jsonl", unified=("reflectevo_math_test.jsonl",),
                            url=_RAW.format(name="math"), sha256=REFLECTEVO_SHA256["math"], size=500),
        "upstream_test": SplitSource(unified=("math_test.jsonl",), hub=HubSource(
            "EleutherAI/hendrycks_math", "test", configs=MATH_SUBJECTS), size=5000),
    }

    def _item(self, iid: str, r: dict[str, Any]) -> Item:
        gold = last_boxed(str(r["solution"]))
        if gold is None:
            raise ReflectEvoError(f"task math: item {iid} has no \\boxed{{}} answer in its solution")
        return Item(id=iid, task=self.name, question=str(r["problem"]), answer=gold,
                    meta={"solution": r["solution"], "level": r.get("level"), "type": r.get("type")})

    def from_data_source(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        return [self._item(f"reflectevo-math-{split}-{i}", r) for i, r in enumerate(rows, start=1)]

    def from_hub(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        counters: dict[str | None, int] = {}
        items = []
        for cfg, r in rows:
            counters[cfg] = counters.get(cfg, 0) + 1
            items.append(self._item(f"math-{split}-{cfg}-{counters[cfg] - 1}", r))
        return items


def mbpp_question(text: str, tests: Iterable[str]) -> str:
    """ReflectEvo's MBPP prompt text: lead-in, the task, and the tests the code must pass."""
    return f"{MBPP_LEAD}{text}\n{MBPP_TESTS}\n{list(tests)}"


class MBPPTask(SourcedTask):
    """MBPP: Python code between [BEGIN] and [END], judged by the item's asserts in the sandbox."""

    name = "mbpp"
    answer_type = "code"
    split_sources = {
        "train": SplitSource(data_source="mbpp_train.jsonl", hub=HubSource("google-research-datasets/mbpp", "train",
                             configs=("full",)), size=374),
        "test": SplitSource(data_source="mbpp_test.jsonl", unified=("reflectevo_mbpp_test.jsonl",),
                            url=_RAW.format(name="mbpp"), sha256=REFLECTEVO_SHA256["mbpp"], size=500),
    }

    def _item(self, r: dict[str, Any]) -> Item:
        tests = tuple(r["test_list"])
        return Item(id=f"mbpp-{r['task_id']}", task=self.name, question=mbpp_question(r["text"], tests),
                    answer=str(r["code"]), tests=tests,
                    meta={"task_id": r["task_id"], "text": r["text"], "test_setup_code": r.get("test_setup_code") or "",
                          "challenge_test_list": list(r.get("challenge_test_list") or [])})

    def from_data_source(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        return [self._item(r) for r in rows]

    def from_hub(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        return [self._item(r) for _, r in rows]

    def from_unified(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        return [self._item({"task_id": r["meta"]["task_id"], "text": r["question"], "code": r["answer"],
                            "test_list": r["tests"], "test_setup_code": r["meta"].get("test_setup_code", ""),
                            "challenge_test_list": r["meta"].get("challenge_test_list", [])}) for r in rows]


class _ReflectEvoBigBench(SourcedTask):
    """ReflectEvo's BIG-bench test file mixes 356 MC rows (with `id`) and 144 free-text rows."""

    want_mc = True
    split_sources = {
        "test": SplitSource(data_source="bigbench_test.jsonl", unified=("reflectevo_bigbench_test.jsonl",),
                            url=_RAW.format(name="bigbench"), sha256=REFLECTEVO_SHA256["bigbench"]),
    }

    def _needs_filter(self, split: str) -> bool:
        return True

    def from_data_source(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        items = []
        for i, r in enumerate(rows, start=1):
            is_mc = "id" in r
            if is_mc != self.want_mc:
                continue
            q = str(r["question"])
            meta: dict[str, Any] = {"original_answer": r["answer"], "options_in_question": is_mc}
            if is_mc:
                meta.update(original_id=r["id"], choices=options_from_question(q))
            items.append(Item(id=f"reflectevo-bigbench-{split}-{i}", task=self.name, question=q,
                              answer=str(r["answer"]).strip().upper() if is_mc else str(r["answer"]), meta=meta))
        return items

    def from_unified(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        kind = "multiple_choice" if self.want_mc else "free_text"
        return [self._unified_item(r) for r in rows if r.get("task_type") == kind]


class BigBenchTask(_ReflectEvoBigBench):
    """BIG-bench multiple choice in ReflectEvo's test set (VitaminC, StrategyQA, Social IQa, TimeDial)."""

    name = "bigbench"
    answer_type = "choice"
    want_mc = True
    split_sources = {"test": SplitSource(**{**_ReflectEvoBigBench.split_sources["test"].__dict__, "size": 356})}


class BigBenchFreeTask(_ReflectEvoBigBench):
    """BIG-bench free text in ReflectEvo's test set (SQuADShifts, CoQA): normalised EM, token-F1 score."""

    name = "bigbench_free"
    answer_type = "text"
    want_mc = False
    split_sources = {"test": SplitSource(**{**_ReflectEvoBigBench.split_sources["test"].__dict__, "size": 144})}


@functools.lru_cache(maxsize=8)
def _reflectevo_bigbench_text(data_dir: str | None, online: bool = False) -> str:
    """All question texts of ReflectEvo's BIG-bench test set, joined (to drop test items from train). With
    `online`, a missing local copy is fetched (pinned URL); otherwise an unavailable test set gives ""."""
    parts: list[str] = []
    for cls in (BigBenchTask, BigBenchFreeTask):
        try:
            parts += [it.question for it in cls(data_dir=data_dir, online=online).all_items("test")]
        except ReflectEvoError:
            if online:
                raise
    return "\x00".join(parts)


def _norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


LEAK_NGRAM = 10          # words in a shared span that gives a test item away
BOILERPLATE_ITEMS = 3    # a span in this many test items is a task's instruction, not an item's text


def _ngrams(words: list[str], n: int = LEAK_NGRAM) -> set[int]:
    return {hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


@functools.lru_cache(maxsize=8)
def _reflectevo_bigbench_ngrams(data_dir: str | None, online: bool) -> frozenset[int]:
    """The 10-word spans of ReflectEvo's BIG-bench test items, minus the instructions many items share."""
    from collections import Counter

    counts: Counter[int] = Counter()
    for q in _reflectevo_bigbench_text(data_dir, online).split("\x00"):
        counts.update(_ngrams(_norm_words(q)))
    return frozenset(g for g, c in counts.items() if c < BOILERPLATE_ITEMS)


def shares_test_text(question: str, test_ngrams: frozenset[int] | set[int]) -> bool:
    """Whether a hub row is (part of) a ReflectEvo test item: it shares a 10-word span (lower case, alphanumeric
    words) with one. Hub renderings differ from ReflectEvo's (`Q: ... A:` prompts, a story shared by many CoQA
    turns, other option layouts), so whole questions cannot be compared; a shared passage, claim or question
    is what gives an item away. Spans found in several test items (a task's instruction) do not count."""
    return any(g in test_ngrams for g in _ngrams(_norm_words(question)))


class BigBenchSubtask(SourcedTask):
    """One BIG-bench task as a training source: ReflectEvo's test items are never among its rows (dropped by
    question text from the local subset, by any shared passage or question line from the hub's rows)."""

    def __init__(self, subtask: str, data_dir: str | None = None, online: bool = True,
                 timeout: float | None = None, hub_dir: str | None = None) -> None:
        free = subtask in BIGBENCH_FREE
        if subtask not in BIGBENCH_MC and not free:
            raise unknown("BIG-bench task", subtask, [*BIGBENCH_MC, *BIGBENCH_FREE])
        self.subtask = subtask
        self.name = f"bigbench/{subtask}"
        self.answer_type = "text" if free else "choice"
        local = BIGBENCH_FREE.get(subtask, f"bigbench_{subtask}.jsonl")
        if subtask == "coqa":
            self.split_sources = {"train": SplitSource(unified=(local,), hub=COQA_HUB, size=FREE_SIZES["coqa"])}
        elif subtask == "squad_shifts":
            self.split_sources = {"train": SplitSource(unified=(local,), hub=SQUADSHIFTS_HUB,
                                                       size=FREE_SIZES["squad_shifts"])}
        else:
            train, validation = BIGBENCH_SIZES.get(subtask, (None, None))
            self.split_sources = {
                "train": SplitSource(unified=(local,), hub=HubSource("tasksource/bigbench", "train", configs=(subtask,)),
                                     size=train),
                "validation": SplitSource(hub=HubSource("tasksource/bigbench", "validation", configs=(subtask,)),
                                          size=validation),
            }
        super().__init__(data_dir, online, timeout, hub_dir)

    def _needs_filter(self, split: str) -> bool:
        return True

    def from_unified(self, rows: list[dict[str, Any]], split: str) -> list[Item]:
        test_text = _reflectevo_bigbench_text(str(self.data_dir) if self.data_dir else None)
        items = []
        for r in rows:
            if str(r["question"]).strip() and str(r["question"]).strip() in test_text:
                continue  # the same item is in ReflectEvo's test set
            it = self._unified_item(r)
            prefix = str(it.meta.get("prompt_prefix") or "")
            if prefix:
                it = Item(id=it.id, task=it.task, question=prefix + it.question, answer=it.answer, choices=it.choices,
                          tests=it.tests, meta=it.meta)
            items.append(it)
        return items

    def _test_ngrams(self) -> frozenset[int]:
        try:
            return _reflectevo_bigbench_ngrams(str(self.data_dir) if self.data_dir else None, self.online)
        except ReflectEvoError as e:
            raise ReflectEvoError(f"task {self.name}: cannot drop ReflectEvo's BIG-bench test items from its hub rows "
                                  f"without that test set: {e}") from None

    def from_hub(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        test_ngrams = self._test_ngrams()
        if self.subtask == "coqa":
            items = self._coqa_items(rows, split)
        elif self.subtask == "squad_shifts":
            items = [Item(id=f"squadshifts-{cfg}-{r['id']}", task=self.name,
                          question=f"{r['context']}\n\nQuestion: {r['question']}", answer=str(r["answers"]["text"][0]),
                          meta={"all_answers": list(r["answers"]["text"]), "domain": cfg, "title": r.get("title")})
                     for cfg, r in rows if r["answers"]["text"]]
        else:
            items = []
            for i, (_, r) in enumerate(rows):
                iid = f"bigbench-{self.subtask}-{split}-{r.get('idx', i)}"
                opts, scores = list(r["multiple_choice_targets"]), list(r["multiple_choice_scores"])
                if not opts:
                    continue
                items.append(Item(id=iid, task=self.name, question=str(r["inputs"]), choices=tuple(opts),
                                  answer=chr(65 + max(range(len(opts)), key=lambda k: scores[k]))))
        kept = [it for it in items if not shares_test_text(it.question, test_ngrams)]
        if len(kept) < len(items):
            log.info("%s: %d of %d hub rows share text with ReflectEvo's BIG-bench test set: dropped",
                     self.name, len(items) - len(kept), len(items))
        return kept

    def _coqa_items(self, rows: list[tuple[str | None, dict[str, Any]]], split: str) -> list[Item]:
        """Every question of every story, rendered as ReflectEvo's test file does (story, then the question, no
        earlier turns); the gold is the free-text answer (`input_text`)."""
        items = []
        for s, (_, r) in enumerate(rows):
            answers = list(r["answers"]["input_text"])
            for t, (q, a) in enumerate(zip(r["questions"], answers)):
                items.append(Item(id=f"coqa-{split}-{s}-{t}", task=self.name, question=f"{r['story']}\n\nQuestion: {q}",
                                  answer=str(a), meta={"source": r.get("source"), "story": s, "turn": t,
                                                       "all_answers": [str(a)]}))
        return items


def bigbench_subtask_factory(subtask: str) -> Callable[..., BigBenchSubtask]:
    def make(**options: Any) -> BigBenchSubtask:
        return BigBenchSubtask(subtask, **options)

    make.__name__ = f"bigbench_{subtask}"
    return make


SUBTASK_FACTORIES = {f"bigbench/{s}": bigbench_subtask_factory(s) for s in [*BIGBENCH_MC, *BIGBENCH_FREE]}
