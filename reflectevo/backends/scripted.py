"""The scripted backend (`backend: scripted`): deterministic completions from a recipe, no model.

It runs the real generate stage (prompts, verifiers, keys, journal, shards) at CPU speed: 460K episodes
in minutes, for tests, benchmarks, and a dry run of a new task's pipeline before any model is loaded.

The recipe (`models.<preset>.script`, `reflectevo.config.ScriptRecipe`):

- **trial 1** is right with probability `trial1_correct`, a **retry** with probability `retry_correct`
  (ReflectEvo-460K: 13.93% of reflection samples led to a right second answer). A right answer is the
  task's own gold answer form (`Task.gold_completion`), a wrong one the same form with another option
  (multiple choice) or a changed answer; the task's verifier judges both, as for a real model.
- **lengths** in words, normal around `trial_words` / `reflection_words` (ReflectEvo-460K averages:
  answer 189 / 237 words at turn 1 / 2, reflection 250) with `length_sd` relative spread, cut to the
  token budget (one word counts as one token). Reflections never state the answer.

Every draw is a function of the prompt, the per-sample seed and `script.seed` only (sha256), so a rerun,
another chunk size or a resumed run gives the same text: episode keys stay meaningful.

The backend has to know which item a prompt is about (it has no model to answer with): the generate loop
calls `bind(items, tasks)` before each chunk (`reflectevo.generation.run_chunk`); a backend without
`bind` is unaffected. Prompts are rendered with a fixed plain-text chat template.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

from reflectevo.sampling import Generation, Sampling, finish_text
from reflectevo.config.presets import ModelPreset, ScriptRecipe
from reflectevo.models.fingerprint import SCRIPT_VERSION


# A reflection-like vocabulary: common words of diagnoses and plans, plus generated terms so that two
# reflections of one item are not near-duplicates under curate's TF-IDF filter.
_COMMON = ("the", "answer", "step", "previous", "attempt", "I", "should", "check", "each", "relation",
           "because", "was", "wrong", "reasoning", "first", "then", "verify", "question", "carefully", "plan",
           "error", "assumed", "instead", "consider", "option", "again", "missed", "detail", "which", "means",
           "next", "time", "read", "every", "condition", "before", "choosing", "final", "result", "compare")
_SYL = ("ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "in", "qua", "dre", "po", "li", "zan", "te", "mu")
_RARE = tuple(a + b + c for a in _SYL for b in _SYL for c in ("", "n", "s", "t"))   # 1,024 terms
_VOCAB = _COMMON * 25 + _RARE     # about half the words common ones
_POOL_WORDS = 1 << 18             # texts are slices of one fixed pseudo-random word stream
_POOL: list[str] = []


def _pool() -> list[str]:
    if not _POOL:
        _POOL.extend(random.Random(SCRIPT_VERSION).choices(_VOCAB, k=_POOL_WORDS + 4096))
    return _POOL


def _u(*parts: Any) -> float:
    """A uniform draw in [0, 1) from the parts (sha256)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _words(rng: random.Random, n: int) -> str:
    """`n` words: a slice of the fixed word stream at a random offset (two texts rarely overlap)."""
    pool = _pool()
    n = min(n, 4096)
    at = rng.randrange(_POOL_WORDS)
    return " ".join(pool[at:at + n])


