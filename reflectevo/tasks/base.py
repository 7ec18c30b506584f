"""The task contract: items in one unified schema, an answer form, an extractor and a verifier."""

from __future__ import annotations

import functools
import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

ANSWER_TYPES = ("choice", "number", "math", "code", "text")


@dataclass(frozen=True)
class Item:
    """One task item in the unified schema (see data/README.md)."""

    id: str
    task: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    tests: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "question": self.question,
            "choices": list(self.choices) if self.choices is not None else None,
            "answer": self.answer,
            "tests": list(self.tests) if self.tests is not None else None,
            "meta": self.meta,
        }

    @staticmethod
    def problem(d: Any) -> str | None:
        """What makes `d` no item of the unified schema (a missing field, a wrong type), or None."""
        if not isinstance(d, dict):
            return f"expected a JSON object, got {type(d).__name__}"
        for key in ("id", "task", "question", "answer"):
            if key not in d:
                return f"item {d.get('id', '?')!r} has no {key!r} field"
        for key, types in (("id", (str, int)), ("task", (str,)), ("question", (str,)), ("answer", (str, int, float))):
            v = d[key]
            if not isinstance(v, types) or isinstance(v, bool):
                want = "a string" if types == (str,) else "a string or a number"
                return f"item {d['id']!r}: field {key!r} must be {want}, got {type(v).__name__}"
        if not d["task"].strip():
            return f"item {d['id']!r}: field 'task' is empty"
        for key in ("choices", "tests"):
            v = d.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                return f"item {d['id']!r}: field {key!r} must be a list of strings or null"
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, dict):
            return f"item {d['id']!r}: field 'meta' must be an object or null, got {type(meta).__name__}"
        options = (meta or {}).get("task_options")
        if options is not None and not isinstance(options, dict):
            return f"item {d['id']!r}: field 'meta.task_options' must be an object or null"
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            question=str(d["question"]),
            answer=str(d["answer"]),
            choices=tuple(d["choices"]) if d.get("choices") is not None else None,
            tests=tuple(d["tests"]) if d.get("tests") is not None else None,
            meta=d.get("meta") or {},
        )

    def text_hash(self) -> str:
        """Hash of what the model sees and is judged on: changes when the item's text changes."""
        h = hashlib.sha256()
        for part in (self.question, "\x1f".join(self.choices or ()), self.answer, "\x1f".join(self.tests or ())):
            h.update(part.encode())
            h.update(b"\x1e")
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    correct: bool
    score: float
    extracted: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"extracted": self.extracted, "correct": self.correct, "score": self.score, "error": self.error}


# The answer forms, as regular expressions: `Finish[...]` (no "]" inside, as the original parses up to
# the next "]") and `Finish<<<...>>>` (MATH). Their first match ends a trial (`Task.answer_stop`).
FINISH_BRACKET = r"Finish\s*\[([^\]]*)\]"
FINISH_ANGLE = r"Finish\s*<<<([\s\S]*?)>>>"
_FINISH = re.compile(f"{FINISH_ANGLE}|{FINISH_BRACKET}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*[:\s]*\(?([^\n]*?)\)?\s*(?:\.|$)", re.I | re.M)


def extract_finish(text: str) -> str | None:
    """Pull the answer out of a ReAct-style completion: the **first** complete `Finish<<<...>>>` or
    `Finish[...]`, as the original parses its Action call; text after it (a copied prompt, a
    placeholder, a second answer) is ignored. Without one, the first "the answer is X" / "Answer: X".
    Returns None when nothing answer-like is found.
    """
    m = _FINISH.search(text)
    if m:
        return (m.group(1) if m.group(1) is not None else m.group(2)).strip()
    m = _ANSWER_IS.search(text)
    if m:
        return m.group(1).strip()
    return None


