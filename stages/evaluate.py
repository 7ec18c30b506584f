"""Stage `evaluate`: Acc@t1 / Acc@t2 / Δ / Δi→c / Δc→i on the test split -> metrics/eval.json.

    dvc repro evaluate
    python stages/evaluate.py --params params.yaml --sources data/sources/test.jsonl --adapter models/one_stage

Trial 1 by the base model; for the failures (oracle protocol) the base model's own reflection + retry
(`base_reflect`) and the trained one-stage adapter (`one_stage`). Per-sample predictions go to
data/eval/predictions.jsonl. Reads `evaluate` and `models.<model>` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors, load_items, stage_params

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), sources: Path = Path("data/sources/test.jsonl"),
         adapter: Path = Path("models/one_stage"), predictions: Path = Path("data/eval/predictions.jsonl"),
         metrics: Path = Path("metrics/eval.json")) -> None:
    import json

    from reflectevo import evaluation as ev
    from reflectevo.backends.hf import make_backend
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json, write_jsonl

    name, preset, cfg = stage_params(params, "evaluate")
    items, tasks = load_items(sources)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise ReflectEvoError(f"{sources}: no test items")
    base = make_backend(name, preset)
    t1 = ev.trial1(items, tasks, base, cfg)
    systems: dict[str, list | None] = {"base_reflect": ev.base_reflect(items, tasks, base, t1, cfg)}
    card_path = adapter / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {"status": "missing"}
    skipped = {}
    if card.get("status") == "trained":
        del base
        trained = make_backend(name, preset, adapter=adapter)
        systems["one_stage"] = ev.one_stage(items, tasks, trained, t1, cfg)
    else:
        systems["one_stage"] = None
        skipped["one_stage"] = card.get("reason") or f"no adapter at {adapter}"
    summary = ev.summarize(systems)
    main_system = "one_stage" if systems["one_stage"] is not None else "base_reflect"
    report = {"model": name, "protocol": cfg.protocol, "system": main_system, **summary[main_system],
              "systems": {k: v for k, v in summary.items() if v is not None}, "skipped": skipped}
    write_json(metrics, report)
    rows = [{"system": sys_name, **r} for sys_name, rs in systems.items() if rs for r in rs]
    t1_by_id = {r["item_id"]: r for r in t1}
    for r in rows:
        r.setdefault("t1", t1_by_id[r["item_id"]]["t1"])
    write_jsonl(predictions, rows)
    o = report["overall"]
    typer.echo(f"evaluate[{main_system}]: n={o['n']} acc_t1={o['acc_t1']} acc_t2={o['acc_t2']} "
               f"delta={o['delta']} skipped={skipped}")


if __name__ == "__main__":
    app()
