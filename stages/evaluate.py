"""Stage `evaluate`: Acc@t1 / Acc@t2 / Δ / Δi→c / Δc→i per system and task -> metrics/eval.json.

    dvc repro evaluate
    python stages/evaluate.py --params params.yaml --sources data/sources/test.jsonl --models models

Trial 1 by the base model; for its failures (oracle protocol) each system reflects and retries: the
prompt baselines without and with reflection, and every trained setting found under --models
(settings whose card says "no training data", or that are missing, are listed under `skipped` with
the reason). With `evaluate.rounds` R > 1 each reflecting system repeats reflect -> retry on its latest
attempt (Acc@t1 .. Acc@t(R+1)). Per-sample predictions go to data/eval/predictions.jsonl, plot data
(accuracy by round, trial-1 -> final transitions) to plots/eval/. Reads `evaluate` and
`models.<model>` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors, load_items, stage_params

app = typer.Typer(add_completion=False)

MAIN_ORDER = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "grpo_one_stage", "grpo_reflect_retry", "rloo")


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), sources: Path = Path("data/sources/test.jsonl"),
         models: Path = Path("models"), predictions: Path = Path("data/eval/predictions.jsonl"),
         metrics: Path = Path("metrics/eval.json"), plots: Path = Path("plots/eval"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    import gc
    import json

    from reflectevo import evaluation as ev
    from reflectevo.backends.hf import make_backend
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json, write_jsonl
    from reflectevo.models import check_available
    from reflectevo.training import ADAPTERS

    name, preset, cfg = stage_params(params, "evaluate")
    check_available(name, preset)  # an unreachable hub preset: one line, before anything is written
    items, tasks = load_items(sources)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise ReflectEvoError(f"{sources}: no test items")

    cards, skipped = {}, {}
    for setting in ADAPTERS:
        card_path = models / setting / "model_card.json"
        if not card_path.exists():
            skipped[setting] = f"no adapter at {models / setting}"
            continue
        card = json.loads(card_path.read_text())
        if card.get("status") != "trained":
            skipped[setting] = card.get("reason") or card.get("status", "not trained")
        elif card["base"]["preset"] != name:
            skipped[setting] = f"adapter was trained on preset {card['base']['preset']!r}, not {name!r}"
        else:
            cards[setting] = card

    def adapter(setting: str, role: str) -> Path:
        return models / setting / cards[setting]["adapters"][role]

    # Every backend names all adapters of this run, so an engine-sharing backend (vllm) starts one engine
    # for the base model, sized for all of them, before the first adapter is used.
    served = [adapter(s, role) for s in cards for role in ADAPTERS[s]]

    def backend(path: Path | None = None):
        b = make_backend(name, preset, path, serves=served)
        if hasattr(b, "bind"):   # backend: scripted answers from the items (no model)
            b.bind(items, tasks)
        return b

    base = backend()
    t1 = ev.trial1(items, tasks, base, cfg)
    systems = {"base_noreflect": ev.retry_without_reflection(items, tasks, t1, base, cfg),
               "base_reflect": ev.reflect_then_retry(items, tasks, t1, base, base, cfg)}
    for setting, card in cards.items():  # by the roles a setting trained (RL settings as their SFT/DPO kin)
        roles = ADAPTERS[setting]
        if roles == ("one_stage",):          # one_stage, grpo_one_stage, rloo
            systems[setting] = ev.one_stage(items, tasks, backend(adapter(setting, "one_stage")), t1, cfg)
        elif roles == ("reflector", "corrector"):
            reflector = backend(adapter(setting, "reflector"))
            corrector = backend(adapter(setting, "corrector"))
            systems[setting] = ev.reflect_then_retry(items, tasks, t1, reflector, corrector, cfg)
            del reflector, corrector
        elif roles == ("reflector",):        # dpo_pm, dpo_pref; grpo_reflect_retry retries as it was trained
            reflector = backend(adapter(setting, "reflector"))
            corrector = reflector if card.get("retry_by") == "policy" else base
            systems[setting] = ev.reflect_then_retry(items, tasks, t1, reflector, corrector, cfg)
            del reflector, corrector
        elif roles == ("answerer",):
            systems[setting] = ev.answers_only(items, tasks, backend(adapter(setting, "answerer")), cfg)
        gc.collect()

    summary = ev.summarize(systems)
    main_system = next((s for s in MAIN_ORDER if s in summary), "base_reflect")
    from reflectevo.diagnostics import prediction_diagnostics

    report = {"model": name, "protocol": cfg.protocol, "system": main_system, **summary[main_system],
              "systems": summary, "skipped": skipped, "diagnostics": prediction_diagnostics(systems)}
    write_json(metrics, report)
    t1_by_id = {r["item_id"]: r for r in t1}
    rows = [{"system": s, **r, "t1": r.get("t1", t1_by_id[r["item_id"]]["t1"])} for s, rs in systems.items() for r in rs]
    write_jsonl(predictions, rows)
    by_round, transitions = ev.plot_rows(systems)
    write_json(plots / "accuracy_by_round.json", by_round)
    write_json(plots / "transitions.json", transitions)
    for s, m in summary.items():
        o = m["overall"]
        rounds = f" by round {o['acc_by_round']}" if len(o.get("acc_by_round", [])) > 2 else ""
        typer.echo(f"evaluate[{s}]: n={o['n']} acc_t1={o['acc_t1']} acc_t2={o['acc_t2']} delta={o['delta']}{rounds}")
    if skipped:
        typer.echo(f"evaluate: skipped {skipped}")
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import eval_headline

        write_json(headline, eval_headline(report))


if __name__ == "__main__":
    app()
