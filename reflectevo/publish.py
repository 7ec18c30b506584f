"""Publish a trained setting (`models/<setting>/`) or the curated sets (`data/curated/`) to the Hugging Face Hub.

    reflectevo publish models/one_stage --repo-id you/reflectevo-one-stage
    reflectevo publish data/curated --repo-id you/reflectevo-curated      # a dataset repo

`huggingface_hub`'s `create_repo` (private unless `public=True`; an existing repo is reused) and
`upload_folder`, with the token from the usual place (`HF_TOKEN`, else the one `hf auth login` saved) and
the endpoint from `HF_ENDPOINT` (default huggingface.co). Before anything is sent the folder is checked,
and refused with one line naming the problem, when:

- it has no README.md card with Hub metadata, or its card says "no training data" (or no set has rows);
- a file holds an absolute path: in cards, configs and other small text files any absolute path of two
  or more parts (`/home/...`, `C:\\...`); in data files (JSONL) this machine's own paths (home, working
  folder, the folder itself, the Python prefix); or PEFT's pickled `training_args.bin` is there.

A model folder is uploaded from a copy whose README.md cards are re-rendered for the repo (the usage
snippet loads from `repo_id`; `dataset_repo` fills the cards' `datasets:`).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError

KINDS = ("model", "dataset")
BINARY_SUFFIXES = {".safetensors", ".bin", ".gguf", ".parquet", ".arrow", ".pt", ".pth", ".npy", ".npz", ".png"}
VOCAB_FILES = {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"}  # token strings, not paths
DATA_SUFFIXES = {".jsonl"}
MAX_SCAN = 256 << 20  # bytes of one file read for the check
# an absolute POSIX path of >= 2 parts not inside a URL or a relative path, or a Windows drive path
ABSOLUTE = re.compile(r"(?<![\w.~:/\\-])/[\w.@+-]+/[\w.@+-][^\s\"'`<>)\]}]*|(?<![\w])[A-Za-z]:\\[^\s\"'`<>]+")
NO_DATA = "no training data"


@dataclass
class Plan:
    """What publish will upload: the checked folder, its kind, and the files (relative paths)."""

    folder: Path
    kind: str
    files: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)  # model_card.json (models)


def detect_kind(folder: Path) -> str:
    if (folder / "model_card.json").exists():
        return "model"
    if (folder / "stats.json").exists() or any(folder.glob("*_train.jsonl")):
        return "dataset"
    raise ReflectEvoError(f"{folder}: neither a models/<setting> folder (model_card.json) nor data/curated "
                          "(stats.json, *_train.jsonl); pass --kind model|dataset")


def _local_paths(folder: Path) -> re.Pattern[str]:
    """This machine's own folders (home, working folder, the published folder, the Python prefix, and their
    parents of >= 2 parts below the root): a pattern matching any of them, or a path inside one."""
    cands = {Path.home(), Path.cwd(), folder.resolve(), Path(sys.prefix).resolve()}
    cands |= {q for p in cands for q in p.parents if len(q.parts) >= 3}  # "/work", "/usr" alone say nothing
    names = sorted({str(p) for p in cands if len(p.parts) >= 2}, key=len, reverse=True)
    return re.compile("(?:" + "|".join(map(re.escape, names)) + r")(?=[/\\\s\"'`<>),\]}]|$)")


def absolute_paths(folder: Path) -> list[tuple[str, int, str]]:
    """(file, line, path) of every absolute path found in the folder's text files (see the module docstring)."""
    found: list[tuple[str, int, str]] = []
    local = _local_paths(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if path.name == "training_args.bin":
            found.append((rel, 0, "(pickled TrainingArguments with the absolute output_dir)"))
            continue
        if path.suffix in BINARY_SUFFIXES or path.name in VOCAB_FILES:
            continue
        with open(path, "rb") as fh:
            data = fh.read(MAX_SCAN)
        if b"\0" in data[:8192]:
            continue
        text = data.decode("utf-8", "replace")
        is_data = path.suffix in DATA_SUFFIXES
        for line_no, line in enumerate(text.splitlines(), start=1):
            hits = [m.group(0) for m in local.finditer(line)]
            if not is_data:
                hits += [m.group(0) for m in ABSOLUTE.finditer(line)]
            if hits:
                found.append((rel, line_no, hits[0]))
                break  # one per file is enough to refuse it
    return found


def _card_metadata(readme: Path, text: str, kind: str) -> dict[str, Any]:
    """The Hub metadata of a card (huggingface_hub's ModelCard / DatasetCard); a malformed block is one line."""
    import yaml
    from huggingface_hub import DatasetCard, ModelCard

    try:
        return (ModelCard if kind == "model" else DatasetCard)(text).data.to_dict()
    except (yaml.YAMLError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReflectEvoError(f"{readme}: malformed metadata block ({first})") from None


def check(folder: str | Path, kind: str | None = None) -> Plan:
    """Everything publish checks before any request; raises ReflectEvoError naming the first problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReflectEvoError(f"{folder}: not a folder")
    if not (folder / "model_card.json").exists() and (folder.parent / "model_card.json").exists():
        raise ReflectEvoError(f"{folder}: an adapter role's folder; publish the setting's folder {folder.parent}")
    kind = kind or detect_kind(folder)
    if kind not in KINDS:
        from reflectevo.errors import unknown

        raise unknown("kind", kind, KINDS, "--kind")
    readme = folder / "README.md"
    if not readme.exists():
        raise ReflectEvoError(f"{readme}: missing; the {'train' if kind == 'model' else 'curate'} stage writes the card")
    from reflectevo.jsonio import read_input_bytes

    text = read_input_bytes(readme, "card").decode("utf-8", errors="replace")
    if not text.startswith("---"):
        raise ReflectEvoError(f"{readme}: no Hub metadata block (re-run the stage that writes it)")
    plan = Plan(folder=folder, kind=kind)
    if kind == "model":
        meta = _card_metadata(readme, text, kind)
        card_json = folder / "model_card.json"
        if not card_json.exists():
            raise ReflectEvoError(f"{card_json}: missing; publish takes a folder the train stage wrote")
        from reflectevo.adapters import check_card_weights, read_card

        plan.card = read_card(folder)
        status = plan.card.get("status")
        if status == NO_DATA or re.search(r"^- status: \*\*no training data\*\*", text, re.MULTILINE):
            why = plan.card.get("reason") or "nothing was trained"
            raise ReflectEvoError(f"{readme}: the card says \"{NO_DATA}\" ({why}); nothing to publish")
        if status != "trained":
            raise ReflectEvoError(f"{card_json}: status {status!r}, not 'trained'")
        if not list(folder.rglob("adapter_config.json")) and not (folder / "config.json").exists():
            raise ReflectEvoError(f"{folder}: no adapter_config.json (nor a full model's config.json)")
        check_card_weights(folder, plan.card)   # every adapter's config and weights: a copy cut short is never uploaded
        if not meta.get("library_name") or not meta.get("pipeline_tag"):
            raise ReflectEvoError(f"{readme}: the metadata lacks library_name / pipeline_tag (re-run the train stage)")
    else:
        meta = _card_metadata(readme, text, kind)
        if not meta.get("configs"):
            raise ReflectEvoError(f"{readme}: no `configs:` in its metadata: every set is empty (or the card is old; "
                                  "re-run the curate stage)")
    bad = absolute_paths(folder)
    if bad:
        rel, line, what = bad[0]
        where = f"{folder / rel}:{line}" if line else str(folder / rel)
        more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
        raise ReflectEvoError(f"{where}: holds an absolute path {what!r}{more}; publish refuses machine paths")
    plan.files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return plan


def _staged(plan: Plan, repo_id: str, dataset_repo: str | None, into: Path) -> Path:
    """A copy of a model folder with README.md cards rendered for the repo; datasets are uploaded as they are."""
    if plan.kind != "model" or not plan.card:
        return plan.folder
    from reflectevo.modelcard import model_card_text

    dst = into / "upload"
    shutil.copytree(plan.folder, dst)
    datasets = [dataset_repo] if dataset_repo else None
    (dst / "README.md").write_text(model_card_text(plan.card, repo_id=repo_id, datasets=datasets), encoding="utf-8")
    for role, sub in plan.card.get("adapters", {}).items():
        if sub != "." and (dst / sub).is_dir():
            text = model_card_text(plan.card, role=role, repo_id=repo_id, datasets=datasets)
            (dst / sub / "README.md").write_text(text, encoding="utf-8")
    return dst


def publish(folder: str | Path, repo_id: str, *, kind: str | None = None, public: bool = False,
            endpoint: str | None = None, revision: str | None = None, commit_message: str | None = None,
            dataset_repo: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Check the folder, then create the repo (private by default) and upload it. Returns what was done."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise ReflectEvoError(f"--repo-id: expected owner/name, got {repo_id!r}")
    plan = check(folder, kind)
    repo_type = "model" if plan.kind == "model" else "dataset"
    out: dict[str, Any] = {"repo_id": repo_id, "repo_type": repo_type, "private": not public, "files": plan.files}
    if dry_run:
        return {**out, "dry_run": True}
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise ReflectEvoError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None)
    message = commit_message or f"reflectevo publish {plan.folder.name}"
    with tempfile.TemporaryDirectory(prefix="reflectevo-publish-") as tmp:
        src = _staged(plan, repo_id, dataset_repo, Path(tmp))
        try:
            url = api.create_repo(repo_id, repo_type=repo_type, private=not public, exist_ok=True)
            commit = api.upload_folder(folder_path=str(src), repo_id=repo_id, repo_type=repo_type,
                                       revision=revision, commit_message=message)
        except (HfHubHTTPError, OSError) as e:  # OSError: connection refused, DNS, TLS
            status = getattr(getattr(e, "response", None), "status_code", None)
            detail = " ".join(str(getattr(e, "server_message", None) or e).split())[:300]
            raise ReflectEvoError(f"{api.endpoint}: upload to {repo_id} failed: "
                                  f"{status or type(e).__name__} {detail}") from None
    return {**out, "url": str(url), "commit_url": getattr(commit, "commit_url", str(commit)),
            "commit": getattr(commit, "oid", None)}
