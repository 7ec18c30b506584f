"""`reflectevo report`: the evaluation report as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def report_cmd(metrics: Path = typer.Option(Path("metrics/eval.json"), "--metrics"),
               stats: Path = typer.Option(Path("data/curated/stats.json"), "--stats", help="curate's stats.json"),
               predictions: Path = typer.Option(Path("data/eval/predictions.jsonl"), "--predictions"),
               plots: Path = typer.Option(Path("plots/eval"), "--plots", help="accuracy_by_round.json, transitions.json"),
               out: Path = typer.Option(Path("report/index.html"), "--out"),
               episodes: int = typer.Option(3, "--episodes", help="best and worst episodes shown per system")) -> None:
    """Write the evaluation report: one self-contained HTML page (no network needed to view it)."""
    from reflectevo.report import render_report

    path = render_report(metrics, stats, predictions, out, plots_dir=plots, n_episodes=episodes)
    typer.echo(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
