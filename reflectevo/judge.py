"""A judge that ranks two fixing reflections of the same failed attempt (to build Dpref).

ReflectEvo used GPT-4o; here any model preset can judge, through any backend: transformers, vllm, or an
OpenAI-compatible endpoint (`backend: openai`, in completions or chat mode). Each pair is asked in both
orders; a verdict counts only when both orders agree, which cancels the position bias small judges have.
The prompt is versioned, and `judge_record` (preset, backend, model, endpoint host, prompt version) is
recorded with every Dpref row and in the data card.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reflectevo.backends import Sampling

JUDGE_PROMPT = """You compare two self-reflections written after a failed attempt at a question. A good \
reflection finds the actual error, explains why the attempt failed, and gives a concrete plan that \
would fix it, without simply stating the answer.

Question: {question}

Failed attempt:
{trial}

Reflection A:
{a}

Reflection B:
{b}

Which reflection is better? Reply with one letter: A or B."""

JUDGE_PROMPT_VERSION = "judge-v1-" + hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:8]
_LETTER = re.compile(r"\b([AB])\b")


@dataclass(frozen=True)
class Comparison:
    question: str
    trial: str
    first: str
    second: str


def judge_record(preset_name: str, preset: Any, backend: Any) -> dict[str, Any]:
    """Who judged: preset, backend, base-model fingerprint, prompt version; for an endpoint also its URL
    (scheme, host, port, path: never a key), the served model name and the request mode."""
    from reflectevo.models import model_fingerprint

    record: dict[str, Any] = {"preset": preset_name, "backend": preset.backend,
                              "model": model_fingerprint(preset_name, preset), "prompt_version": JUDGE_PROMPT_VERSION}
    describe = getattr(backend, "describe", None)
    if describe is not None:
        record.update({k: v for k, v in describe().items() if k != "backend"})
    return record


def parse_choice(text: str) -> str | None:
    m = _LETTER.search(text.strip()[:40])
    return m.group(1) if m else None


def judge(comparisons: Sequence[Comparison], backend, max_new_tokens: int = 4) -> list[dict[str, Any]]:
    """For each comparison: {'winner': 0 (first) | 1 (second) | None (inconsistent), 'votes': [...]}."""
    prompts = []
    for c in comparisons:
        for a, b in ((c.first, c.second), (c.second, c.first)):
            msg = JUDGE_PROMPT.format(question=c.question, trial=c.trial.strip(), a=a.strip(), b=b.strip())
            prompts.append(backend.render([{"role": "user", "content": msg}]))
    gens = backend.generate(prompts, Sampling(max_new_tokens)) if prompts else []
    out = []
    for i in range(len(comparisons)):
        fwd, rev = parse_choice(gens[2 * i].text), parse_choice(gens[2 * i + 1].text)
        # forward: A = first; reversed: A = second
        first_wins = (fwd == "A") + (rev == "B")
        second_wins = (fwd == "B") + (rev == "A")
        winner = 0 if first_wins == 2 else 1 if second_wins == 2 else None
        out.append({"winner": winner, "votes": [gens[2 * i].text.strip()[:20], gens[2 * i + 1].text.strip()[:20]]})
    return out
