"""Data cards (README.md next to each curated artifact): the Hub's YAML metadata (`configs:`, one per set
with its non-empty `train` / `eval` files, so `datasets.load_dataset("data/curated", "dplus")` works here
and on the Hub after an upload) on top of the counts, statistics and provenance."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _judge_line(j: dict[str, Any]) -> str:
    model = j.get("model") or {}
    where = f", endpoint `{j['endpoint']}` model `{j.get('api_model')}` ({j.get('api_mode')})" if j.get("endpoint") else ""
    return (f"- Dpref judge: `{j.get('preset', model.get('preset'))}` via {j.get('backend', 'transformers')} "
            f"({model.get('source')}, revision `{model.get('revision')}`{where}), judge prompt `{j.get('prompt_version')}`")


SETS = {"dplus": "D+: reflections whose retry fixed a wrong trial 1 (SFT data of one_stage / two_stage)",
        "dpm": "D±: a fixing and a failing reflection for the same failed attempt (DPO data of dpo_pm)",
        "dpref": "Dpref: pairs of fixing reflections ranked by a judge (DPO data of dpo_pref)"}
SPLITS = ("train", "eval")
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def card_configs(counts: dict[str, int]) -> list[dict[str, Any]]:
    """One Hub config per set with rows; each lists its non-empty splits (`datasets` cannot load an empty one)."""
    out = []
    for name in SETS:
        files = [{"split": sp, "path": f"{name}_{sp}.jsonl"} for sp in SPLITS if counts.get(f"{name}_{sp}")]
        if files:
            out.append({"config_name": name, "data_files": files})
    return out


def _size_category(n: int) -> str:
    return next((label for limit, label in SIZES if n < limit), "n>1M")


def card_metadata(counts: dict[str, int]):
    """The Hub metadata (a `huggingface_hub.DatasetCardData`) of data/curated/README.md."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(configs=card_configs(counts), task_categories=["text-generation"],
                           size_categories=[_size_category(sum(counts.values()))], language=["en"],
                           pretty_name="reflectevo curated reflections",
                           tags=["reflectevo", "reflection", "self-correction", "synthetic"])