class Task(ABC):
    """A task: loader with splits + answer form + extractor + verifier."""

    name: str
    answer_type: str = "text"
    splits: tuple[str, ...] = ("train", "test")

    @abstractmethod
    def load(self, split: str, n: int = 0, seed: int = 0) -> list[Item]:
        """Return up to `n` items of `split` (0 = all), deterministically for a given seed."""

    def answer_format(self) -> str:
        """How the model must write its final answer (shown in every trial prompt)."""
        return 'End with your final answer in the form "Action: Finish[<answer>]".'

    def answer_stop(self) -> str:
        """Regular expression of one complete answer: a trial ends at its first match (and the
        extractor reads that first answer)."""
        return FINISH_BRACKET

    def trial_prefix(self) -> str:
        """Assistant-side text every trial starts with (the original's "Thought: " prefix); "" for none."""
        return "Thought:"

    def answer_opening(self) -> tuple[str, str] | None:
        """(opening, closing) of the answer form for the answer step: a trial whose thought ends without
        an answer continues from `opening` (as the original's second, "Action: " call does) and ends at
        `closing`. None: no answer step (code answers are not forced)."""
        return ("\nAction: Finish[", "]")

    def ramble_stops(self) -> tuple[str, ...]:
        """Plain stop strings that end a trial which rambles on instead of answering: a new block."""
        return ("\nQuestion:", "\nObservation", "(END OF")

    def ramble_patterns(self) -> tuple[str, ...]:
        """Patterns that end a rambling trial before their match: a blank line not followed by the answer
        form's opening (a thought is one paragraph, but "...option B.\n\nAction: Finish[B]" answers).
        Code and worked math may have blank lines: those tasks return ()."""
        opening = self.answer_opening()
        if opening is None:
            return ()
        return (blank_line_not_followed_by(opening[0].strip().split()[0]),)

    def fewshot(self) -> list[tuple[str, str]]:
        """Worked examples (question, completion in the answer form) shown before the question.

        They must come from outside every split (no item may see its own answer)."""
        return []

    def extract(self, completion: str) -> str | None:
        return extract_finish(completion)

    def gold_completion(self, item: Item) -> str:
        """The gold answer written in the answer form (SFT-on-answers target; fidelity tests)."""
        return f"Action: Finish[{item.answer}]"

    @abstractmethod
    def verify(self, completion: str, item: Item) -> Verdict:
        """Judge a raw completion (the answer is extracted from it) against the item's gold."""


def check_prompting(task: Task, sample: Item | None = None) -> None:
    """Refuse a task whose prompting cannot work, with one line naming the task and the key: no answer
    form, an answer pattern that does not compile or never matches the task's own answer form (a
    trial would run to its token budget), or a few-shot example without a complete answer."""
    from reflectevo.errors import ReflectEvoError

    if not task.answer_format().strip():
        raise ReflectEvoError(f"task {task.name}: answer_format is empty: the model is never told how to answer")
    pattern = task.answer_stop()
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ReflectEvoError(f"task {task.name}: answer_stop {pattern!r} is not a valid regular expression ({e})") from None
    probe = sample or Item("probe", task.name, "?", "42")
    if not rx.search(task.gold_completion(probe)):
        raise ReflectEvoError(f"task {task.name}: answer_stop {pattern!r} never matches the task's answer form "
                              f"{task.gold_completion(probe)!r}: trials would never stop at their answer")
    for n, (_, completion) in enumerate(task.fewshot()):
        if not rx.search(completion):
            raise ReflectEvoError(f"task {task.name}: fewshot example {n} has no complete answer matching "
                                  f"answer_stop {pattern!r}: {completion[-80:]!r}")


@functools.lru_cache(maxsize=64)
def blank_line_not_followed_by(word: str) -> str:
    """A pattern matching a blank line once the text after it has departed from `word` (the match
    completes at the first character that cannot continue `word`, so a partial "Act" does not stop
    a trial that goes on to "Action:")."""
    import re

    alternatives = ["[^\\s" + re.escape(word[0]) + "]"]
    alternatives += [re.escape(word[:i]) + "[^" + re.escape(word[i]) + "]" for i in range(1, len(word))]
    return r"\n[ \t]*\n\s*(?:" + "|".join(alternatives) + ")"
