"""The systems an evaluation runs, and the files it writes.

Trial 1 by the base model; for its failures (oracle protocol) or on every item (intrinsic) each system
reflects and retries: the two prompt baselines (`base_noreflect`, `base_reflect`) and every trained
setting found under a models folder (settings whose card says "no training data", or that are missing,
or were trained on another preset, are listed under `skipped` with the reason). `stages/evaluate.py`
(all systems, `evaluate` params) and `stages/demo.py` (fresh items, one protocol each, a chosen subset)
both run this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError
from reflectevo.settings import baseline_names, registry, setting_names


@dataclass
class Evaluation:
    report: dict[str, Any]                 # metrics/eval.json
    systems: dict[str, list[dict]]         # per-system prediction rows
    t1: list[dict]                         # trial-1 rows (shared by every system)


NOT_HERE = "not in this evaluation's systems"


def trained_cards(models: Path, preset_name: str, only: Sequence[str] = ()) -> tuple[dict[str, dict], dict[str, str]]:
    """(setting -> model card of every trained setting, setting -> why it is skipped). Only a missing folder
    or a card saying "no training data" / "disabled" is a skip; a folder whose card or weights cannot be
    read, or that was trained on another preset, raises one line naming the file (`adapters.setting_status`),
    before any model is loaded. `only`: the settings evaluated (() = all); a trained one not among them is
    listed as not evaluated here, and its folder is not checked."""
    from reflectevo.adapters import read_card, setting_status

    cards, skipped = {}, {}
    for setting in setting_names():
        if only and setting not in only:
            try:
                if read_card(models / setting).get("status") == "trained":
                    skipped[setting] = NOT_HERE
            except ReflectEvoError:
                pass
            continue
        if not (models / setting).exists():
            skipped[setting] = f"no adapter at {models / setting} (no such folder)"
            continue
        card, why = setting_status(models / setting, preset_name)
        if card is None:
            skipped[setting] = why
        else:
            cards[setting] = card
    return cards, skipped


def run_evaluation(name: str, preset: Any, cfg: Any, items: list, tasks: dict, models: Path,
                   only: Sequence[str] = (), progress: bool = True) -> Evaluation:
    """Evaluate the baselines and trained settings (`only`: just these; () = all) on `items` under `cfg`.
    `progress`: the stage line and one bar per system (generations finished, tokens/s, ETA)."""
    import gc

    from reflectevo import evaluation as ev
    from reflectevo.backends.registry import backend_dtype, make_backend
    from reflectevo.diagnostics import prediction_diagnostics
    from reflectevo.progress import Metered, Relay, announce, model_label
    wanted = set(only)
    cards, skipped = trained_cards(models, name, tuple(wanted))

    def adapter(setting: str, role: str) -> Path:
        return models / setting / cards[setting]["adapters"][role]

    # Every backend names all adapters of this run, so an engine-sharing backend (vllm) starts one engine
    # for the base model, sized for all of them, before the first adapter is used.
    served = [adapter(s, role) for s in cards for role in registry().settings[s].roles]

    relay = Relay()   # every backend reports to the bar of the system being evaluated

    def backend(path: Path | None = None):
        b = make_backend(name, preset, path, serves=served)
        if hasattr(b, "bind"):   # backend: scripted answers from the items (no model)
            b.bind(items, tasks)
        return Metered(b, relay)

    names = [s for s in baseline_names() if not wanted or s in wanted] + list(cards)
    if progress:
        announce("evaluate", describe(len(items), names, skipped, cfg,
                                      model_label(name, preset, backend_dtype(preset, f"models.{name}.backend"))))
    base = backend()
    relay.start("evaluate trial 1", len(items), enabled=progress)
    t1 = ev.trial1(items, tasks, base, cfg)
    # generations each system runs at most: its samples (the failed trial 1s, or every item) x rounds x phases
    samples = len(items) if cfg.protocol != "oracle" else sum(not r["t1_correct"] for r in t1)

    def bar(system: str, per_round: int) -> None:
        relay.start(f"evaluate {system}", samples * cfg.rounds * per_round, enabled=progress)

    systems: dict[str, list[dict]] = {}
    if not wanted or "base_noreflect" in wanted:
        bar("base_noreflect", 1)
        systems["base_noreflect"] = ev.retry_without_reflection(items, tasks, t1, base, cfg)
    if not wanted or "base_reflect" in wanted:
        bar("base_reflect", 2)
        systems["base_reflect"] = ev.reflect_then_retry(items, tasks, t1, base, base, cfg)
    for setting, card in cards.items():  # as the settings registry says evaluation runs each
        spec = registry().settings[setting]
        if spec.evaluate == "answers_only":
            relay.start(f"evaluate {setting}", len(items), enabled=progress)
        else:
            bar(setting, 1 if spec.evaluate == "one_stage" else 2)
        if spec.evaluate == "one_stage":       # one_stage, grpo_one_stage, rloo
            systems[setting] = ev.one_stage(items, tasks, backend(adapter(setting, spec.roles[0])), t1, cfg)
        elif spec.evaluate == "answers_only":  # sft_qa
            systems[setting] = ev.answers_only(items, tasks, backend(adapter(setting, spec.roles[0])), cfg)
        else:                                  # reflect_retry: the reflector, then the retry by `spec.retry`
            reflector = backend(adapter(setting, spec.roles[0]))
            retry = spec.retry
            if retry == "card":   # the card says who retried in training: the reflector (policy) or the base
                retry = "policy" if card.get("retry_by") == "policy" else "base"
            corrector = (reflector if retry in ("policy", spec.roles[0]) else base if retry == "base"
                         else backend(adapter(setting, retry)))
            systems[setting] = ev.reflect_then_retry(items, tasks, t1, reflector, corrector, cfg)
            del reflector, corrector
        gc.collect()
    relay.finish()

    summary = ev.summarize(systems)
    reflecting = [s for s in setting_names() if registry().settings[s].reflects]
    main_system = next((s for s in reflecting if s in summary),
                       next((s for s in baseline_names()[::-1] if s in summary), next(iter(summary))))
    report = {"model": name, "protocol": cfg.protocol, "system": main_system, **summary[main_system],
              "systems": summary, "skipped": skipped, "diagnostics": prediction_diagnostics(systems)}
    return Evaluation(report=report, systems=systems, t1=t1)


def describe(n_items: int, systems: Sequence[str], skipped: dict[str, str], cfg: Any, model: str) -> str:
    """The stage line: items, systems (and those skipped), protocol, model."""
    rounds = f", {cfg.rounds} rounds" if cfg.rounds > 1 else ""
    skip = f"; skipped: {', '.join(skipped)}" if skipped else ""
    return (f"{n_items} test items × {len(systems)} systems ({', '.join(systems)}{skip}), trial 1 shared, "
            f"{cfg.protocol} protocol{rounds} on {model}")


def write_evaluation(result: Evaluation, metrics: Path, predictions: Path, plots: Path,
                     headline: Path | None = None) -> list[str]:
    """Write metrics JSON, per-sample predictions, plot data (and the flat DVC headline); one summary
    line per system is returned for the stage to print."""
    from reflectevo import evaluation as ev
    from reflectevo.jsonio import write_json, write_jsonl

    write_json(metrics, result.report)
    t1_by_id = {r["item_id"]: r for r in result.t1}
    rows = ({"system": s, **r, "t1": r.get("t1", t1_by_id[r["item_id"]]["t1"])}
            for s, rs in result.systems.items() for r in rs)
    write_jsonl(predictions, rows)
    by_round, transitions = ev.plot_rows(result.systems)
    write_json(plots / "accuracy_by_round.json", by_round)
    write_json(plots / "transitions.json", transitions)
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import eval_headline

        write_json(headline, eval_headline(result.report))
    n = (result.report.get("overall") or {}).get("n")
    lines = [f": {n} test items, Acc@t1 → Acc@t2 [95% CI], Δ (points), paired McNemar test against base_reflect:"]
    lines += [f"   {line}" for line in result_lines(result.report)]
    if result.report["skipped"]:
        lines.append(": skipped " + "; ".join(f"{s} ({why})" for s, why in result.report["skipped"].items()))
    return lines


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "–"


def _p(x: Any) -> str:
    return "" if not isinstance(x, (int, float)) else f"p = {x:.2g}" if x < 0.01 else f"p = {x:.2f}"


def result_lines(report: dict[str, Any]) -> list[str]:
    """One line per system: Acc@t1 → Acc@t2 (95% interval), Δ, and the paired test against base_reflect."""
    systems = report.get("systems") or {}
    width = max((len(s) for s in systems), default=0)
    lines = []
    for name, entry in systems.items():
        o = entry.get("overall") or {}
        if o.get("acc_t2") is None:       # answers only (sft_qa): Acc@t1
            lines.append(f"{name:<{width}}  Acc@t1 {_pct(o.get('acc_t1'))}")
            continue
        ci = o.get("acc_t2_ci")
        interval = f" [{_pct(ci[0])}–{_pct(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        vs = o.get("vs_base_reflect")
        versus = (f", vs base_reflect +{vs.get('b')} / −{vs.get('c')} items, {_p(vs.get('p'))}"
                  if isinstance(vs, dict) and "b" in vs else "")
        delta = o.get("delta")
        d = f"{100 * delta:+.0f}" if isinstance(delta, (int, float)) else "–"
        by_round = o.get("acc_by_round") or []
        rounds = f", by round {' / '.join(_pct(x) for x in by_round)}" if len(by_round) > 2 else ""
        lines.append(f"{name:<{width}}  {_pct(o.get('acc_t1'))} → {_pct(o.get('acc_t2'))}{interval}  Δ {d}{versus}{rounds}")
    return lines

