"""Evaluate systems on the test split under one of two protocols:

- `oracle` (as ReflectEvo reports): reflect only when trial 1 was wrong, and say so in the prompt;
  a right trial 1 stays right, so Δc→i is 0 by construction.
- `intrinsic` (SCoRe's setting): reflect on every item with prompts that never reveal whether the
  attempt was right; the second answer counts, so right answers can turn wrong (Δc→i).

`rounds` > 1 repeats reflect -> retry on the latest attempt (Figure 4: Acc@t1 .. Acc@t(R+1)); under the
oracle protocol a right answer is final, under the intrinsic one every round counts.

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
| grpo_one_stage, rloo | as one_stage (RL-trained adapter)   | |
| grpo_reflect_retry | the GRPO reflector adapter | the same adapter (`retry_by: policy`) or base (`base`) |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reflectevo.config.sections import EvaluateConfig
from reflectevo.mechanics import (answer_step, attempt_text, generate_per_task, one_stage_sampling,
                                  reflection_sampling, run_trials)
from reflectevo.metrics import by_task
from reflectevo.settings import baseline_names, registry
from reflectevo.prompts import one_stage_messages, reflection_messages, split_one_stage, trial_messages
from reflectevo.tasks import Item, Task



def trial1(items: Sequence[Item], tasks: dict[str, Task], model, cfg: EvaluateConfig,
           prefix: bool = True) -> list[dict[str, Any]]:
    prompts, gens = run_trials(model, tasks, items, [trial_messages(tasks[it.task], it) for it in items],
                               cfg.max_new_tokens_trial, prefix=prefix)
    rows = []
    for it, p, g in zip(items, prompts, gens):
        v = tasks[it.task].verify(g.text, it)
        rows.append({"item_id": it.id, "task": it.task, "t1_prompt": p, "t1": attempt_text(p, g.text, tasks[it.task]),
                     "t1_answer": v.extracted, "t1_correct": v.correct, "t1_stop": g.stop_reason,
                     "t1_forced": g.forced, "t1_new_tokens": g.n_new_tokens})
    return rows


def _oracle(cfg: EvaluateConfig) -> bool:
    return cfg.protocol == "oracle"


# One reflect -> retry step for the rows `idx`, each looking at its latest attempt: returns per row the
# fields to record, including `t2` (the new attempt's text), `t2_answer` and `t2_correct`.
Step = Callable[[list[int], list[str], list[str | None]], list[dict[str, Any]]]


def _rounds(items: Sequence[Item], t1_rows: list[dict[str, Any]], cfg: EvaluateConfig, step: Step) -> list[dict[str, Any]]:
    """Run `cfg.rounds` reflect -> retry rounds. Oracle: only rows still wrong go on (a right answer is
    final); intrinsic: every row goes on, and the last answer counts. Each row gets `correct_by_round`
    (trial 1, after round 1, ..., after round R), `t2_correct` (after round 1) and `final_correct`."""
    oracle = _oracle(cfg)
    out = [{"item_id": r["item_id"], "task": r["task"], "t1_correct": r["t1_correct"],
            **{k: r[k] for k in ("t1_answer", "t1_stop", "t1_forced", "t1_new_tokens") if k in r},
            "correct_by_round": [r["t1_correct"]]} for r in t1_rows]
    latest = [r["t1"] for r in t1_rows]
    rejected = [r.get("t1_answer") for r in t1_rows]
    active = [i for i, r in enumerate(t1_rows) if not (oracle and r["t1_correct"])]
    for rnd in range(1, cfg.rounds + 1):
        records = step(active, [latest[i] for i in active], [rejected[i] for i in active]) if active else []
        for i, rec in zip(active, records):
            if rnd == 1:
                out[i].update(rec)
            else:
                out[i].setdefault("rounds", []).append({"round": rnd, **rec})
            latest[i] = rec["t2"]
            if rec.get("t2_answer") is not None:
                rejected[i] = rec["t2_answer"]
            out[i]["correct_by_round"].append(bool(rec["t2_correct"]))
        done = set(active)
        for i, row in enumerate(out):  # rows that did not reflect this round keep their answer
            if i not in done:
                row["correct_by_round"].append(row["correct_by_round"][-1])
        active = [i for i in active if not (oracle and out[i]["correct_by_round"][-1])]
    for row in out:
        row["t2_correct"] = row["correct_by_round"][1]
        row["final_correct"] = row["correct_by_round"][-1]
    return out


def _retry_step(items, tasks, model, cfg: EvaluateConfig, idx: list[int], latest: list[str],
                reflections: list[str] | None, rejected: list[str | None]) -> list[dict[str, Any]]:
    msgs = [trial_messages(tasks[items[i].task], items[i],
                           reflection=reflections[n] if reflections is not None else None,
                           previous=latest[n], retry=True, oracle=_oracle(cfg),
                           rejected=rejected[n] if cfg.name_rejected and _oracle(cfg) else None)
            for n, i in enumerate(idx)]
    if not idx:
        return []
    prompts, gens = run_trials(model, tasks, [items[i] for i in idx], msgs, cfg.max_new_tokens_trial)
    recs = []
    for i, p, g in zip(idx, prompts, gens):
        task = tasks[items[i].task]
        v = task.verify(g.text, items[i])
        recs.append({"t2_prompt": p, "t2": attempt_text(p, g.text, task), "t2_answer": v.extracted,
                     "t2_correct": v.correct, "t2_stop": g.stop_reason, "t2_forced": g.forced,
                     "t2_new_tokens": g.n_new_tokens})
    return recs


def reflect_then_retry(items, tasks, t1_rows, reflector, corrector, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """Each round: `reflector` reflects (greedy, test prompt, no demand) on the latest attempt and
    `corrector` retries after it."""

    def step(idx: list[int], latest: list[str], rejected: list[str | None]) -> list[dict[str, Any]]:
        r_prompts = [reflector.render(reflection_messages(items[i], t, None, oracle=_oracle(cfg)))
                     for i, t in zip(idx, latest)]
        gens = reflector.generate(r_prompts, reflection_sampling(cfg.max_new_tokens_reflection))
        refl = [g.text for g in gens]
        recs = _retry_step(items, tasks, corrector, cfg, idx, latest, refl, rejected)
        return [{"reflection_prompt": p, "reflection": r, "reflection_stop": g.stop_reason,
                 "reflection_new_tokens": g.n_new_tokens, **rec}
                for p, r, g, rec in zip(r_prompts, refl, gens, recs)]

    return _rounds(items, t1_rows, cfg, step)


def retry_without_reflection(items, tasks, t1_rows, model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """The "prompt-based w/o reflection" baseline: failure notice (oracle) and previous attempt only."""
    return _rounds(items, t1_rows, cfg,
                   lambda idx, latest, rejected: _retry_step(items, tasks, model, cfg, idx, latest, None, rejected))


def one_stage(items, tasks, model, t1_rows, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """The one-stage adapter writes the reflection and the new answer in one output; the answer part is
    the attempt the next round looks at."""
    budget = cfg.max_new_tokens_reflection + cfg.max_new_tokens_trial

    def step(idx: list[int], latest: list[str], rejected: list[str | None]) -> list[dict[str, Any]]:
        prompts = [model.render(one_stage_messages(tasks[items[i].task], items[i], t, oracle=_oracle(cfg)))
                   for i, t in zip(idx, latest)]
        row_tasks = [tasks[items[i].task] for i in idx]
        gens = generate_per_task(model, prompts, row_tasks, lambda task: one_stage_sampling(task, budget))
        gens = answer_step(model, prompts, row_tasks, gens)   # an output without an answer gets the answer step
        recs = []
        for i, p, g in zip(idx, prompts, gens):
            reflection, answer = split_one_stage(g.text)
            v = tasks[items[i].task].verify(answer or g.text, items[i])
            recs.append({"prompt": p, "output": g.text, "reflection": reflection, "t2": answer or g.text,
                         "t2_answer": v.extracted, "t2_correct": v.correct, "t2_stop": g.stop_reason,
                         "t2_forced": g.forced, "t2_new_tokens": g.n_new_tokens})
        return recs

    return _rounds(items, t1_rows, cfg, step)


def answers_only(items, tasks, model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """SFT-on-answers baseline: its own trial 1; Acc@t2 is not defined (t2 = t1)."""
    rows = trial1(items, tasks, model, cfg, prefix=False)   # trained to answer without a thought
    for r in rows:
        r["t2_correct"] = r["t1_correct"]
    return rows


def _answers_only(system: str) -> bool:
    """A system with Acc@t1 only (the SFT-on-answers baseline): it does not reflect."""
    reg = registry().settings
    return system in reg and not reg[system].reflects


def summarize(system_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system: by_task metrics with 95% Wilson intervals, plus `acc_by_round` (Acc@t1..Acc@t(R+1))
    and, after several rounds, `acc_final` / `delta_final` (last round vs trial 1); and the paired
    statistics on the same items (`paired_stats`)."""
    out = {}
    for name, rows in system_rows.items():
        m = by_task(rows, intervals=True)  # + 95% Wilson intervals acc_t1_ci / acc_t2_ci
        if _answers_only(name):  # Acc@t1 only
            for block in [m["overall"], *m["per_task"].values()]:
                for k in ("acc_t2", "acc_t2_ci", "delta", "delta_i2c", "delta_c2i"):
                    block[k] = None
        else:
            _add_rounds(m["overall"], rows)
            for task, block in m["per_task"].items():
                _add_rounds(block, [r for r in rows if r["task"] == task])
        out[name] = m
    paired_stats(system_rows, out)
    return out


