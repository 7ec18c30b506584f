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
    lines += ["", "## Parameters", "", "```json", json.dumps({"curate": info["params"], "generate": info["gen_params"]},
                                                          indent=2), "```", ""]
    return str(DatasetCard("---\n" + card_metadata(info["counts"]).to_yaml() + "\n---\n\n" + "\n".join(lines)))
