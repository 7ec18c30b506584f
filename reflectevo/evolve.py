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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError
from reflectevo.settings import registry

KINDS = ("dplus", "dpm", "dpref")   # the curated sets an iteration writes (reflectevo.settings: `data`)


def data_kind(setting: str) -> str:
    """The curated set `setting` trains on (dplus, dpm, dpref), from the settings registry."""
    kind = registry().settings[setting].curated
    if kind is None:
        raise ReflectEvoError(f"evolve.setting: {setting} does not train on curated data")
    return kind


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
    from reflectevo.curation.rows import near_duplicates

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


# --------------------------------------------------------------------------------------------------
# metrics/evolve.json


def iteration_row(number: int, generate: dict[str, Any] | None, curate: dict[str, Any] | None,
                  evaluation: dict[str, Any] | None, setting: str, train: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One iteration's numbers from its stage outputs (generate summary, curate metrics, train metrics,
    evaluation JSON)."""
    row: dict[str, Any] = {"iteration": number}
    stopped = (generate or {}).get("stopped")   # the chain stopped before this iteration generated anything
    skipped = (evaluation or {}).get("skipped")
    if isinstance(skipped, dict):               # the main evaluation's: setting -> reason; only ours counts
        skipped = skipped.get(setting)
    if stopped:
        row["stopped"] = stopped
    elif skipped:                               # it ran, but trained nothing (e.g. an empty D+)
        row["note"] = str(skipped)
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


def _num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_output(path: Path, data: dict[str, Any], kind: str) -> None:
    """Check an iteration's stage output (kind: generate | curate | train | eval) for the fields the
    summary reads, their types included; a damaged file raises one line naming it and the field."""
    def bad(field: str, want: str) -> ReflectEvoError:
        return ReflectEvoError(f"{path}: {field} must be {want}")

    for key in ("stopped", "reason"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise bad(key, "a string")
    if kind == "generate":
        diag = data.get("diagnostics")
        if diag is not None and not (isinstance(diag, dict) and isinstance(diag.get("overall") or {}, dict)):
            raise bad("diagnostics.overall", "an object")
        overall = (diag or {}).get("overall") or {}
        for key in ("fix_rate", "repeat_rate"):
            if not _num(overall.get(key)):
                raise bad(f"diagnostics.overall.{key}", "a number or null")
    elif kind == "curate":
        counts = data.get("counts")
        if counts is not None and not (isinstance(counts, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())):
            raise bad("counts", "an object of non-negative integers")
    elif kind == "train":
        if not _num(data.get("n_train")):
            raise bad("n_train", "a number or null")
    elif kind == "eval":
        systems, skipped = data.get("systems"), data.get("skipped")
        if systems is not None and not (isinstance(systems, dict) and all(isinstance(v, dict) for v in systems.values())):
            raise bad("systems", "an object of system -> metrics")
        if skipped is not None and not isinstance(skipped, (dict, str)):
            raise bad("skipped", "an object (setting -> reason) or a reason")
        for name, system in (systems or {}).items():
            overall = system.get("overall")
            if overall is not None and not isinstance(overall, dict):
                raise bad(f"systems.{name}.overall", "an object")
            for key in ("acc_t1", "acc_t2", "delta", "n"):
                if not _num((overall or {}).get(key)):
                    raise bad(f"systems.{name}.overall.{key}", "a number or null")


def check_predictions(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Prediction rows as the McNemar test against iteration 1 reads them: `item_id` and `t2_correct`."""
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("item_id"), (str, int)) or isinstance(row.get("item_id"), bool):
            raise ReflectEvoError(f"{path}:{line}: 'item_id' must be a string")
        if not isinstance(row.get("t2_correct"), bool):
            raise ReflectEvoError(f"{path}:{line}: 't2_correct' must be true or false")


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


__all__ = ["HEADLINE", "KINDS", "check_output", "check_predictions", "data_kind", "headline", "iteration_number", "iteration_row",
           "plot_rows", "summary", "union_rows", "versus_first"]