def paired_stats(system_rows: dict[str, list[dict[str, Any]]], out: dict[str, Any]) -> None:
    """Add, overall and per task, exact McNemar tests on the same items:
    - every reflecting system: Acc@t1 vs Acc@t2 (`mcnemar_t1_t2`) and a paired bootstrap 95% interval
      for Δ (`delta_ci`);
    - every trained setting: its Acc@t2 against each prompt baseline's (`vs_base_reflect`,
      `vs_base_noreflect`; `b` = items only the setting gets right); `sft_qa`: its Acc@t1 against the
      base model's (`vs_base_t1`)."""
    from reflectevo.stats import aligned, bootstrap_delta_ci, paired_test

    def tasks_of(rows):
        return [None, *sorted({r["task"] for r in rows})]

    def subset(rows, task):
        return rows if task is None else [r for r in rows if r["task"] == task]

    for name, rows in system_rows.items():
        for task in tasks_of(rows):
            block = out[name]["overall"] if task is None else out[name]["per_task"][task]
            part = subset(rows, task)
            if _answers_only(name):
                base = subset(system_rows.get("base_reflect") or system_rows.get("base_noreflect") or [], task)
                if base:
                    block["vs_base_t1"] = paired_test(*aligned(base, part, "t1_correct", "t1_correct"))
                continue
            t1 = [bool(r["t1_correct"]) for r in part]
            t2 = [bool(r["t2_correct"]) for r in part]
            block["mcnemar_t1_t2"] = paired_test(t1, t2)
            block["delta_ci"] = bootstrap_delta_ci(t1, t2)
            if name in baseline_names():
                continue
            for baseline in baseline_names():
                if baseline in system_rows:
                    block[f"vs_{baseline}"] = paired_test(*aligned(subset(system_rows[baseline], task), part,
                                                                   "t2_correct", "t2_correct"))


