"""Stages of the demo (demo/dvc.yaml; `make demo`): the default run's trained settings on fresh held-out items.

    cd demo && dvc repro            # or: make demo
    python stages/demo.py prepare --params params.yaml --exclude data/sources --out data/demo/sources
    python stages/demo.py evaluate --params params.yaml --protocol oracle --sources data/demo/sources/test.jsonl

`prepare` draws `demo.items` test items per task of `prepare.tasks` from the task's test stream, skipping
every item whose id or question is in --exclude (the default run's train and test sources: the adapters were
trained on the first, the default configuration was chosen looking at the second), so the demo's items
were never seen by training nor by whoever chose the configuration. `evaluate --protocol P` runs the
`evaluate` section with `protocol: P` and no limit on the systems `demo.protocols.P.systems` lists (all
when empty) and writes the same files as the evaluate stage.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.config.params import stage_params
from reflectevo.stage import friendly_errors

from reflectevo.tasks.items import load_items

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def prepare(params: Path = Path("params.yaml"), exclude: Path = Path("data/sources"),
            out: Path = Path("data/demo/sources")) -> None:
    from reflectevo.config.loader import to_dict
    from reflectevo.config.params import load_section, read_params
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json, write_jsonl
    from reflectevo.tasks.items import iter_items
    from reflectevo.tasks.registry import get_task

    raw = read_params(params)
    if "demo" not in raw:
        raise ReflectEvoError(f"{params}: no `demo` section (the demo's items and protocols)")
    demo = load_section(raw, "demo")
    prep = load_section(raw, "prepare")
    seen_ids, seen_q = set(), set()
    for split in ("train", "test"):
        path = exclude / f"{split}.jsonl"
        if not path.exists():
            raise ReflectEvoError(f"{path}: not found (run the default pipeline's prepare stage first)")
        for it in iter_items(path):   # each row checked: file:line on a damaged one
            seen_ids.add(it.id)
            seen_q.add(it.question)
    rows, counts = [], {}
    for i, spec in enumerate(prep.tasks):
        get_task(spec.name, where=f"prepare.tasks[{i}].name")   # an unknown name: did you mean
        # the test stream is prefix-stable: asking for more items keeps the first ones, so the default
        # run's test items come first and are skipped, and the next `demo.items` fresh ones are kept
        want = demo.items
        try:   # the task (or its generator, when asked for items) refuses its options: name the params key
            pool = get_task(spec.name, spec.options).load("test", (spec.n_test or 100) + want + 16, prep.seed)
        except ReflectEvoError as e:
            raise ReflectEvoError(f"prepare.tasks[{i}].options: {e}") from None
        fresh = [it for it in pool if it.id not in seen_ids and it.question not in seen_q][:want]
        if len(fresh) < want:
            raise ReflectEvoError(f"demo.items: task {spec.name} gives {len(fresh)} fresh test items, fewer than {want}")
        for it in fresh:
            row = it.to_dict()
            if spec.options:
                row["meta"] = {**row["meta"], "task_options": dict(spec.options)}
            rows.append(row)
        counts[spec.name] = {"test": len(fresh), "excluded": len(pool) - len(fresh)}
    write_jsonl(out / "test.jsonl", rows)
    write_json(out / "card.json", {"artifact": "demo sources", "schema": "data/README.md#sources",
                                   "excludes": str(exclude), "counts": counts,
                                   "params": {"demo": to_dict(demo), "prepare": to_dict(prep)}})
    typer.echo(f"demo prepare: {len(rows)} fresh test items from {len(counts)} task(s) -> {out}")


@app.command()
@friendly_errors
def evaluate(params: Path = Path("params.yaml"), protocol: str = typer.Option(..., help="a key of demo.protocols"),
             sources: Path = Path("data/demo/sources/test.jsonl"), models: Path = Path("models"),
             predictions: Path = typer.Option(None, help="default data/demo/eval/<protocol>/predictions.jsonl"),
             metrics: Path = typer.Option(None, help="default metrics/demo/eval-<protocol>.json"),
             plots: Path = typer.Option(None, help="default plots/demo/<protocol>"),
             headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    import dataclasses

    from reflectevo.config.params import load_section, read_params
    from reflectevo.errors import ReflectEvoError, unknown
    from reflectevo.models.load import check_available
    from reflectevo.systems import run_evaluation, write_evaluation

    name, preset, cfg = stage_params(params, "evaluate")
    raw = read_params(params)
    if "demo" not in raw:
        raise ReflectEvoError(f"{params}: no `demo` section (the demo's items and protocols)")
    demo = load_section(raw, "demo")
    if protocol not in demo.protocols:
        raise unknown("demo protocol", protocol, demo.protocols, "--protocol")
    check_available(name, preset)
    items, tasks = load_items(sources)
    if not items:
        raise ReflectEvoError(f"{sources}: no test items")
    cfg = dataclasses.replace(cfg, protocol=protocol, limit=0)
    result = run_evaluation(name, preset, cfg, items, tasks, models, only=demo.protocols[protocol].systems)
    result.report["demo"] = {"items": len(items), "sources": str(sources), "protocol": protocol}
    lines = write_evaluation(result, metrics or Path(f"metrics/demo/eval-{protocol}.json"),
                             predictions or Path(f"data/demo/eval/{protocol}/predictions.jsonl"),
                             plots or Path(f"plots/demo/{protocol}"), headline)
    for line in lines:
        typer.echo(f"demo evaluate {protocol}{line}")


if __name__ == "__main__":
    app()
