"""Self-evolution: iterate generate -> curate -> train with the model's own trained reflector.

Iteration 1 is the main pipeline (generate, curate, train@<setting>, evaluate). Iteration i >= 2
(dvc.yaml's `evolve_*@it<i>` stages, one set per entry of params `evolve.chain`) generates new episodes
on the train items with iteration i-1's adapters of `evolve.setting` (`reflectevo.adapters`: the
reflection and, for two_stage, the corrector; trial 1 stays the base model's), curates them, builds the
training data by `evolve.data` (`new`: this iteration's rows; `union`: with iteration i-1's training
data, near-duplicate reflections of an item dropped by curation's TF-IDF filter), trains `evolve.setting`
again (`evolve.init`: a fresh LoRA on the base, or continued from iteration i-1's adapter) and
evaluates it on the test split. An iteration whose previous adapter has "no training data" is recorded
as stopped, and so is every later one: the chain stops with one line, not a crash.

`summary` turns the iterations' outputs into metrics/evolve.json and plots/evolve.json: per iteration
the train fix rate and repeat rate (generated episodes), the D+ / D± sizes, Acc@t1 / Acc@t2 / Δ of the
setting on the test split and the exact McNemar test of its Acc@t2 against iteration 1's on the same items.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError

# the curated data each setting trains on (dvc.yaml `vars.settings`)
DATA_KIND = {"one_stage": "dplus", "two_stage": "dplus", "dpo_pm": "dpm", "dpo_pref": "dpref"}
KINDS = ("dplus", "dpm", "dpref")


def iteration_number(key: str) -> int:
    if not (key.startswith("it") and key[2:].isdigit() and int(key[2:]) >= 2):
        raise ReflectEvoError(f"evolve.chain: iteration names are it2, it3, ...; got {key!r}")
    return int(key[2:])


def _row_text(row: dict[str, Any]) -> str:
    """The reflection(s) a training row teaches: what near-duplicate filtering compares."""
    if "chosen" in row:
        return f"{row['chosen'].get('reflection', '')}\n{row['rejected'].get('reflection', '')}"
    return str(row.get("reflection", ""))


def union_rows(previous: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
               threshold: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Earlier training rows, then this iteration's, without exact repeats (same `id`) and without rows
    whose reflection is a near-duplicate (TF-IDF cosine >= `threshold`, `curation.near_duplicates`) of an
    earlier kept row of the same item. Returns (rows, counts)."""
    from reflectevo.curation import near_duplicates

    seen: set[str] = set()
    by_item: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    order = 0
    counts = {"previous": len(previous), "new": len(new), "same_id": 0, "near_duplicate": 0}
    for row in [*previous, *new]:
        rid = str(row.get("id", ""))
        if rid and rid in seen:
            counts["same_id"] += 1
            continue
        seen.add(rid)
        by_item.setdefault(str(row.get("item_id")), []).append((order, row))
        order += 1
    kept: list[tuple[int, dict[str, Any]]] = []
    for rows in by_item.values():
        dup = near_duplicates([_row_text(r) for _, r in rows], threshold)
        counts["near_duplicate"] += len(dup)
        kept.extend(x for j, x in enumerate(rows) if j not in dup)
    out = [r for _, r in sorted(kept, key=lambda x: x[0])]
    counts["rows"] = len(out)
    return out, counts


# --------------------------------------------------------------------------------------------------
# init: previous


