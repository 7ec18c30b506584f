"""`reflectevo verify`: judge raw model outputs against a task's items."""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def verify_cmd(task: str = typer.Argument(..., help="registered task name or a task YAML file"),
               predictions: Path = typer.Argument(..., help="JSONL: one {\"id\", \"prediction\"} per line"),
               split: str = typer.Option("test", "--split", help="split whose items the ids name"),
               workers: int = typer.Option(0, "--workers", help="parallel code checks (0 = one per core)")) -> None:
    """Judge raw model outputs: one JSON line per input (id, extracted, correct, score, error), then a summary."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import dumps, iter_jsonl
    from reflectevo.tasks.registry import get_task

    t = get_task(task)
    by_id = {it.id: it for it in t.load(split)}
    ids, outputs = [], []
    for line, row in enumerate(iter_jsonl(predictions), start=1):
        for key in ("id", "prediction"):
            if key not in row:
                raise ReflectEvoError(f"{predictions}:{line}: missing field {key!r}")
        if not isinstance(row["prediction"], str):
            raise ReflectEvoError(f"{predictions}:{line}: field 'prediction' must be a string")
        iid = str(row["id"])
        if iid not in by_id:
            raise ReflectEvoError(f"{predictions}:{line}: unknown id {iid!r} in task {task}, split {split}")
        ids.append(iid)
        outputs.append(row["prediction"])
    items = [by_id[i] for i in ids]
    many = getattr(t, "verify_many", None)
    verdicts = many(outputs, items, workers=workers or None) if many else [t.verify(o, it) for o, it in zip(outputs, items)]
    for iid, v in zip(ids, verdicts):
        typer.echo(dumps({"id": iid, **v.to_dict()}))
    n = len(verdicts)
    correct = sum(v.correct for v in verdicts)
    typer.echo(dumps({"summary": True, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0}))


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
