"""Prompt templates of the ReflectEvo protocol (our wording) and the demand pool.

Every builder returns the chat messages to send; backends render them with the model's own chat
template, and generated records store the rendered text exactly as sent, before generation.

Leak rules, checked by tests: the gold answer never appears in a reflection or trial-2 prompt; the
only feedback the model gets is the binary failure notice; each reflection sample sees trial 1, never
an earlier retry.
"""

from __future__ import annotations

import hashlib

from reflectevo.demands import demand_pool
from reflectevo.tasks.base import Item, Task

Messages = list[dict[str, str]]

INSTRUCTION = """Solve the task below. Think step by step on a line that starts with "Thought:", then give \
your final answer on a line that starts with "Action:".
{answer_format}

"""

TRIAL = """{instruction}Question: {question}{choices}{reflection_block}"""

REFLECTION_BLOCK = """

You attempted this question before and your answer was judged incorrect. Here is your reflection on \
that attempt; it locates the errors, explains the failure and outlines a plan:
Reflection: {reflection}{previous}

Now try again: a "Thought:" line, then your final answer on an "Action:" line.
{answer_format}"""

# The "prompt-based w/o reflection" baseline: the retry sees only the failure notice and its attempt.
RETRY_BLOCK = """

You attempted this question before and your answer was judged incorrect.{previous}

Now try again: a "Thought:" line, then your final answer on an "Action:" line.
{answer_format}"""

PREVIOUS_TRIAL = """

Your previous (unsuccessful) attempt:
{trial}"""

FAILURE_NOTICE = "Observation: Answer is INCORRECT"

# Optional (`name_rejected`, a deviation from the paper): the retry is told which answer was rejected.
REJECTED = """
Your answer {answer} is wrong: the correct answer is different."""

# Generation-time reflection prompt: guided by one demand from the pool.
REFLECT = """You are an advanced reasoning agent that improves through self-reflection. You were \
given the question below, and your previous attempt was judged incorrect.

Question: {question}{choices}

Previous attempt:
{trial}
{notice}

Reflect on the failed attempt. {demand}
Do not state the final answer. Use at most 100 words, with no introduction or conclusion."""

# Test-time reflection prompt (no demand: a trained reflector must work without one).
REFLECT_TEST = """You are an advanced reasoning agent that improves through self-reflection. You were \
given the question below, and your previous attempt was judged incorrect.

Question: {question}{choices}

Previous attempt:
{trial}
{notice}

In a few complete sentences, diagnose a likely reason for the failure and devise a new, concise, \
high-level plan that avoids it. Do not state the final answer."""

# Intrinsic protocol (no oracle): the model is never told whether its attempt was right.
REFLECT_INTRINSIC = """You are an advanced reasoning agent that improves through self-reflection. Here is a \
question and your previous attempt at it; it may be right or wrong.

Question: {question}{choices}

Previous attempt:
{trial}

In a few complete sentences, verify the attempt step by step, diagnose any error you find, and devise a \
concise plan for answering again. Do not state the final answer."""

REVIEW_BLOCK = """

You attempted this question before. Here is your review of that attempt:
Reflection: {reflection}{previous}

Now answer again: a "Thought:" line, then your final answer on an "Action:" line.
{answer_format}"""

RECHECK_BLOCK = """

You attempted this question before; check your attempt, it may be right or wrong.{previous}

Now answer again: a "Thought:" line, then your final answer on an "Action:" line.
{answer_format}"""

# One-stage: the reflection and the corrected answer in one output (train and test use the same text).
ONE_STAGE_SUFFIX = """
Then write "Answer:" and solve the task again: a "Thought:" line, then an "Action:" line.
{answer_format}"""

ONE_STAGE_SEPARATOR = "\n\nAnswer:\n"

# What the generate stage sends (trial 1, reflection under a demand, trial 2): its prompt version hashes
# only these, so editing an evaluation-only template does not invalidate generated episodes.
GENERATION_TEMPLATES = (INSTRUCTION, TRIAL, REFLECTION_BLOCK, PREVIOUS_TRIAL, FAILURE_NOTICE, REFLECT,
                        RETRY_BLOCK, REFLECT_INTRINSIC, REVIEW_BLOCK, RECHECK_BLOCK, REJECTED)  # + variants of generate
