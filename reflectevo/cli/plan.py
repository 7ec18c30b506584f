"""`reflectevo plan` (what a params file or a recipe will cost) and `reflectevo recipe` (list, show, check and
run the committed recipes of configs/recipes/ as one DVC experiment)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from reflectevo.stage import friendly_errors


@friendly_errors
def plan_cmd(params: Path = typer.Argument(Path("params.yaml"), help="params file"),
             recipe: str = typer.Option("", "--recipe", "-r", help="a recipe (configs/recipes/<name>.yaml or a path) "
                                                                 "applied on top, as `reflectevo recipe run` would"),
             set_param: list[str] = typer.Option([], "--set-param", "-S", help="key=value on top (as dvc exp run -S)"),
             from_run: Path = typer.Option(None, "--from-run", help="metrics/generate.json of a run: its accuracies "
                                                                    "and lengths instead of the paper's"),
             tokens_per_s: float = typer.Option(0.0, "--tokens-per-s", help="generated tokens per second "
                                                "(default: per model size, see `reflectevo plan --help` / docs)"),
             train_tokens_per_s: float = typer.Option(0.0, "--train-tokens-per-s", help="training tokens per second"),
             prefill_tokens_per_s: float = typer.Option(0.0, "--prefill-tokens-per-s", help="prompt tokens per second"),
             sample: int = typer.Option(8, help="items per task whose prompts are rendered and counted"),
             compare: Path = typer.Option(None, "--compare", help="a finished run's metrics folder: predicted vs "
                                                                  "measured, each within 15%?"),
             as_json: bool = typer.Option(False, "--json", help="the plan as JSON")) -> None:
    """What a run will cost, offline: items, calls, tokens per phase, curated rows, optimizer steps, evaluation
    calls, disk and hours, each with the assumption behind it."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.plan import build_plan, render_text
    from reflectevo.recipes import apply, load_recipe

    rec = load_recipe(recipe) if recipe else None
    data = apply(params, rec, list(set_param))
    run = None
    if from_run is not None:
        try:
            run = json.loads(from_run.read_text())
        except (OSError, ValueError) as e:
            raise ReflectEvoError(f"--from-run {from_run}: {e}") from None
    label = f"{params}" + (f" + recipe {rec.name}" if rec else "") + "".join(f" -S {s}" for s in set_param)
    plan = build_plan(data, label, run, tokens_per_s or None, train_tokens_per_s or None, prefill_tokens_per_s or None,
                      sample)
    if compare is not None:
        from reflectevo.plan import TOLERANCE, compare_run

        rows = compare_run(plan, compare)
        if as_json:
            typer.echo(json.dumps({"plan": plan, "compare": rows}, indent=1))
            return
        typer.echo(render_text(plan) + f"\n\npredicted vs measured ({compare}; checked: within {TOLERANCE:.0%})")
        for r in rows:
            err = "-" if r["relative_error"] is None else f"{r['relative_error']:.1%}"
            mark = ("ok" if r["within"] else "OFF") if r["checked"] else "(not checked)"
            typer.echo(f"  {r['what']:45s} {r['predicted']:>14,.0f} {r['measured']:>14,.0f} {err:>7s} {mark}")
        return
    typer.echo(json.dumps(plan, indent=1) if as_json else render_text(plan))


@friendly_errors
def recipe_list() -> None:
    """The recipes (configs/recipes/*.yaml)."""
    from reflectevo.recipes import available, load_recipe

    for name, path in available().items():
        first = next((ln[2:] for ln in path.read_text().splitlines() if ln.startswith("# ")), "")
        typer.echo(f"{name:12s} {len(load_recipe(str(path)).overrides):3d} keys  {path}  {first}")


@friendly_errors
def recipe_show(name: str) -> None:
    """The `dvc exp run` command a recipe runs."""
    from reflectevo.recipes import load_recipe, overrides

    typer.echo(shlex.join(["dvc", "exp", "run", *[a for o in overrides(load_recipe(name)) for a in ("-S", o)]]))


@friendly_errors
def recipe_check(name: str, params: Path = typer.Option(Path("params.yaml"), help="params file"),
                 set_param: list[str] = typer.Option([], "--set-param", "-S", help="key=value on top")) -> None:
    """Apply a recipe to a copy of params.yaml (DVC's own -S code) and validate the result; nothing is written."""
    from reflectevo.recipes import apply, load_recipe

    rec = load_recipe(name)
    data = apply(params, rec, list(set_param))
    typer.echo(f"recipe {rec.name}: ok ({len(rec.overrides)} keys on {params}; model={data['model']}, "
               f"{len(data['prepare']['tasks'])} tasks)")


@friendly_errors
def recipe_run(ctx: typer.Context, name: str,
               params: Path = typer.Option(Path("params.yaml"), help="params file")) -> None:
    """Run a recipe as one DVC experiment: `dvc exp run -S <key>=<value> ...`; other arguments (-S on top, -n NAME,
    --queue, --temp, ...) go to `dvc exp run`. Checked first: a bad recipe runs nothing."""
    from reflectevo.recipes import apply, load_recipe, overrides, user_overrides

    rec = load_recipe(name)
    extra = list(ctx.args)
    mine = user_overrides(extra)
    apply(params, rec, mine)
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *[a for o in overrides(rec, mine) for a in ("-S", o)], *extra]
    typer.echo(f"recipe {rec.name}: " + shlex.join(["dvc", *cmd[3:]]), err=True)
    raise typer.Exit(subprocess.call(cmd))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    recipe_app = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="The committed recipes (configs/recipes/): list, show, check, run.")
    recipe_app.command("list")(recipe_list)
    recipe_app.command("show")(recipe_show)
    recipe_app.command("check")(recipe_check)
    recipe_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(recipe_run)
    app.add_typer(recipe_app, name="recipe")
