"""Data cards (README.md next to each curated artifact)."""

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


def curated_card(info: dict[str, Any]) -> str:
    gen = info["generator"]
    lines = [
        "# Curated reflection data", "",
        "Schemas: see `data/README.md` (D+: `dplus_*.jsonl`, D±: `dpm_*.jsonl`). Train/eval are split by item.", "",
        f"- generator: `{gen['preset']}` ({gen['source']}, revision `{gen['revision']}`)",
        f"- prompt version: `{info['prompt_version']}`",
        *([_judge_line(info["judge"])] if info.get("judge") else []),
        f"- git revision: `{git_revision()}`", "",
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
    return "\n".join(lines)
