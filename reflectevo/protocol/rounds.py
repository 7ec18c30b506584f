"""The ReflectEvo protocol, written once: trial 1 → verify → reflect → retry → verify, for one or more rounds.

The generate stage (k sampled reflections per failed item, under demand instructions), the evaluate stage
(one greedy reflection per item, every system), self-evolution (generation with a trained setting's
adapters) and the `grpo_reflect_retry` RL rollout all call these functions; they differ only in the
backends that reflect and retry, in `RoundSpec` (budgets, sampling, oracle or intrinsic) and in how each
job's seeds are drawn. The RL rollout also builds its own retry prompt (`retry_prompt`: the retry as the
next turn of the reflection's conversation).

- `first_trials`: trial 1 of every item (greedy), verified.
- `Job`: one sample that goes through the rounds: its item, the attempt the next round looks at (`latest`),
  the latest rejected answer, its demand instruction and its seeds.
- `reflect` / `retry` (or both: `reflect_retry_step`), and `one_stage_step` (one output holds the reflection
  and the new attempt): one round for a list of jobs.
- `run_rounds`: the rounds. Oracle protocol: a job whose retry is right stops (an answer judged right is
  final); intrinsic: every job goes on, and its latest answer counts.

Round 1 of every job looks at trial 1 (never another sample's retry); no prompt carries the gold answer,
only (oracle) the binary failure notice. Trials stop at their first complete answer, reflections at their own
end (`reflectevo.protocol.mechanics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reflectevo.prompts import (one_stage_messages, reflection_messages, split_one_stage, trial_messages)
from reflectevo.protocol.mechanics import (answer_step, attempt_text, generate_per_task, one_stage_sampling,
                                           reflection_sampling, render_trial, trial_sampling, trials)
from reflectevo.sampling import Generation, Sampling
from reflectevo.tasks import Item, Task, Verdict


@dataclass(frozen=True)
class RoundSpec:
    """How a reflect -> retry round is run."""

    oracle: bool = True                   # oracle: told the attempt failed; intrinsic: never told
    reflect: bool = True                  # false: the retry sees the notice and its attempt only
    max_new_tokens_trial: int = 256       # a retry's budget (and trial 1's)
    max_new_tokens_reflection: int = 256
    temperature: float = 0.0              # reflection sampling (0 = greedy)
    top_p: float = 1.0
    seed: int = 0                         # the reflection Sampling's base seed (recorded)
    retry_temperature: float = 0.0        # 0 = greedy retry; > 0 samples it with the job's retry seed
    use_previous: bool = True             # the retry prompt shows the attempt the reflection looked at
    name_rejected: bool = False           # oracle: the retry prompt names the rejected answer

    def reflection_sampling(self) -> Sampling:
        return reflection_sampling(self.max_new_tokens_reflection, self.temperature, self.top_p, self.seed)


@dataclass
class Attempt:
    """A trial as sent and judged: the prompt (ending with the task's prefix), the generation, the verdict of
    its completion, and `text`, the attempt later prompts show (prefix + completion)."""

    prompt: str
    gen: Generation
    verdict: Verdict
    text: str
    sampling: Sampling | None = None      # how it was drawn (a retry: greedy or sampled)
    seed: int | None = None


@dataclass
class Reflection:
    prompt: str
    gen: Generation
    sampling: Sampling
    seed: int | None = None

    @property
    def text(self) -> str:
        return self.gen.text


@dataclass
class Step:
    """One round of one job: the reflection (None without one, and for a one-stage model) and the new attempt.
    A one-stage model's round has `output`, its generation as written, and `reflection_part`, the text before
    "Answer:"."""

    reflection: Reflection | None
    retry: Attempt
    output: str | None = None
    reflection_part: str | None = None


@dataclass
class Job:
    """One sample going through the rounds."""

    item: Item
    task: Task
    latest: str                           # the attempt the next reflection / retry looks at
    rejected: str | None = None           # the latest rejected (extracted) answer
    demand: str | None = None             # the demand instruction id (generate, oracle), None: the test prompt
    seed: Callable[[int, str], int] | None = None   # (round, "reflection" | "retry") -> seed; None: greedy only
    key: Any = None                       # the caller's reference (an item index, a sample index ...)
    steps: list[Step] = field(default_factory=list)


StepFn = Callable[[list[Job], int], list[Step]]


def judge(texts: Sequence[str], items: Sequence[Item], row_tasks: Sequence[Task]) -> list[Verdict]:
    """The verdict of each text on its item, one batched `verify_many` per task (code answers run in parallel
    sandboxes, never in this process)."""
    out: list[Verdict | None] = [None] * len(texts)
    groups: dict[int, list[int]] = {}
    by_id: dict[int, Task] = {}
    for i, t in enumerate(row_tasks):
        groups.setdefault(id(t), []).append(i)
        by_id[id(t)] = t
    for key, idx in groups.items():
        task = by_id[key]
        many = getattr(task, "verify_many", None)
        verdicts = (many([texts[i] for i in idx], [items[i] for i in idx]) if many is not None
                    else [task.verify(texts[i], items[i]) for i in idx])
        for i, v in zip(idx, verdicts):
            out[i] = v
    return out  # type: ignore[return-value]


def first_trials(backend: Any, items: Sequence[Item], row_tasks: Sequence[Task], max_new_tokens: int,
                 prefix: bool = True) -> list[Attempt]:
    """Trial 1 of every item (greedy), verified. `prefix=False`: no assistant-side "Thought:" prefix (the
    SFT-on-answers baseline answers without a thought)."""
    prompts = [render_trial(backend, t, trial_messages(t, it), prefix) for it, t in zip(items, row_tasks)]
    gens = trials(backend, prompts, row_tasks, max_new_tokens)
    verdicts = judge([g.text for g in gens], items, row_tasks)
    return [Attempt(p, g, v, attempt_text(p, g.text, t)) for p, g, v, t in zip(prompts, gens, verdicts, row_tasks)]


def _seeds(jobs: Sequence[Job], rnd: int, phase: str) -> list[int] | None:
    if not jobs or any(j.seed is None for j in jobs):
        return None
    return [j.seed(rnd, phase) for j in jobs]  # type: ignore[misc]


def reflect(jobs: Sequence[Job], reflector: Any, spec: RoundSpec, rnd: int = 1) -> list[Reflection]:
    """Each job's reflection on its latest attempt (under its demand, or the test prompt), by `reflector`."""
    sampling = spec.reflection_sampling()
    prompts = [reflector.render(reflection_messages(j.item, j.latest, j.demand, oracle=spec.oracle)) for j in jobs]
    seeds = _seeds(jobs, rnd, "reflection")
    gens = reflector.generate(prompts, sampling, seeds=seeds) if jobs else []
    return [Reflection(p, g, sampling, seeds[n] if seeds is not None else None)
            for n, (p, g) in enumerate(zip(prompts, gens))]


RetryPrompt = Callable[[Job, "Reflection | None", list[dict[str, str]]], str]


def retry_messages(job: Job, reflection: Reflection | None, spec: RoundSpec) -> list[dict[str, str]]:
    """The retry's prompt messages: the question, the reflection, the attempt it looked at (`use_previous`)
    and, oracle with `name_rejected`, the rejected answer."""
    return trial_messages(job.task, job.item, reflection=reflection.text if reflection is not None else None,
                          previous=job.latest if spec.use_previous else None, retry=True, oracle=spec.oracle,
                          rejected=job.rejected if spec.name_rejected and spec.oracle else None)


def retry(jobs: Sequence[Job], corrector: Any, spec: RoundSpec, reflections: Sequence[Reflection | None],
          rnd: int = 1, retry_prompt: RetryPrompt | None = None) -> list[Attempt]:
    """Each job's new attempt after its reflection, by `corrector`: a trial (greedy, or sampled with the job's
    retry seed at `retry_temperature`), verified. `retry_prompt(job, reflection, messages)`: the prompt as sent
    (default: the messages rendered as a fresh trial prompt)."""
    msgs = [retry_messages(j, r, spec) for j, r in zip(jobs, reflections)]
    prompts = [retry_prompt(j, r, m) if retry_prompt is not None else render_trial(corrector, j.task, m)
               for j, r, m in zip(jobs, reflections, msgs)]
    row_tasks = [j.task for j in jobs]
    seeds = _seeds(jobs, rnd, "retry")
    sampled = spec.retry_temperature > 0
    gens = trials(corrector, prompts, row_tasks, spec.max_new_tokens_trial, spec.retry_temperature, spec.top_p,
                  seeds=seeds if sampled else None) if jobs else []
    verdicts = judge([g.text for g in gens], [j.item for j in jobs], row_tasks)
    return [Attempt(p, g, v, attempt_text(p, g.text, j.task),
                    trial_sampling(j.task, spec.max_new_tokens_trial, spec.retry_temperature, spec.top_p),
                    seeds[n] if seeds is not None else None)
            for n, (p, g, v, j) in enumerate(zip(prompts, gens, verdicts, jobs))]


def reflect_retry_step(reflector: Any, corrector: Any, spec: RoundSpec,
                       retry_prompt: RetryPrompt | None = None) -> StepFn:
    """One round: `reflector` reflects (unless `spec.reflect` is false), then `corrector` retries."""

    def step(jobs: list[Job], rnd: int) -> list[Step]:
        refl: list[Reflection | None] = list(reflect(jobs, reflector, spec, rnd)) if spec.reflect else [None] * len(jobs)
        return [Step(r, a) for r, a in zip(refl, retry(jobs, corrector, spec, refl, rnd, retry_prompt))]

    return step


def one_stage_step(model: Any, spec: RoundSpec) -> StepFn:
    """One round by a one-stage model: one output holds the reflection, "Answer:" and the new attempt (greedy,
    the reflection's and the trial's budgets together); an output without an answer gets the answer step. The
    answer part is the attempt the next round looks at."""
    budget = spec.max_new_tokens_reflection + spec.max_new_tokens_trial

    def step(jobs: list[Job], rnd: int) -> list[Step]:
        if not jobs:
            return []
        prompts = [model.render(one_stage_messages(j.task, j.item, j.latest, oracle=spec.oracle)) for j in jobs]
        row_tasks = [j.task for j in jobs]
        gens = generate_per_task(model, prompts, row_tasks, lambda task: one_stage_sampling(task, budget))
        gens = answer_step(model, prompts, row_tasks, gens)
        parts = [split_one_stage(g.text) for g in gens]
        texts = [answer or g.text for (_, answer), g in zip(parts, gens)]
        verdicts = judge(texts, [j.item for j in jobs], row_tasks)
        return [Step(None, Attempt(p, g, v, text), output=g.text, reflection_part=reflection)
                for p, g, (reflection, _), text, v in zip(prompts, gens, parts, texts, verdicts)]

    return step


def run_rounds(jobs: list[Job], rounds: int, oracle: bool, step: StepFn) -> list[Job]:
    """Run up to `rounds` rounds of `step` on `jobs` (each job's `steps` get one entry per round it took part
    in). After each round a job looks at its new attempt, and a newly extracted answer becomes the rejected
    one; oracle: a job whose attempt is right stops."""
    active = list(jobs)
    for rnd in range(1, rounds + 1):
        if not active:
            break
        still = []
        for job, st in zip(active, step(active, rnd)):
            job.steps.append(st)
            job.latest = st.retry.text
            if st.retry.verdict.extracted is not None:
                job.rejected = st.retry.verdict.extracted
            if not oracle or not st.retry.verdict.correct:
                still.append(job)
        active = still
    return jobs


class PhaseBackends:
    """One backend per protocol phase: trial 1 (`trial`, the base model), `reflector`, `corrector` (the
    retry). Phases without their own backend share the base's; two phases with the same adapter share one."""

    def __init__(self, trial: Any, reflector: Any = None, corrector: Any = None) -> None:
        self.trial = trial
        self.reflector = reflector if reflector is not None else trial
        self.corrector = corrector if corrector is not None else trial

    def distinct(self) -> list[Any]:
        out: list[Any] = []
        for b in (self.trial, self.reflector, self.corrector):
            if all(b is not o for o in out):
                out.append(b)
        return out

    @property
    def prefilled_tokens(self) -> int:
        return sum(getattr(b, "prefilled_tokens", 0) or 0 for b in self.distinct())

    @property
    def dtype(self) -> Any:
        return getattr(self.trial, "dtype", None)


__all__ = ["Attempt", "Job", "PhaseBackends", "Reflection", "RoundSpec", "Step", "first_trials", "judge",
           "one_stage_step", "reflect", "reflect_retry_step", "retry", "retry_messages", "run_rounds"]
