"""`reflectevo summary`: what a run produced, in a few lines: where the outputs are, the data's sizes, which
settings were trained, the Table-2 lines (Acc@t1 → Acc@t2, Δ, against `base_reflect`) and the report's path.
`make repro` ends with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from reflectevo.systems import result_lines


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary_lines(root: Path = Path(".")) -> list[str]:
    """The summary of the run whose outputs are under `root` (what is missing is said, not guessed)."""
    out: list[str] = []
    gen = _read(root / "metrics/generate.json")
    if gen:
        out.append(f"data/raw/            {gen.get('items')} episodes: trial 1 right on {gen.get('trial1_correct')}, "
                   f"{gen.get('reflections')} reflections, {gen.get('trial2_correct')} fixed by reflection")
    cur = _read(root / "metrics/curate.json")
    if cur:
        c = cur.get("counts") or {}

        def both(name: str) -> str:
            return f"{c.get(f'{name}_train', 0)} + {c.get(f'{name}_eval', 0)}"

        out.append(f"data/curated/        D+ {both('dplus')}, D± {both('dpm')}, Dpref {both('dpref')} "
                   "(train + held out)")
    trained, other = [], []
    for card in sorted((root / "models").glob("*/model_card.json")):
        c = _read(card) or {}
        (trained if c.get("status") == "trained" else other).append(f"{card.parent.name}"
                                                                    + ("" if c.get("status") == "trained"
                                                                       else f" ({c.get('status')})"))
    if trained or other:
        out.append(f"models/              trained: {', '.join(trained) or 'none'}"
                   + (f"; not trained: {', '.join(other)}" if other else ""))
    report = _read(root / "metrics/eval.json")
    if report:
        n = (report.get("overall") or {}).get("n")
        out.append(f"metrics/eval.json    {n} test items, {report.get('protocol')} protocol "
                   "(per-item predictions: data/eval/predictions.jsonl)")
        out.append("")
        out.append("Acc@t1 → Acc@t2 [95% CI], Δ (points), paired McNemar test against base_reflect:")
        out.extend("  " + line for line in result_lines(report))
    else:
        out.append("metrics/eval.json    missing: the evaluate stage has not run (dvc repro)")
    page = root / "report/index.html"
    out.append("")
    out.append(f"Report: {page} (open it in a browser)" if page.exists()
               else "Report: not written yet (dvc repro report)")
    return out


def summary_cmd(root: Path = typer.Argument(Path("."), help="the project folder")) -> None:
    """What the last run produced: outputs, data sizes, the results table and the report's path."""
    typer.echo("\n".join(summary_lines(root)))


def register(app: typer.Typer) -> None:
    app.command("summary")(summary_cmd)
