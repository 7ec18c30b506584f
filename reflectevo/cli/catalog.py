"""`reflectevo tasks`, `items`, `presets` and `params check`: what the project knows about."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def tasks_cmd(all_generators: bool = typer.Option(False, "--all", help="also list every reasoning-gym generator")) -> None:
    """List registered tasks (name, answer type, splits, source)."""
    from reflectevo.tasks.registry import TASKS, get_task
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


@friendly_errors
def items_cmd(task: str, split: str = "test", n: int = typer.Option(0, "-n", help="0 = all"), seed: int = 0) -> None:
    """Print a task's items in the unified schema as JSONL (the ids `verify` takes)."""
    from reflectevo.jsonio import dumps
    from reflectevo.tasks.registry import get_task

    for it in get_task(task).load(split, n, seed):
        typer.echo(dumps(it.to_dict()))


@friendly_errors
def params_check(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Validate every preset and stage section; one clear error line on the first problem."""
    from reflectevo.config.params import read_params
    from reflectevo.paramsfile import validate_all

    params = read_params(path)
    validate_all(params)
    typer.echo(f"{path}: ok (model={params['model']}, {len(params['models'])} presets)")


@friendly_errors
def presets_cmd(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """List the model presets of a params file."""
    from reflectevo.config.params import read_params
    from reflectevo.config.presets import load_preset

    params = read_params(path)
    load_preset(params)  # the `model:` selector first: an old (renamed) preset name gets "did you mean"
    for name in params.get("models") or {}:
        _, p = load_preset(params, name)
        mark = "*" if name == params.get("model") else " "
        src = p.hub_id if p.source == "hub" else (f"{p.package}:{p.file}" if p.source == "gguf-package" else p.source)
        typer.echo(f"{mark} {name:24s} {p.source:13s} {src}  dtype={p.dtype} backend={p.backend}")


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks_cmd)
    app.command("items")(items_cmd)
    params_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Validate params.yaml.")
    params_app.command("check")(params_check)
    app.add_typer(params_app, name="params")
    app.command("presets")(presets_cmd)
