"""Evaluate on the test split (oracle protocol: reflect only when trial 1 was wrong).

Trial 1 always comes from the untrained base model, as in the paper, so Acc@t1 is shared by every
system. Systems:
- `base_reflect`: the prompt-based baseline with reflection: the base model reflects (test prompt,
  greedy) and retries with the reflection and its previous attempt.
- `one_stage`: the trained one-stage adapter writes reflection + new answer in one output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflectevo.backends import Sampling
from reflectevo.config import EvaluateConfig
from reflectevo.metrics import by_task
from reflectevo.prompts import one_stage_messages, reflection_messages, split_one_stage, trial_messages
from reflectevo.tasks import Item, Task


def trial1(items: Sequence[Item], tasks: dict[str, Task], base, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    prompts = [base.render(trial_messages(tasks[it.task], it)) for it in items]
    gens = base.generate(prompts, Sampling(cfg.max_new_tokens_trial))
    rows = []
    for it, p, g in zip(items, prompts, gens):
        v = tasks[it.task].verify(g.text, it)
        rows.append({"item_id": it.id, "task": it.task, "t1_prompt": p, "t1": g.text, "t1_answer": v.extracted,
                     "t1_correct": v.correct})
    return rows


def base_reflect(items, tasks, base, t1_rows, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    wrong = [i for i, r in enumerate(t1_rows) if not r["t1_correct"]]
    r_prompts = [base.render(reflection_messages(items[i], t1_rows[i]["t1"], None)) for i in wrong]
    refl = base.generate(r_prompts, Sampling(cfg.max_new_tokens_reflection)) if wrong else []
    t2_prompts = [base.render(trial_messages(tasks[items[i].task], items[i], reflection=r.text,
                                             previous=t1_rows[i]["t1"])) for i, r in zip(wrong, refl)]
    t2 = base.generate(t2_prompts, Sampling(cfg.max_new_tokens_trial)) if wrong else []
    out = [{"item_id": r["item_id"], "task": r["task"], "t1_correct": r["t1_correct"], "t2_correct": r["t1_correct"],
            "reflection": None} for r in t1_rows]
    for i, rp, r, tp, g in zip(wrong, r_prompts, refl, t2_prompts, t2):
        v = tasks[items[i].task].verify(g.text, items[i])
        out[i].update(reflection_prompt=rp, reflection=r.text, t2_prompt=tp, t2=g.text, t2_answer=v.extracted,
                      t2_correct=v.correct)
    return out


def one_stage(items, tasks, trained, t1_rows, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    wrong = [i for i, r in enumerate(t1_rows) if not r["t1_correct"]]
    prompts = [trained.render(one_stage_messages(tasks[items[i].task], items[i], t1_rows[i]["t1"])) for i in wrong]
    budget = cfg.max_new_tokens_reflection + cfg.max_new_tokens_trial
    gens = trained.generate(prompts, Sampling(budget)) if wrong else []
    out = [{"item_id": r["item_id"], "task": r["task"], "t1_correct": r["t1_correct"], "t2_correct": r["t1_correct"],
            "reflection": None} for r in t1_rows]
    for i, p, g in zip(wrong, prompts, gens):
        reflection, answer = split_one_stage(g.text)
        v = tasks[items[i].task].verify(answer or g.text, items[i])
        out[i].update(prompt=p, output=g.text, reflection=reflection, t2_answer=v.extracted, t2_correct=v.correct)
    return out


def summarize(system_rows: dict[str, list[dict[str, Any]] | None]) -> dict[str, Any]:
    return {name: (by_task(rows) if rows is not None else None) for name, rows in system_rows.items()}