def _add_rounds(block: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if not rows or "correct_by_round" not in rows[0]:
        return
    n, depth = len(rows), len(rows[0]["correct_by_round"])
    block["acc_by_round"] = [round(sum(bool(r["correct_by_round"][k]) for r in rows) / n, 4) for k in range(depth)]
    if depth > 2:
        block["acc_final"] = block["acc_by_round"][-1]
        block["delta_final"] = round(block["acc_by_round"][-1] - block["acc_by_round"][0], 4)


def plot_rows(system_rows: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Data for `dvc plots`: accuracy by round per system, and the trial-1 -> final transition counts."""
    by_round, transitions = [], []
    for name, rows in system_rows.items():
        if not rows or _answers_only(name):
            continue
        n = len(rows)
        for k in range(len(rows[0]["correct_by_round"])):
            by_round.append({"system": name, "round": k + 1, "n": n,
                             "accuracy": round(sum(bool(r["correct_by_round"][k]) for r in rows) / n, 4)})
        for a in (True, False):
            for b in (True, False):
                transitions.append({"system": name, "trial1": "correct" if a else "incorrect",
                                    "final": "correct" if b else "incorrect",
                                    "count": sum(bool(r["t1_correct"]) == a and bool(r["final_correct"]) == b
                                                 for r in rows)})
    return by_round, transitions
