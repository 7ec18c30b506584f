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

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from reflectevo.config.sections import EvaluateConfig
from reflectevo.metrics import by_task
from reflectevo.protocol.rounds import (Attempt, Job, RoundSpec, Step, StepFn, first_trials, one_stage_step,
                                        reflect_retry_step, run_rounds)
from reflectevo.settings import baseline_names, registry
from reflectevo.tasks import Item, Task


def _row_tasks(items: Sequence[Item], tasks: dict[str, Task]) -> list[Task]:
    return [tasks[it.task] for it in items]


def round_spec(cfg: EvaluateConfig) -> RoundSpec:
    """The evaluate params as a protocol round: greedy reflection (the test prompt, no demand), greedy retry
    that sees the attempt the reflection looked at."""
    return RoundSpec(oracle=cfg.protocol == "oracle", max_new_tokens_trial=cfg.max_new_tokens_trial,
                     max_new_tokens_reflection=cfg.max_new_tokens_reflection, name_rejected=cfg.name_rejected)


def trial1(items: Sequence[Item], tasks: dict[str, Task], model, cfg: EvaluateConfig,
           prefix: bool = True) -> list[dict[str, Any]]:
    attempts = first_trials(model, items, _row_tasks(items, tasks), cfg.max_new_tokens_trial, prefix=prefix)
    return [{"item_id": it.id, "task": it.task, "t1_prompt": a.prompt, "t1": a.text, "t1_answer": a.verdict.extracted,
             "t1_correct": a.verdict.correct, "t1_stop": a.gen.stop_reason, "t1_forced": a.gen.forced,
             "t1_new_tokens": a.gen.n_new_tokens}
            for it, a in zip(items, attempts)]


def _t2(a: Attempt) -> dict[str, Any]:
    return {"t2": a.text, "t2_answer": a.verdict.extracted, "t2_correct": a.verdict.correct, "t2_stop": a.gen.stop_reason,
            "t2_forced": a.gen.forced, "t2_new_tokens": a.gen.n_new_tokens}


def _record(step: Step) -> dict[str, Any]:
    """One round of one row as predictions.jsonl holds it."""
    if step.output is not None:   # a one-stage output
        return {"prompt": step.retry.prompt, "output": step.output, "reflection": step.reflection_part, **_t2(step.retry)}
    out: dict[str, Any] = {}
    if step.reflection is not None:
        r = step.reflection
        out = {"reflection_prompt": r.prompt, "reflection": r.text, "reflection_stop": r.gen.stop_reason,
               "reflection_new_tokens": r.gen.n_new_tokens}
    return {**out, "t2_prompt": step.retry.prompt, **_t2(step.retry)}


def _rounds(items: Sequence[Item], tasks: dict[str, Task], t1_rows: list[dict[str, Any]], cfg: EvaluateConfig,
            step: StepFn) -> list[dict[str, Any]]:
    """Run `cfg.rounds` reflect -> retry rounds (`reflectevo.protocol.rounds.run_rounds`). Oracle: only rows still
    wrong go on (a right answer is final); intrinsic: every row goes on, and the last answer counts. Each row gets
    `correct_by_round` (trial 1, after round 1, ..., after round R), `t2_correct` (after round 1) and
    `final_correct`."""
    oracle = cfg.protocol == "oracle"
    out = [{"item_id": r["item_id"], "task": r["task"], "t1_correct": r["t1_correct"],
            **{k: r[k] for k in ("t1_answer", "t1_stop", "t1_forced", "t1_new_tokens") if k in r},
            "correct_by_round": None} for r in t1_rows]
    jobs = [Job(items[i], tasks[items[i].task], latest=r["t1"], rejected=r.get("t1_answer"), key=i)
            for i, r in enumerate(t1_rows) if not (oracle and r["t1_correct"])]
    run_rounds(jobs, cfg.rounds, oracle, step)
    steps = {job.key: job.steps for job in jobs}
    for i, row in enumerate(out):
        done = steps.get(i, [])
        for rnd, st in enumerate(done, start=1):
            if rnd == 1:
                row.update(_record(st))
            else:
                row.setdefault("rounds", []).append({"round": rnd, **_record(st)})
        by_round = [bool(row["t1_correct"])] + [bool(st.retry.verdict.correct) for st in done]
        by_round += [by_round[-1]] * (cfg.rounds + 1 - len(by_round))   # rows that stopped keep their answer
        row["correct_by_round"] = by_round
        row["t2_correct"] = by_round[1]
        row["final_correct"] = by_round[-1]
    return out


def reflect_then_retry(items, tasks, t1_rows, reflector, corrector, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """Each round: `reflector` reflects (greedy, test prompt, no demand) on the latest attempt and
    `corrector` retries after it."""
    return _rounds(items, tasks, t1_rows, cfg, reflect_retry_step(reflector, corrector, round_spec(cfg)))


def retry_without_reflection(items, tasks, t1_rows, model, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """The "prompt-based w/o reflection" baseline: failure notice (oracle) and previous attempt only."""
    spec = replace(round_spec(cfg), reflect=False)
    return _rounds(items, tasks, t1_rows, cfg, reflect_retry_step(model, model, spec))


def one_stage(items, tasks, model, t1_rows, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """The one-stage adapter writes the reflection and the new answer in one output; the answer part is
    the attempt the next round looks at."""
    return _rounds(items, tasks, t1_rows, cfg, one_stage_step(model, round_spec(cfg)))


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
