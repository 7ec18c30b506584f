"""The small flat metrics DVC declares, from the full metrics JSON the stages write next to them.

`dvc metrics show` / `dvc metrics diff` print every key of every declared metrics file, so only these
headlines are declared (dvc.yaml `metrics:`, under `metrics/headline/`); the full files
(`metrics/eval.json`, `metrics/curate.json`, `metrics/train/<setting>.json`, `metrics/generate.json`)
stay plain git-tracked outputs that the report and people read.

- evaluate: per system and task (and `overall`; per task only when there are several) Acc@t1,
  Acc@t2, Δ, and for `overall` the exact McNemar p-value of Acc@t2 against `base_reflect`
  (`p_vs_base_reflect`, from the block's `vs_base_reflect.p`); keys `<system>.<task>.<metric>`, nulls
  left out (`sft_qa` has Acc@t1 only);
- curate: the row count of each curated file (`dplus_train`, ...);
- train: `status` (`trained` / `no training data`) and `train_loss` (per role for several adapters:
  `<role>.train_loss`).
"""

from __future__ import annotations

import math
from typing import Any

EVAL_KEYS = ("acc_t1", "acc_t2", "delta", "p_vs_base_reflect")

Flat = dict[str, float | int | str]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def eval_headline(full: dict[str, Any]) -> Flat:
    """metrics/eval.json -> {"<system>.<task>.<metric>": value}; `overall` is the all-tasks block."""
    systems = full.get("systems")
    if systems is None and isinstance(full.get("overall"), dict):  # a file from before `systems` existed
        systems = {str(full.get("system") or "main"): full}
    out: Flat = {}
    for system, entry in (systems or {}).items():
        per_task = entry.get("per_task") or {}
        blocks = {**(per_task if len(per_task) > 1 else {}), "overall": entry.get("overall") or {}}
        for task, block in blocks.items():
            vs = block.get("vs_base_reflect")
            if task == "overall" and isinstance(vs, dict) and "p_vs_base_reflect" not in block:
                block = {**block, "p_vs_base_reflect": vs.get("p")}
            for key in EVAL_KEYS:
                if _number(block.get(key)) and (key != "p_vs_base_reflect" or task == "overall"):
                    out[f"{system}.{task}.{key}"] = block[key]
    return out


def curate_headline(full: dict[str, Any]) -> Flat:
    """metrics/curate.json -> the row count of each curated file."""
    return {k: v for k, v in (full.get("counts") or {}).items() if _number(v)}


def train_headline(full: dict[str, Any]) -> Flat:
    """metrics/train/<setting>.json -> status and the train loss of each adapter role."""
    status = full.get("status") or ("trained" if full.get("trained") else "no training data")
    roles = {k: v for k, v in full.items() if isinstance(v, dict) and "train_loss" in v}
    out: Flat = {"status": status}
    for role, r in roles.items():
        if _number(r["train_loss"]):
            out["train_loss" if len(roles) == 1 else f"{role}.train_loss"] = r["train_loss"]
    return out