TEMPLATES = (REFLECT_INTRINSIC, REVIEW_BLOCK, RECHECK_BLOCK, INSTRUCTION, TRIAL, REFLECTION_BLOCK, RETRY_BLOCK,
             PREVIOUS_TRIAL, FAILURE_NOTICE, REFLECT, REFLECT_TEST, ONE_STAGE_SUFFIX, ONE_STAGE_SEPARATOR, REJECTED)


def task_prompt_hash(task: Task) -> str:
    """Hash of what a task contributes to every prompt and trial: answer form, few-shot examples, the
    answer pattern a trial stops at, the assistant-side prefix, the ramble guards and the answer step's
    opening."""
    parts = (task.answer_format(), task.fewshot(), task.answer_stop(), task.trial_prefix(), task.ramble_stops(),
             task.ramble_patterns(), task.answer_opening())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _choices(item: Item) -> str:
    if not item.choices:
        return ""
    return "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.choices))


def _user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def trial_messages(task: Task, item: Item, reflection: str | None = None, previous: str | None = None,
                   retry: bool = False, oracle: bool = True, rejected: str | None = None) -> Messages:
    """Trial 1, trial 2 after a reflection (optionally with the previous attempt), or, with `retry` and
    no reflection, the "w/o reflection" retry (failure notice + previous attempt only). With
    `oracle=False` (intrinsic protocol) no block says the attempt was wrong. `rejected` (oracle only):
    the answer that was judged wrong, named in the retry (`name_rejected`).

    The last message is the item's; any earlier turns are the task's worked few-shot examples."""
    block = ""
    if oracle:
        prev = PREVIOUS_TRIAL.format(trial=previous.strip()) if previous is not None else ""
        if rejected is not None and (reflection is not None or retry):
            prev += REJECTED.format(answer=rejected)
    else:
        prev = f"\n\nYour previous attempt:\n{previous.strip()}" if previous is not None else ""
    if reflection is not None:
        block = (REFLECTION_BLOCK if oracle else REVIEW_BLOCK).format(
            reflection=reflection.strip(), previous=prev, answer_format=task.answer_format())
    elif retry:
        block = (RETRY_BLOCK if oracle else RECHECK_BLOCK).format(previous=prev, answer_format=task.answer_format())
    # Few-shot examples are earlier turns of the same chat: the instruction opens the first one.
    instruction = INSTRUCTION.format(answer_format=task.answer_format())
    msgs: Messages = []
    for q, completion in task.fewshot():
        msgs += [{"role": "user", "content": TRIAL.format(instruction=instruction, question=q, choices="",
                                                          reflection_block="")},
                 {"role": "assistant", "content": completion}]
        instruction = ""
    return msgs + _user(TRIAL.format(instruction=instruction, question=item.question, choices=_choices(item),
                                     reflection_block=block))


def reflection_messages(item: Item, trial: str, demand_id: str | None, oracle: bool = True) -> Messages:
    """Reflection on a failed trial: under a demand (generation) or the test prompt (demand None); with
    `oracle=False` the intrinsic prompt, which does not say whether the attempt was wrong."""
    if not oracle:
        return _user(REFLECT_INTRINSIC.format(question=item.question, choices=_choices(item), trial=trial.strip()))
    common = dict(question=item.question, choices=_choices(item), trial=trial.strip(), notice=FAILURE_NOTICE)
    if demand_id is None:
        return _user(REFLECT_TEST.format(**common))
    return _user(REFLECT.format(demand=demand_pool()[demand_id]["text"], **common))


def one_stage_messages(task: Task, item: Item, trial: str, oracle: bool = True) -> Messages:
    """One-stage prompt: reflect, then answer again, in one output (same text in training and test)."""
    msgs = reflection_messages(item, trial, None, oracle=oracle)
    msgs[0]["content"] += ONE_STAGE_SUFFIX.format(answer_format=task.answer_format())
    return msgs


def answer_target(task: Task, item: Item) -> str:
    """SFT-on-answers baseline target: the gold answer in the task's answer form, no reasoning."""
    return task.gold_completion(item)


def one_stage_target(reflection: str, trial2: str) -> str:
    return reflection.strip() + ONE_STAGE_SEPARATOR + trial2.strip()


def split_one_stage(output: str) -> tuple[str, str]:
    """Split a one-stage output into (reflection, answer part); no separator -> all reflection."""
    head, sep, tail = output.partition("Answer:")
    return (head.strip(), tail.strip()) if sep else (output.strip(), "")