@contextlib.contextmanager
def warm_start(role_dirs: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """While active, every LoRA trainer that `reflectevo.training.train_setting` builds starts from the
    previous adapter of its role (`role_dirs`, in the setting's role order) instead of a fresh LoRA.

    Hook point: `training.build_sft_trainer` / `build_dpo_trainer` (module attributes, wrapped here; the
    trainer's model is a PeftModel whose adapter weights are overwritten by the previous ones, which must
    match in shape: the same preset and LoRA config). The yielded record lists the roles it reached;
    `finish_warm_start` turns a missed role into an error, so a moved hook never trains from scratch
    silently."""
    from reflectevo import training

    pending = list(role_dirs.items())
    reached: dict[str, Any] = {"loaded": {}}
    originals = {n: getattr(training, n) for n in ("build_sft_trainer", "build_dpo_trainer")}

    def wrap(build):
        def built(*args: Any, **kwargs: Any):
            trainer = build(*args, **kwargs)
            if pending:
                role, path = pending.pop(0)
                reached["loaded"][role] = load_adapter_weights(trainer.model, path)
            return trainer

        return built

    for name, fn in originals.items():
        setattr(training, name, wrap(fn))
    try:
        yield reached
    finally:
        for name, fn in originals.items():
            setattr(training, name, fn)


def finish_warm_start(reached: dict[str, Any], role_dirs: dict[str, Path], trained: bool) -> None:
    missing = [r for r in role_dirs if r not in reached["loaded"]]
    if trained and missing:
        raise ReflectEvoError(f"evolve.init: previous: the previous adapter of {missing} was never loaded "
                              "(the training code no longer builds its trainers through the hook in reflectevo/evolve.py)")


def load_adapter_weights(model: Any, adapter_dir: Path) -> int:
    """Copy a saved LoRA adapter's weights into `model`'s (PEFT) adapter; returns the tensors loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise ReflectEvoError(f"{adapter_dir}: no adapter_model.safetensors to continue from (evolve.init: previous)")
    state = load_file(str(path))
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ReflectEvoError(f"{adapter_dir}: {len(unexpected)} adapter tensors do not fit this model "
                              f"(e.g. {unexpected[0]}); evolve.init: previous needs the same preset and LoRA config")
    return len(state)


# --------------------------------------------------------------------------------------------------
# metrics/evolve.json


def iteration_row(number: int, generate: dict[str, Any] | None, curate: dict[str, Any] | None,
                  evaluation: dict[str, Any] | None, setting: str, train: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One iteration's numbers from its stage outputs (generate summary, curate metrics, train metrics,
    evaluation JSON)."""
    row: dict[str, Any] = {"iteration": number}
    stopped = (generate or {}).get("stopped")   # the chain stopped before this iteration generated anything
    if stopped:
        row["stopped"] = stopped
    elif (evaluation or {}).get("skipped"):     # it ran, but trained nothing (e.g. an empty D+)
        row["note"] = (evaluation or {})["skipped"]
    diag = ((generate or {}).get("diagnostics") or {}).get("overall") or {}
    row["train_fix_rate"] = diag.get("fix_rate")
    row["repeat_rate"] = diag.get("repeat_rate")
    counts = (curate or {}).get("counts") or {}
    row["dplus"] = sum(counts.get(f"dplus_{s}", 0) for s in ("train", "eval")) if counts else None
    row["dpm"] = sum(counts.get(f"dpm_{s}", 0) for s in ("train", "eval")) if counts else None
    if train is not None:
        row["trained"] = bool(train.get("trained"))
        row["n_train"] = train.get("n_train")
    system = ((evaluation or {}).get("systems") or {}).get(setting)
    overall = (system or {}).get("overall") or {}
    for key in ("acc_t1", "acc_t2", "delta"):
        row[key] = overall.get(key)
    row["n_test"] = overall.get("n")
    return row


def versus_first(first: Sequence[dict[str, Any]], later: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Exact McNemar of a later iteration's Acc@t2 against iteration 1's on their common test items
    (prediction rows of the setting; `b` = items only the later iteration gets right)."""
    from reflectevo.stats import aligned, paired_test

    if not first or not later:
        return None
    a, b = aligned(first, later, "t2_correct", "t2_correct")
    return paired_test(a, b) if a else None


def summary(rows: list[dict[str, Any]], setting: str, data: str, init: str) -> dict[str, Any]:
    """metrics/evolve.json: flat per iteration (`it1.acc_t2`, ... for `dvc metrics` / `dvc exp show`)."""
    out: dict[str, Any] = {"setting": setting, "data": data, "init": init, "iterations": len(rows)}
    for row in rows:
        out[f"it{row['iteration']}"] = {k: v for k, v in row.items() if k != "iteration"}
    stopped = next((r for r in rows if r.get("stopped")), None)
    if stopped is not None:
        out["stopped_at"] = stopped["iteration"]
    return out


HEADLINE = ("train_fix_rate", "dplus", "acc_t2", "delta")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """metrics/headline/evolve.json (the declared DVC metric, `dvc exp show` columns): per iteration
    `it<i>.train_fix_rate|dplus|acc_t2|delta` and `it<i>.p_vs_it1`; nulls and stopped iterations left out."""
    out: dict[str, Any] = {}
    for n in range(1, int(result.get("iterations") or 0) + 1):
        row = result.get(f"it{n}") or {}
        if row.get("stopped"):
            continue
        block = {k: row[k] for k in HEADLINE if row.get(k) is not None}
        p = (row.get("vs_it1") or {}).get("p")
        if p is not None:
            block["p_vs_it1"] = p
        if block:
            out[f"it{n}"] = block
    return out


def plot_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """plots/evolve.json: one record per iteration (x: iteration; y: the rates and accuracies)."""
    keys = ("train_fix_rate", "repeat_rate", "acc_t1", "acc_t2", "delta")
    return [{"iteration": r["iteration"], **{k: r.get(k) for k in keys}} for r in rows if not r.get("stopped")]


__all__ = ["DATA_KIND", "HEADLINE", "KINDS", "finish_warm_start", "headline", "iteration_number", "iteration_row", "load_adapter_weights",
           "plot_rows", "summary", "union_rows", "versus_first", "warm_start"]
