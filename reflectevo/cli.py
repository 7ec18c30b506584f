"""The `reflectevo` command: inspect tasks and items, check params, list presets.

    reflectevo tasks                     # registered tasks with sizes and sources
    reflectevo items rg/chain_sum --split test -n 5
    reflectevo params check [params.yaml]
    reflectevo presets [params.yaml]
    reflectevo report [--metrics metrics/eval.json] [--out report/index.html]   # the HTML report
    reflectevo serve --model tiny-random --port 8000    # OpenAI-compatible server for a preset
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ReflectEvo: learn to reflect from self-generated data.")
params_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Validate params.yaml.")
app.add_typer(params_app, name="params")


@app.command("tasks")
@friendly_errors
def tasks_cmd(all_generators: bool = typer.Option(False, "--all", help="also list every reasoning-gym generator")) -> None:
    """List registered tasks (name, answer type, splits, source)."""
    from reflectevo.tasks import TASKS, get_task
    from reflectevo.tasks.reasoning_gym_task import generator_names

    for name in TASKS.names():
        task = get_task(name)
        info = getattr(task, "describe", lambda: {})()
        typer.echo(json.dumps({"name": name, "answer_type": task.answer_type, "splits": list(task.splits), **info}))
    if all_generators:
        for g in generator_names():
            typer.echo(json.dumps({"name": f"rg/{g}", "answer_type": "text", "splits": ["train", "test"],
                                   "source": "reasoning-gym (procedural, any size)"}))
    else:
        typer.echo(f"# plus {len(generator_names())} reasoning-gym generators as rg/<name> (--all lists them)", err=True)


@app.command("items")
@friendly_errors
def items_cmd(task: str, split: str = "test", n: int = typer.Option(0, "-n", help="0 = all"), seed: int = 0) -> None:
    """Print a task's items in the unified schema as JSONL (the ids `verify` takes)."""
    from reflectevo.jsonio import dumps
    from reflectevo.tasks import get_task

    for it in get_task(task).load(split, n, seed):
        typer.echo(dumps(it.to_dict()))


@params_app.command("check")
@friendly_errors
def params_check(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Validate every preset and stage section; one clear error line on the first problem."""
    from reflectevo.config import read_params, validate_all

    params = read_params(path)
    validate_all(params)
    typer.echo(f"{path}: ok (model={params['model']}, {len(params['models'])} presets)")


@app.command("presets")
@friendly_errors
def presets_cmd(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """List the model presets of a params file."""
    from reflectevo.config import load_preset, read_params

    params = read_params(path)
    load_preset(params)  # the `model:` selector first: an old (renamed) preset name gets "did you mean"
    for name in params.get("models") or {}:
        _, p = load_preset(params, name)
        mark = "*" if name == params.get("model") else " "
        src = p.hub_id if p.source == "hub" else (f"{p.package}:{p.file}" if p.source == "gguf-package" else p.source)
        typer.echo(f"{mark} {name:24s} {p.source:13s} {src}  dtype={p.dtype} backend={p.backend}")


@app.command("report")
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


@app.command("verify")
@friendly_errors
def verify_cmd(task: str = typer.Argument(..., help="registered task name or a task YAML file"),
               predictions: Path = typer.Argument(..., help="JSONL: one {\"id\", \"prediction\"} per line"),
               split: str = typer.Option("test", "--split", help="split whose items the ids name"),
               workers: int = typer.Option(0, "--workers", help="parallel code checks (0 = one per core)")) -> None:
    """Judge raw model outputs: one JSON line per input (id, extracted, correct, score, error), then a summary."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import dumps, iter_jsonl
    from reflectevo.tasks import get_task

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


@app.command("serve")
@friendly_errors
def serve_cmd(model: str = typer.Option("", "--model", help="preset to serve (default: the params' model)"),
              params: Path = typer.Option(Path("params.yaml"), "--params"),
              host: str = typer.Option("127.0.0.1", "--host"),
              port: int = typer.Option(8000, "--port", help="0 = any free port (printed)"),
              adapter: Path | None = typer.Option(None, "--adapter", help="a LoRA adapter folder to merge in"),
              served_name: str = typer.Option("", "--served-model-name", help="default: the preset's hub_id, else its name"),
              api_key: str = typer.Option("", "--api-key", envvar="REFLECTEVO_SERVE_API_KEY",
                                          help="require this bearer key (default: none)"),
              verbose: bool = typer.Option(False, "--verbose", help="log every request")) -> None:
    """Serve a preset over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models)."""
    from reflectevo.config import load_preset, read_params
    from reflectevo.serve import make_server

    name, preset = load_preset(read_params(params), model or None, where="--model")
    server = make_server(name, preset, host=host, port=port, adapter=adapter, model_name=served_name or None,
                         api_key=api_key or None, quiet=not verbose)
    typer.echo(f"serving {server.model_name!r} at {server.url} (OPENAI_BASE_URL={server.url}); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


from reflectevo import cli_compat  # noqa: E402,F401  (registers convert, metrics)

if __name__ == "__main__":  # `python -m reflectevo.cli`: run the imported module's app, where commands registered
    from reflectevo.cli import app as registered

    registered()
