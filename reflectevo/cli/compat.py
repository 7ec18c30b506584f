"""`reflectevo convert` and `reflectevo metrics`: ReflectEvo interoperability commands.

    reflectevo convert --from reflectevo --kind raw example_Reflection_raw.jsonl episodes.jsonl --task logiqa
    reflectevo convert --to reflectevo --kind dplus data/curated/dplus_train.jsonl their_dplus.jsonl
    reflectevo metrics example_Reflection_raw.jsonl                 # count.py numbers + Wilson intervals
    reflectevo metrics data/eval/predictions.jsonl --protocol intrinsic

Registered on the app by `register` (see reflectevo/cli/__init__.py). Formats and the field map:
docs/compat.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import typer

from reflectevo.errors import ReflectEvoError
from reflectevo.stage import friendly_errors

PROTOCOL_NOTES = {
    "oracle": "as ReflectEvo's count.py: a right t1 stays right; after a wrong t1, t2 = the first retry's "
              "verdict (later retries ignored; no retry = wrong)",
    "intrinsic": "t2 = the first second answer whenever there is one, even after a right t1 (so c->i shows); "
                 "without one, t2 = t1",
}


@friendly_errors
def convert_cmd(
    input: Path = typer.Argument(..., help="file to read"),
    output: Path = typer.Argument(..., help="file to write (JSONL, atomically)"),
    kind: str = typer.Option(..., "--kind", help="raw | dplus | dpm | dpref"),
    from_: str | None = typer.Option(None, "--from", help="import from this format (only 'reflectevo')"),
    to: str | None = typer.Option(None, "--to", help="export to this format (only 'reflectevo')"),
    task: str | None = typer.Option(None, "--task", help="our task name for imported rows (e.g. logiqa -> "
                                    "reflectevo/logiqa); default: from their run.py file name, else reflectevo/unknown"),
) -> None:
    """Convert ReflectEvo raw / D+ / D± / Dpref files to our schemas (--from) or ours to theirs (--to)."""
    from reflectevo.compat.convert import convert
    from reflectevo.compat.fields import KINDS
    from reflectevo.errors import unknown

    if (from_ is None) == (to is None):
        raise ReflectEvoError("give exactly one of --from reflectevo (import) or --to reflectevo (export)")
    fmt = from_ if from_ is not None else to
    if fmt != "reflectevo":
        raise unknown("format", str(fmt), ["reflectevo"], "--from" if from_ is not None else "--to")
    if kind not in KINDS:
        raise unknown("kind", kind, KINDS, "--kind")
    if to is not None and task is not None:
        raise ReflectEvoError("--task only applies to --from (their files carry no task name)")
    n = convert(input, output, kind, "from" if from_ is not None else "to", task)
    direction = "imported from ReflectEvo" if from_ is not None else "exported to ReflectEvo"
    typer.echo(f"{output}: {n} {kind} records {direction}", err=True)


def _block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall metrics with Wilson intervals, plus per task when there are several tasks."""
    from reflectevo.metrics import by_task

    from reflectevo.stats import bootstrap_delta_ci, paired_test

    m = by_task(rows, intervals=True)
    out: dict[str, Any] = {**m["overall"]}
    t1, t2 = [bool(r["t1_correct"]) for r in rows], [bool(r["t2_correct"]) for r in rows]
    out["mcnemar_t1_t2"] = paired_test(t1, t2)          # exact McNemar on the same items
    out["delta_ci"] = bootstrap_delta_ci(t1, t2)
    if len(m["per_task"]) > 1:
        out["per_task"] = m["per_task"]
    else:
        out["task"] = next(iter(m["per_task"]), None)
    return out


def results_metrics(path: Path, fmt: str | None, protocol: str, task: str | None = None) -> dict[str, Any]:
    """The JSON `reflectevo metrics` prints (see docs/compat.md §5)."""
    from reflectevo.compat.results import count_py, protocol_pairs, result_rows

    detected, what, rows = result_rows(path, fmt, task)
    pairs = protocol_pairs(rows, protocol)
    out: dict[str, Any] = {"file": str(path), "format": detected, "records": what, "protocol": protocol,
                           "protocol_note": PROTOCOL_NOTES[protocol]}
    if what == "predictions":
        by_system: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in pairs:
            by_system[str(p["system"])].append(p)
        out["systems"] = {s: _block(ps) for s, ps in by_system.items()}
        _versus_baselines(out["systems"], by_system)
        if "sft_qa" in out["systems"]:  # answers-only baseline: Acc@t1 only, as in metrics/eval.json
            sft = out["systems"]["sft_qa"]
            for block in [sft, *(sft.get("per_task") or {}).values()]:
                block.update({k: None for k in ("acc_t2", "delta", "delta_i2c", "delta_c2i", "acc_t2_ci")})
    else:
        out.update(_block(pairs))
    if what == "raw" and protocol == "oracle":
        out["count_py"] = count_py(rows)
    return out


def _versus_baselines(blocks: dict[str, dict[str, Any]], by_system: dict[str, list[dict[str, Any]]]) -> None:
    """Each trained setting's Acc@t2 against the prompt baselines' on the same items (exact McNemar)."""
    from reflectevo.stats import aligned, paired_test

    for s, rows in by_system.items():
        if s in ("base_reflect", "base_noreflect", "sft_qa") or any(r.get("item_id") is None for r in rows):
            continue
        for base in ("base_reflect", "base_noreflect"):
            if base in by_system:
                blocks[s][f"vs_{base}"] = paired_test(*aligned(by_system[base], rows, "t2_correct", "t2_correct"))


@friendly_errors
def metrics_cmd(
    results: Path = typer.Argument(..., help="ReflectEvo run.py output, our data/eval/predictions.jsonl, or our "
                                   "episodes (a file or the data/raw folder)"),
    fmt: str | None = typer.Option(None, "--format", help="reflectevo | ours (default: detected)"),
    protocol: str = typer.Option("oracle", "--protocol", help="oracle (count.py) | intrinsic"),
    task: str | None = typer.Option(None, "--task", help="task name for ReflectEvo files (they carry none)"),
) -> None:
    """Acc@t1, Acc@t2, Δ, Δi→c, Δc→i with 95% Wilson intervals, as JSON (ReflectEvo's count.py compatible)."""
    if protocol not in PROTOCOL_NOTES:
        from reflectevo.errors import unknown

        raise unknown("protocol", protocol, PROTOCOL_NOTES, "--protocol")
    typer.echo(json.dumps(results_metrics(results, fmt, protocol, task), ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
    app.command("metrics")(metrics_cmd)
