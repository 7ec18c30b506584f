"""Evaluate systems on the test split under one of two protocols:

- `oracle` (as ReflectEvo reports): reflect only when trial 1 was wrong, and say so in the prompt;
  a right trial 1 stays right, so Δc→i is 0 by construction.
- `intrinsic` (SCoRe's setting): reflect on every item with prompts that never reveal whether the
  attempt was right; the second answer counts, so right answers can turn wrong (Δc→i).

Trial 1 comes from the untrained base model, as in the paper, so Acc@t1 is shared by every reflecting
system. Systems:

| system          | reflection by            | retry (trial 2) by |
|-----------------|--------------------------|--------------------|
| base_noreflect  | none (failure notice + previous attempt only) | base |
| base_reflect    | base (test prompt)       | base |
| one_stage       | the one-stage adapter writes reflection + new answer in one output | |
| two_stage       | reflector adapter        | corrector adapter |
| dpo_pm, dpo_pref| the DPO reflector adapter| base |
| sft_qa          | — (Acc@t1 of the SFT-on-answers adapter only) | |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflectevo.backends import Sampling
from reflectevo.config import EvaluateConfig
from reflectevo.metrics import by_task
from reflectevo.prompts import one_stage_messages, reflection_messages, split_one_stage, trial_messages
from reflectevo.tasks import Item, Task

REFLECTING = ("base_noreflect", "base_reflect", "one_stage", "two_stage", "dpo_pm", "dpo_pref")


def trial1(items: Sequence[Item], tasks: dict[str, Task], model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    prompts = [model.render(trial_messages(tasks[it.task], it)) for it in items]
    gens = model.generate(prompts, Sampling(cfg.max_new_tokens_trial))
    rows = []
    for it, p, g in zip(items, prompts, gens):
        v = tasks[it.task].verify(g.text, it)
        rows.append({"item_id": it.id, "task": it.task, "t1_prompt": p, "t1": g.text, "t1_answer": v.extracted,
                     "t1_correct": v.correct})
    return rows


def _oracle(cfg: EvaluateConfig) -> bool:
    return cfg.protocol == "oracle"


def _start(t1_rows: list[dict[str, Any]], cfg: EvaluateConfig) -> tuple[list[int], list[dict[str, Any]]]:
    """Indices to reflect on (oracle: the failures; intrinsic: all) and rows defaulting t2 to t1."""
    wrong = [i for i, r in enumerate(t1_rows) if not r["t1_correct"] or not _oracle(cfg)]
    out = [{"item_id": r["item_id"], "task": r["task"], "t1_correct": r["t1_correct"], "t2_correct": r["t1_correct"]}
           for r in t1_rows]
    return wrong, out


def _retry(items, tasks, wrong, t1_rows, out, model, reflections: list[str] | None, cfg: EvaluateConfig) -> None:
    prompts = [model.render(trial_messages(tasks[items[i].task], items[i],
                                           reflection=reflections[n] if reflections is not None else None,
                                           previous=t1_rows[i]["t1"], retry=True, oracle=_oracle(cfg)))
               for n, i in enumerate(wrong)]
    gens = model.generate(prompts, Sampling(cfg.max_new_tokens_trial)) if wrong else []
    for i, p, g in zip(wrong, prompts, gens):
        v = tasks[items[i].task].verify(g.text, items[i])
        out[i].update(t2_prompt=p, t2=g.text, t2_answer=v.extracted, t2_correct=v.correct)


def reflect_then_retry(items, tasks, t1_rows, reflector, corrector, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """Oracle protocol: for each trial-1 failure, `reflector` reflects (greedy) and `corrector` retries."""
    wrong, out = _start(t1_rows, cfg)
    r_prompts = [reflector.render(reflection_messages(items[i], t1_rows[i]["t1"], None, oracle=_oracle(cfg)))
                 for i in wrong]
    refl = reflector.generate(r_prompts, Sampling(cfg.max_new_tokens_reflection)) if wrong else []
    for i, p, r in zip(wrong, r_prompts, refl):
        out[i].update(reflection_prompt=p, reflection=r.text)
    _retry(items, tasks, wrong, t1_rows, out, corrector, [r.text for r in refl], cfg)
    return out


def retry_without_reflection(items, tasks, t1_rows, model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """The "prompt-based w/o reflection" baseline: failure notice (oracle) and previous attempt only."""
    wrong, out = _start(t1_rows, cfg)
    _retry(items, tasks, wrong, t1_rows, out, model, None, cfg)
    return out


def one_stage(items, tasks, model, t1_rows, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    wrong, out = _start(t1_rows, cfg)
    prompts = [model.render(one_stage_messages(tasks[items[i].task], items[i], t1_rows[i]["t1"], oracle=_oracle(cfg)))
               for i in wrong]
    budget = cfg.max_new_tokens_reflection + cfg.max_new_tokens_trial
    gens = model.generate(prompts, Sampling(budget)) if wrong else []
    for i, p, g in zip(wrong, prompts, gens):
        reflection, answer = split_one_stage(g.text)
        v = tasks[items[i].task].verify(answer or g.text, items[i])
        out[i].update(prompt=p, output=g.text, reflection=reflection, t2_answer=v.extracted, t2_correct=v.correct)
    return out


def answers_only(items, tasks, model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """SFT-on-answers baseline: its own trial 1; Acc@t2 is not defined (t2 = t1)."""
    rows = trial1(items, tasks, model, cfg)
    for r in rows:
        r["t2_correct"] = r["t1_correct"]
    return rows


def summarize(system_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for name, rows in system_rows.items():
        m = by_task(rows, intervals=True)  # + 95% Wilson intervals acc_t1_ci / acc_t2_ci
        if name == "sft_qa":  # Acc@t1 only
            for block in [m["overall"], *m["per_task"].values()]:
                for k in ("acc_t2", "acc_t2_ci", "delta", "delta_i2c", "delta_c2i"):
                    block[k] = None
        out[name] = m
    return out
