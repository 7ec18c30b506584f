"""Stage `report`: one self-contained HTML page from the evaluation and curation outputs.

    dvc repro report
    python stages/report.py --metrics metrics/eval.json --stats data/curated/stats.json \
        --predictions data/eval/predictions.jsonl --plots plots/eval --out report/index.html

The Table-2-style matrix (systems × tasks), accuracy by round, trial-1 → final transitions, the data
statistics, the best/worst episodes of every system and (with --evolve) self-evolution by iteration; no network needed to view it. Missing inputs
are named on the page; malformed ones stop with one error line naming the file (exit status 2).
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(metrics: Path = Path("metrics/eval.json"), stats: Path = Path("data/curated/stats.json"),
         predictions: Path = Path("data/eval/predictions.jsonl"), plots: Path = Path("plots/eval"),
         out: Path = Path("report/index.html"), episodes: int = 3,
         evolve: Path = typer.Option(None, help="metrics/evolve.json: the 'by iteration' section"),
         other: list[Path] = typer.Option([], help="another metrics/eval.json (e.g. the intrinsic protocol), "
                                                   "shown beside the main one; repeatable"),
         title: str = "ReflectEvo evaluation report") -> None:
    from reflectevo.report import render_report

    path = render_report(metrics, stats, predictions, out, plots_dir=plots, n_episodes=episodes, evolve=evolve,
                         others=other, title=title)
    typer.echo(f"report: {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    app()