def curated_card(info: dict[str, Any]) -> str:
    from huggingface_hub import DatasetCard

    gen = info["generator"]
    configs = {c["config_name"]: [f["split"] for f in c["data_files"]] for c in card_configs(info["counts"])}
    lines = [
        "# Curated reflection data", "",
        "Schemas: see `data/README.md` (D+: `dplus_*.jsonl`, D±: `dpm_*.jsonl`). Train/eval are split by item.", "",
        f"- generator: `{gen['preset']}` ({gen['source']}, revision `{gen['revision']}`)",
        f"- prompt version: `{info['prompt_version']}`",
        *([_judge_line(info["judge"])] if info.get("judge") else []),
        f"- git revision: `{git_revision()}`", "",
        "## Loading", "",
        "```python", "from datasets import load_dataset", "",
        (f'ds = load_dataset("data/curated", "{next(iter(configs), "dplus")}")   # or the Hub repo id after '
         "`reflectevo publish data/curated --repo-id ...`"), "```", "",
        "| config | what | splits |", "|---|---|---|",
        *[f"| `{k}` | {v} | {', '.join(configs[k]) if k in configs else 'none: empty, not a config'} |"
          for k, v in SETS.items()], "",
        "`sft_qa` trains on the task items of `data/sources/train.jsonl` (stage `prepare`), not on this folder.", "",
        "## Counts", "", "| file | rows |", "|---|---|",
        *[f"| {k}.jsonl | {v} |" for k, v in info["counts"].items()], "",
        *[f"- note on {k}: {v}" for k, v in info.get("notes", {}).items()], "",
        "## Reflections dropped by filter", "",
        *([f"- {k}: {v}" for k, v in info["drops"].items()] or ["- none"]), "",
        "## Statistics per task (lengths in words)", "",
        "| task | items | trial-1 correct | reflection samples | Q&A-reflection samples | % correct after reflection "
        "| avg question | avg trial 1 | avg trial 2 | avg reflection |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {**info["stats"]["per_task"], "**total**": info["stats"]["total"]}
    for task, r in rows.items():
        lines.append(f"| {task} | {r['items']} | {r['trial1_correct']} | {r['reflection_samples']} | "
                     f"{r['qa_reflection_samples']} | {r['pct_correct_after_reflection']} | {r['avg_question_words']} | "
                     f"{r['avg_trial1_words']} | {r['avg_trial2_words']} | {r['avg_reflection_words']} |")
    lines += ["", *domain_table(info["stats"]["per_task"]), "", *sources_section(list(info["stats"]["per_task"]))]
    lines += ["", "## Parameters", "", "```json", json.dumps({"curate": info["params"], "generate": info["gen_params"]},
                                                          indent=2), "```", ""]
    return str(DatasetCard("---\n" + card_metadata(info["counts"]).to_yaml() + "\n---\n\n" + "\n".join(lines)))


def _domain_rows(per_task: dict[str, dict[str, Any]], group=None) -> dict[str, dict[str, Any]]:
    """Our per-task statistics summed into the paper's task domains (tasks of no domain: `other`), or into the
    groups `group(task)` names."""
    from reflectevo import paper

    group = group or (lambda task: paper.domain_of(task) or "other")
    sums: dict[str, dict[str, float]] = {}
    for task, r in per_task.items():
        d = sums.setdefault(group(task), dict.fromkeys(
            ("items", "samples", "qa", "right", "q", "t1", "t2", "refl"), 0.0))
        n, k = r["items"], r["reflection_samples"]
        d["items"] += n
        d["samples"] += k
        d["qa"] += r["qa_reflection_samples"]
        d["right"] += (r["pct_correct_after_reflection"] or 0) * k / 100
        d["q"] += (r["avg_question_words"] or 0) * n
        d["t1"] += (r["avg_trial1_words"] or 0) * n
        d["t2"] += (r["avg_trial2_words"] or 0) * k
        d["refl"] += (r["avg_reflection_words"] or 0) * k
    out = {}
    for dom, d in sums.items():
        per = lambda key, n: round(d[key] / n, 1) if n else None
        out[dom] = {"reflection_samples": int(d["samples"]), "qa_reflection_samples": int(d["qa"]),
                    "pct_correct_after_reflection": round(100 * d["right"] / d["samples"], 2) if d["samples"] else None,
                    "avg_question": per("q", d["items"]), "avg_trial1": per("t1", d["items"]),
                    "avg_trial2": per("t2", d["samples"]), "avg_reflection": per("refl", d["samples"])}
    return out


def domain_table(per_task: dict[str, dict[str, Any]]) -> list[str]:
    """The ReflectEvo-460K statistics table per task domain: ours (this data) next to the paper's published row."""
    from reflectevo import paper

    ours = _domain_rows(per_task)
    order = [d for d in paper.domains() if d in ours] + [d for d in ours if d not in paper.domains()]
    total = _domain_rows(per_task, lambda task: "total").get("total", {})
    cols = [("reflection samples", "reflection_samples"), ("Q&A-reflection samples", "qa_reflection_samples"),
            ("% correct after reflection", "pct_correct_after_reflection"), ("avg question", "avg_question"),
            ("avg answer, turn 1", "avg_trial1"), ("avg answer, turn 2", "avg_trial2"), ("avg reflection", "avg_reflection")]

    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:g}")

    lines = ["## Per domain, next to ReflectEvo-460K", "",
             "Each cell: ours / the paper's (arXiv 2505.16475, its statistics table). Ours: reflection samples = "
             "reflections generated; Q&A-reflection samples = failed trial-1 items that got a reflection; % correct = "
             "reflections whose retry was right; lengths in words. The paper does not define its two sample counters "
             "(for Mathematics the second is the larger) nor the unit of its lengths (tokens, most likely). Domains "
             "follow `reflectevo/resources/paper.yaml` (`other`: tasks outside the paper's sources).", "",
             "| domain | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for dom in order:
        ref = paper.domains().get(dom, {})
        lines.append(f"| {ref.get('label', dom)} | " + " | ".join(
            f"{cell(ours[dom][k])} / {cell(ref.get(k))}" for _, k in cols) + " |")
    ref = paper.total()
    lines.append("| **total** | " + " | ".join(f"{cell(total.get(k))} / {cell(ref.get(k))}" for _, k in cols) + " |")
    return lines


def sources_section(tasks: list[str]) -> list[str]:
    """Licence and citation of every source dataset behind the tasks of this data."""
    from reflectevo import paper

    known = paper.datasets_of(tasks)
    lines = ["## Sources: licences and citations", ""]
    for d in known.values():
        lines.append(f"- **{d['name']}** (`{d['hub']}` on the Hugging Face Hub): licence {d['license']}. "
                     f"Cite: {d['citation']}")
    other = [t for t in tasks if paper.task_info(t) is None]
    if other:
        lines.append(f"- {', '.join(f'`{t}`' for t in other)}: outside ReflectEvo's sources; see each task's own "
                     "source (`reflectevo tasks`).")
    stand = [t for t in tasks if (paper.task_info(t) or {}).get("role") == "stand-in"]
    if stand:
        lines.append(f"- Stand-ins (not identified in the paper; chosen for its unnamed small BIG-bench subtasks): "
                     f"{', '.join(f'`{t}`' for t in stand)}.")
    return lines
