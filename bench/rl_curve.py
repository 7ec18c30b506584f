"""The grpo_reflect_retry training curve: fix rate on held-out failed trial-1 attempts before vs after, McNemar p.

    .venv/bin/python bench/rl_curve.py --minutes 60                      # the measurement in docs/results.md (~1 h of CPU)
    .venv/bin/python bench/rl_curve.py --minutes 1 --held-out 8 --max-items 16 \\
        --out bench/results/rl_curve-smoke.json                         # a few minutes: shows it works

Failed trial-1 attempts come from `--raw` (generate's episodes, read with `generation.load_episodes`;
oracle protocol); their items are split into training prompts and `--held-out` ones (by a seeded shuffle).
Before: the base reflects (test reflection prompt, greedy) and retries (evaluation's retry prompt, greedy),
exactly as evaluate's `base_reflect`; after: the trained reflector reflects and retries (`retry_by: policy`),
as evaluate runs the setting. Fix rate = share of held-out failed attempts whose retry is right; McNemar
(exact) pairs the two on the same items. Training runs `train.rl` from params.yaml with `enabled: true`,
stopped after `--minutes` of optimizer steps (a step in flight finishes). Writes `--out` (JSON: both fix
rates, the McNemar test, steps, seconds, the reward and correct-rollout curves per step).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _curve(tsv: Path) -> list[list[float]]:
    if not tsv.exists():
        return []
    return [[int(r["step"]), round(float(r[next(k for k in r if k != "step")]), 4)]
            for r in csv.DictReader(tsv.open(), delimiter="\t")]


def fix_rate(name, preset, rows, tasks, adapter, ecfg):
    """Per held-out row: is the retry after the reflection right (reflector = corrector = `adapter` or the base)."""
    from reflectevo import evaluation as ev
    from reflectevo.backends.registry import make_backend
    from reflectevo.tasks import Item

    items = [Item.from_dict(r["item"]) for r in rows]
    t1 = [{"item_id": it.id, "task": it.task, "t1": r["trial1"], "t1_answer": r["rejected"], "t1_correct": False}
          for it, r in zip(items, rows)]
    model = make_backend(name, preset, adapter)
    out = ev.reflect_then_retry(items, tasks, t1, model, model, ecfg)
    return [bool(o["t2_correct"]) for o in out]


def main(minutes: float = 60.0, raw: Path = ROOT / "data/raw", held_out: int = 24, max_items: int = 0,
         preset: str = "", seed: int = 0, max_completion_length: int = 0, max_new_tokens_retry: int = 0,
         out: Path = ROOT / "bench/results/rl_curve.json") -> None:
    """`max_completion_length` / `max_new_tokens_retry`: 0 = train.rl's (the reflection's budget in evaluation
    follows max_completion_length too)."""
    import reflectevo.training.run as T
    from reflectevo.training.data import rl_rows
    from reflectevo.config.sections import EvaluateConfig
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params
    from reflectevo.training.config import TrainConfig
    from reflectevo.errors import ReflectEvoError
    from reflectevo.episodes.shards import load_episodes
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.stats import paired_test
    from reflectevo.tasks import Item
    from reflectevo.tasks.registry import TaskCache

    params = read_params(ROOT / "params.yaml")
    name, p = load_preset(params, preset or None)
    cfg = load_section(params, "train", TrainConfig)
    gen = load_section(params, "generate")
    rows = rl_rows(load_episodes(raw), "oracle")
    if not rows:
        raise ReflectEvoError(f"{raw}: no failed trial-1 attempts (run `dvc repro generate` first)")
    random.Random(seed).shuffle(rows)
    if max_items:
        rows = rows[:max_items]
    held, train = rows[:held_out], rows[held_out:]
    if not held or not train:
        raise ReflectEvoError(f"{len(rows)} failed attempts: too few for {held_out} held out and some to train on")
    cache = TaskCache()   # each task with the options its items were prepared with (multiple choice)
    tasks = {r["item"]["task"]: cache.of(Item.from_dict(r["item"])) for r in rows}
    rl = dataclasses.replace(cfg.rl, enabled=True, retry_by="policy", max_steps=100000, save_steps=0, epochs=100.0,
                             max_completion_length=max_completion_length or cfg.rl.max_completion_length,
                             max_new_tokens_retry=max_new_tokens_retry or cfg.rl.max_new_tokens_retry)
    ecfg = EvaluateConfig(protocol="oracle", rounds=1, max_new_tokens_trial=rl.max_new_tokens_retry,
                          max_new_tokens_reflection=rl.max_completion_length, name_rejected=gen.name_rejected)

    t0 = time.perf_counter()
    before = fix_rate(name, p, held, tasks, None, ecfg)
    eval_s = time.perf_counter() - t0

    budget_s = minutes * 60
    orig = T.step_logger

    def step_logger(live, prefix):  # stop after the time budget (the step in flight finishes)
        cb = orig(live, prefix)
        start = time.perf_counter()
        inner = getattr(cb, "on_step_end", None)

        def on_step_end(args, state, control, **kw):
            if inner is not None:
                inner(args, state, control, **kw)
            if time.perf_counter() - start >= budget_s:
                control.should_training_stop = True
            return control

        cb.on_step_end = on_step_end
        return cb

    T.step_logger = step_logger
    with tempfile.TemporaryDirectory() as d:
        models, curves = Path(d) / "m", Path(d) / "curves"
        res = T.train_setting("grpo_reflect_retry", name, p, model_fingerprint(name, p), train, [],
                              dataclasses.replace(cfg, rl=rl), models, curves_dir=curves)
        after = fix_rate(name, p, held, tasks, models, ecfg)
        metric_dir = curves / "plots/metrics/reflector"
        curve = {k: _curve(metric_dir / f"{k}.tsv") for k in ("reward", "rewards/correct/mean", "retry/repeat_rate",
                                                              "completions/mean_length", "loss")}
    test = paired_test(before, after)
    result = {"preset": name, "setting": "grpo_reflect_retry", "minutes_budget": minutes,
              "n_train_prompts": len(train), "n_held_out": len(held), "seed": seed,
              "fix_rate_before": round(sum(before) / len(before), 4), "fix_rate_after": round(sum(after) / len(after), 4),
              "mcnemar": test, "steps": res["reflector"]["steps"], "train_seconds": res["reflector"]["seconds"],
              "eval_seconds_each": round(eval_s, 1), "rl": dataclasses.asdict(rl), "summary": res["reflector"],
              "curves": curve}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("curves", "rl")}, indent=2))


if __name__ == "__main__":
    typer.run(main)
