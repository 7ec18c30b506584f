"""Tasks judged by answer type (`choice`, `number`, `math`, `code`, `text`): forms, extraction, verdicts.

Both the ReflectEvo tasks and the YAML-declared tasks derive from `TypedTask`. Code answers are run
by `reflectevo.sandbox` (never in this process); `verify_many` runs them in parallel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from reflectevo.tasks.answers import (extract_code, math_equal, mc_letter, normalize_text, options_from_question,
                                      token_f1)
from reflectevo.tasks.base import ANSWER_TYPES, FINISH_ANGLE, FINISH_BRACKET, Item, Task, Verdict, extract_finish

_FORMS = {
    "choice": 'End with the letter of the correct option in the form "Action: Finish[B]".',
    "number": 'End with the final number in the form "Action: Finish[42]".',
    "math": 'End with the final answer in LaTeX in the form "Action: Finish<<<\\frac{1}{2}>>>".',
    "code": ('After "Action:", write the complete Python code between [BEGIN] and [END], for example\n'
             "Action: [BEGIN]\ndef add(a, b):\n    return a + b\n[END]"),
    "text": 'End with a short answer (a few words) in the form "Action: Finish[Walt Disney]".',
}

# Worked examples written for this project (outside every split): one per answer type.
_FEWSHOT = {
    "choice": ("Which number is even?\nA. 3\nB. 8\nC. 11\nD. 15",
               "Thought: 8 is divisible by 2; 3, 11 and 15 are not.\nAction: Finish[B]"),
    "number": ("A box holds 6 eggs. How many eggs are in 7 boxes?",
               "Thought: 7 boxes of 6 eggs each hold 7 * 6 = 42 eggs.\nAction: Finish[42]"),
    "math": ("What is $\\frac{1}{3} + \\frac{1}{6}$?",
             "Thought: With the common denominator 6: 2/6 + 1/6 = 3/6 = 1/2.\nAction: Finish<<<\\frac{1}{2}>>>"),
    "code": ("You are an expert Python programmer, and here is your task: Write a function to return the "
             "larger of two numbers.\nYour code should pass these tests:\n['assert larger(2, 5) == 5']",
             "Thought: Compare the two numbers and return the bigger one.\n"
             "Action: [BEGIN]\ndef larger(a, b):\n    return a if a >= b else b\n[END]"),
    "text": ("Mickey Mouse was created by Walt Disney in 1928.\n\nQuestion: Who created Mickey Mouse?",
             "Thought: The passage says Walt Disney created Mickey Mouse.\nAction: Finish[Walt Disney]"),
}

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def parse_number(text: str | None) -> float | None:
    """The first number in `text` (thousands separators allowed), or None."""
    if text is None:
        return None
    m = _NUMBER.search(text.replace("$", ""))
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


class TypedTask(Task):
    """A task whose extraction and verdict follow its `answer_type`."""

    answer_type = "text"
    timeout: float = 5.0  # code checks: seconds per item (ReflectEvo used 5 s)

    def answer_format(self) -> str:
        return _FORMS[self.answer_type]

    def fewshot(self) -> list[tuple[str, str]]:
        return [_FEWSHOT[self.answer_type]]

    def answer_opening(self) -> tuple[str, str] | None:
        if self.answer_type == "code":
            return None
        return ("\nAction: Finish<<<", ">>>") if self.answer_type == "math" else super().answer_opening()

    def ramble_patterns(self) -> tuple[str, ...]:
        if self.answer_type in ("code", "math"):   # blank lines belong to code and worked math
            return ()
        return super().ramble_patterns()

    def answer_stop(self) -> str:
        if self.answer_type == "code":
            return r"\[BEGIN\][\s\S]*?\[END\]"
        return FINISH_ANGLE if self.answer_type == "math" else FINISH_BRACKET

    def extract(self, completion: str) -> str | None:
        if self.answer_type == "code":
            return extract_code(completion)
        return extract_finish(completion)

    def gold_completion(self, item: Item) -> str:
        if self.answer_type == "code":
            return f"Action: [BEGIN]\n{item.answer}\n[END]"
        if self.answer_type == "math":
            return f"Action: Finish<<<{item.answer}>>>"
        return f"Action: Finish[{item.answer}]"

    # -- verdicts ------------------------------------------------------------------------------------
    def verify(self, completion: str, item: Item) -> Verdict:
        return self.verify_many([completion], [item])[0]

    def verify_many(self, completions: Sequence[str], items: Sequence[Item], workers: int | None = None) -> list[Verdict]:
        """Judge many completions; code answers run in parallel sandboxes (one per core by default)."""
        if len(completions) != len(items):
            raise ValueError("completions and items differ in length")
        if self.answer_type != "code":
            return [self._verify_one(c, it) for c, it in zip(completions, items)]
        from reflectevo.sandbox import Job, run_many

        codes = [self.extract(c) for c in completions]
        todo = [i for i, code in enumerate(codes) if code is not None and code.strip()]
        jobs = [Job(codes[i] or "", tuple(items[i].tests or ()), str(items[i].meta.get("test_setup_code") or ""))
                for i in todo]
        results = dict(zip(todo, run_many(jobs, workers=workers, timeout=self.timeout)))
        out = []
        for i, code in enumerate(codes):
            if i not in results:
                out.append(Verdict(False, 0.0, code, "no code found between [BEGIN] and [END]"))
            else:
                r = results[i]
                out.append(Verdict(r.passed, float(r.passed), code, r.error))
        return out

    def _choices_for(self, item: Item) -> list[str]:
        if item.choices:
            return list(item.choices)
        listed = item.meta.get("choices")
        if isinstance(listed, list) and listed:
            return [str(c) for c in listed]
        return options_from_question(item.question)

    def _verify_one(self, completion: str, item: Item) -> Verdict:
        raw = self.extract(completion)
        if raw is None:
            return Verdict(False, 0.0, None, "no answer found")
        kind = self.answer_type
        if kind == "choice":
            choices = self._choices_for(item)
            letter = mc_letter(raw, len(choices) or 26, choices)
            if letter is None:
                return Verdict(False, 0.0, raw, "not an option letter")
            ok = letter == item.answer.strip().upper()
            return Verdict(ok, float(ok), letter)
        if kind == "number":
            got, want = parse_number(raw), parse_number(item.answer)
            if got is None:
                return Verdict(False, 0.0, raw, "not a number")
            ok = want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
            return Verdict(ok, float(ok), raw)
        if kind == "math":
            ok = math_equal(raw, item.answer)
            return Verdict(ok, float(ok), raw)
        if kind == "text":
            golds = [item.answer] + [str(a) for a in item.meta.get("all_answers", []) if isinstance(a, str)]
            ok = any(normalize_text(raw) == normalize_text(g) for g in golds)
            return Verdict(ok, max(token_f1(raw, g) for g in golds), raw)
        raise AssertionError(f"answer type {kind!r} handled elsewhere")  # code: verify_many


def check_answer_type(kind: str, where: str) -> str:
    from reflectevo.errors import unknown

    if kind not in ANSWER_TYPES:
        raise unknown("answer type", kind, ANSWER_TYPES, where)
    return kind