class ScriptedBackend:
    name = "scripted"
    sampler = SCRIPT_VERSION          # part of every episode key
    dtype = "none"

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: Any = None, **_: Any) -> None:
        self.preset_name = preset_name
        self.recipe: ScriptRecipe = preset.script
        self.adapter = adapter
        self.batch_size = preset.gen_batch_size
        self._items: list[tuple[str, Any, Any]] = []    # (question, item, task) in chunk order
        self._first: dict[str, Any] = {}                 # trial-1 prompt -> item
        self._at = 0                                     # where the last prompt's item was found

    # -- the generate loop tells us the chunk's items ------------------------------------------------
    def bind(self, items: Sequence[Any], tasks: dict[str, Any]) -> None:
        from reflectevo.prompts import trial_messages

        self._items = [(it.question, it, tasks[it.task]) for it in items]
        self._at = 0
        # trial 1 as the protocol sends it: the rendered prompt, then the task's assistant-side prefix
        self._first = {self.render(trial_messages(tasks[it.task], it)) + tasks[it.task].trial_prefix(): it for it in items}

    def render(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"

    def _find(self, prompt: str) -> tuple[Any, Any] | None:
        # the item's question is in the last user turn: search from the end (few-shot turns come first)
        # prompts come in item order within a phase: search from the last hit on
        tail = prompt[prompt.rfind("<|user|>"):] if "<|user|>" in prompt else prompt
        n = len(self._items)
        for k in range(n):
            j = (self._at + k) % n
            q, it, task = self._items[j]
            if q in tail:
                self._at = j
                return it, task
        return None

    # -- completions ---------------------------------------------------------------------------------
    def _length(self, rng: random.Random, mean: int, budget: int) -> int:
        n = int(rng.gauss(mean, mean * self.recipe.length_sd))
        return max(1, min(n, budget))

    def _answer(self, item: Any, task: Any, right: bool, rng: random.Random) -> str:
        if right:
            return task.gold_completion(item)
        if item.choices:
            letters = [chr(ord("A") + i) for i in range(len(item.choices))]
            wrong = rng.choice([x for x in letters if x != item.answer] or letters)
        else:
            wrong = str(int(item.answer) + 1 + rng.randrange(9)) if re.fullmatch(r"-?\d+", item.answer) \
                else f"not {item.answer}"
        return task.gold_completion(dataclasses.replace(item, answer=wrong))

    def _one(self, prompt: str, sampling: Sampling, seed: int | None) -> tuple[str, int, str]:
        r = self.recipe
        rng = random.Random(hashlib.sha256(f"{r.seed}:{seed}:{prompt}".encode()).digest())
        found = self._find(prompt)
        if sampling.stop_regex is None:                              # a reflection
            n = self._length(rng, r.reflection_words, sampling.max_new_tokens)
            return _words(rng, n), n, "eos" if n < sampling.max_new_tokens else "length"
        if found is None:                                            # a trial of an unknown item
            n = self._length(rng, r.trial_words, sampling.max_new_tokens)
            return _words(rng, n), n, "length"
        item, task = found
        first = prompt in self._first
        right = _u(r.seed, "t1" if first else "retry", item.id, seed, prompt) < (r.trial1_correct if first else r.retry_correct)
        answer = self._answer(item, task, right, rng)
        if sampling.stop == ("\n",):                                 # the answer step: only the answer
            opening = (task.answer_opening() or ("", ""))[0]
            tail = answer[answer.find(opening.strip()) + len(opening.strip()):] if opening.strip() in answer else answer
            return tail, max(1, len(tail.split())), "stop"
        budget = max(1, sampling.max_new_tokens - len(answer.split()) - 1)
        n = self._length(rng, r.trial_words if first else r.retry_words, budget)
        return f" {_words(rng, n)}\n{answer}", n + len(answer.split()), "eos"

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """A deterministic stand-in for log p(continuation | prompt) (curate.judge likelihood)."""
        return [-(1.0 + 4.0 * _u(self.recipe.seed, "score", p, c)) * max(1, len(c.split()))
                for p, c in zip(prompts, continuations)]

    def generate(self, prompts: list[str], sampling: Sampling, seeds: Sequence[int] | None = None) -> list[Generation]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        out = []
        for i, p in enumerate(prompts):
            text, n_new, end = self._one(p, sampling, None if seeds is None else int(seeds[i]))
            text, reason = finish_text(text, sampling, end)
            out.append(Generation(text, p.count(" ") + p.count("\n") + 1, n_new, reason))   # ~ words
        return out
