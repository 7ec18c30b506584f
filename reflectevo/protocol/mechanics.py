"""Trial and reflection mechanics: where a trial, a reflection and a one-stage output end, the answer step,
and what later prompts show of an attempt. Every caller of the protocol (`reflectevo.protocol.rounds`) and
every backend applies them the same way.

- A **trial** starts with the task's assistant-side prefix (`Thought:`, as the original's "Thought: "
  prefix) appended to the rendered prompt, and ends at its first complete answer (`Task.answer_stop`,
  e.g. the first `Finish[...]`), at EOS, or at a ramble guard (a new "Question:" / "Observation" block:
  `Task.ramble_stops`; a blank line not followed by the answer form: `Task.ramble_patterns`), whichever
  comes first. A trial that ended without an answer gets
  the **answer step**, as the original's second ("Action: ") call: its text continues with the answer
  form's opening (`\nAction: Finish[`) and the model completes the answer, up to the closing bracket
  (a few tokens; marked `forced`). The attempt that later prompts show is prefix + completion.
- A **reflection** ends at EOS or when it starts a new block ("Question:", "Action:", "Thought:",
  "Observation"): it is a diagnosis and a plan, not another attempt.
- A **one-stage** output (reflection, "Answer:", a new attempt) ends at the new attempt's answer.

Every backend gets the same `Sampling` (plain stop strings natively, the answer pattern applied to the
text afterwards where the backend cannot stop on a pattern), so the recorded text and its verdict do not
depend on the backend. A call with rows of several tasks is split per task (each has its own answer
pattern) and put back in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from reflectevo.sampling import Generation, Sampling
from reflectevo.tasks import Task

ANSWER_STEP_TOKENS = 12                                             # budget of the answer step
REFLECTION_STOPS = ("\nQuestion:", "\nAction:", "\nThought:", "\nObservation", "\nPrevious attempt:")
ONE_STAGE_STOPS = ("\nQuestion:", "\nObservation")
MECHANICS_VERSION = "m3"   # bump when the rules above change (part of the prompt version); m2: answer step;
                           # m3: a blank line followed by the answer form no longer ends a trial


def trial_sampling(task: Task, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0) -> Sampling:
    return Sampling(max_new_tokens, temperature, top_p if temperature > 0 else 1.0, seed, task.ramble_stops(),
                    task.answer_stop(), task.ramble_patterns())


def reflection_sampling(max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Sampling:
    return Sampling(max_new_tokens, temperature, top_p if temperature > 0 else 1.0, seed, REFLECTION_STOPS, None)


def one_stage_sampling(task: Task, max_new_tokens: int) -> Sampling:
    return Sampling(max_new_tokens, 0.0, 1.0, 0, ONE_STAGE_STOPS, task.answer_stop())


def render_trial(backend: Any, task: Task, messages: list[dict[str, str]], prefix: bool = True) -> str:
    """The trial prompt as sent: the chat-rendered messages plus the task's assistant-side prefix
    (none for an endpoint in chat mode, which cannot continue an assistant turn, or with `prefix=False`:
    the SFT-on-answers baseline answers without a thought)."""
    prompt = backend.render(messages)
    if not prefix or getattr(backend, "mode", None) == "chat":
        return prompt
    return prompt + task.trial_prefix()


def attempt_text(prompt: str, completion: str, task: Task) -> str:
    """What later prompts show of an attempt: the prefix the prompt ended with, then the completion."""
    prefix = task.trial_prefix()
    if prefix and prompt.endswith(prefix):
        sep = "" if completion[:1].isspace() else " "
        return (prefix + sep + completion).strip()
    return completion.strip()


def generate_per_task(backend: Any, prompts: Sequence[str], row_tasks: Sequence[Task], make_sampling,
                      seeds: Sequence[int] | None = None) -> list[Generation]:
    """Generate `prompts`, one backend call per task (`make_sampling(task)` gives its Sampling), in order."""
    groups: dict[int, list[int]] = {}
    by_id: dict[int, Task] = {}
    for i, t in enumerate(row_tasks):
        groups.setdefault(id(t), []).append(i)
        by_id[id(t)] = t
    out: list[Generation | None] = [None] * len(prompts)
    for key, idx in groups.items():
        gens = backend.generate([prompts[i] for i in idx], make_sampling(by_id[key]),
                                seeds=[seeds[i] for i in idx] if seeds is not None else None)
        for i, g in zip(idx, gens):
            out[i] = g
    return out  # type: ignore[return-value]


def trials(backend: Any, prompts: Sequence[str], row_tasks: Sequence[Task], max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, seeds: Sequence[int] | None = None) -> list[Generation]:
    """Generate one trial per rendered prompt (each ending as its task's trials end), then the answer step for
    the trials that ended without an answer."""
    gens = generate_per_task(backend, prompts, row_tasks,
                             lambda t: trial_sampling(t, max_new_tokens, temperature, top_p), seeds=seeds)
    return answer_step(backend, prompts, row_tasks, gens, seeds)


def answer_step(backend: Any, prompts: Sequence[str], row_tasks: Sequence[Task], gens: list[Generation],
                seeds: Sequence[int] | None = None) -> list[Generation]:
    """For every trial that ended without a complete answer: continue its text with the answer form's
    opening and let the model write the answer (greedy, `ANSWER_STEP_TOKENS`, up to the closing
    bracket). Trials that answered are returned unchanged."""
    from dataclasses import replace

    from reflectevo.sampling import stop_position

    todo = [i for i, (t, g) in enumerate(zip(row_tasks, gens))
            if t.answer_opening() is not None
            and stop_position(g.text, Sampling(1, stop_regex=t.answer_stop())) is None]
    if not todo:
        return gens
    heads = [gens[i].text.rstrip() + row_tasks[i].answer_opening()[0] for i in todo]
    cont = generate_per_task(backend, [prompts[i] + h for i, h in zip(todo, heads)], [row_tasks[i] for i in todo],
                             lambda t: Sampling(ANSWER_STEP_TOKENS, stop=("\n",),
                                                stop_regex=re.escape(t.answer_opening()[1])),
                             seeds=[seeds[i] for i in todo] if seeds is not None else None)
    out = list(gens)
    for i, h, c in zip(todo, heads, cont):
        out[i] = replace(gens[i], text=h + c.text, n_new_tokens=gens[i].n_new_tokens + c.n_new_tokens, forced=True)
    return out
