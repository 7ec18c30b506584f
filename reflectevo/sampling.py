"""What a generation backend is asked and what it returns: `Sampling` (budget, temperature, seed, where a
completion ends), `Generation`, the stop rules every backend applies the same way, and the `Backend`
interface (`render` chat messages, `generate` completions).

Sampled generation takes one seed per prompt (`seeds`): a sample depends on its prompt, its seed and
the sampling parameters only, never on which other prompts share its batch, how many devices there
are, or where a resumed run restarted. Greedy generation ignores seeds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


STOP_REASONS = ("eos", "stop", "length")


@dataclass(frozen=True)
class Sampling:
    """How to generate: budget, temperature, seed, and where a completion ends.

    `stop`: plain strings that end a completion *before* them (a new "Question:" block, say): every
    backend passes them natively. `stop_regex`: a pattern whose first match ends a completion *after*
    it (the first complete answer, e.g. `Finish[...]`). `stop_patterns`: patterns that end a completion
    *before* their match, as stop strings do, once the match is complete (a blank line that is not
    followed by the answer form). The transformers backend stops on patterns while generating; backends
    that only know plain stop strings (vLLM, OpenAI) generate on and the text is cut at the same place
    afterwards (`finish_text`), so every backend returns the same text."""

    max_new_tokens: int
    temperature: float = 0.0       # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_regex: str | None = None
    stop_patterns: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                               "top_p": self.top_p, "seed": self.seed}
        if self.stop or self.stop_regex:
            out.update(stop=list(self.stop), stop_regex=self.stop_regex)
        if self.stop_patterns:
            out["stop_patterns"] = list(self.stop_patterns)
        return out


@dataclass(frozen=True)
class Generation:
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    stop_reason: str = "length"    # eos | stop (a stop string or the answer pattern) | length (budget spent)
    forced: bool = False           # the answer came from the answer step (reflectevo.protocol.mechanics)


def stop_position(text: str, sampling: Sampling) -> int | None:
    """Where `text` must be cut under `sampling`'s stops (None: no stop reached).

    The stop detected first wins: a plain stop string at i (seen once the whole string is there) cuts
    at i, so does a `stop_patterns` match starting at i; the first match of `stop_regex` cuts at its end."""
    best: tuple[int, int] | None = None   # (position where the stop is complete, cut position)
    for s in sampling.stop:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), i)
    for pattern in sampling.stop_patterns:
        m = _compiled(pattern).search(text)
        if m and (best is None or m.end() < best[0]):
            best = (m.end(), m.start())
    if sampling.stop_regex:
        m = _compiled(sampling.stop_regex).search(text)
        if m and (best is None or m.end() < best[0]):
            best = (m.end(), m.end())
    return None if best is None else best[1]


def finish_text(text: str, sampling: Sampling, natural_end: str) -> tuple[str, str]:
    """(the text cut at its first stop, the stop reason): `stop` when a stop was reached, else
    `natural_end` (`eos` or `length`, as the backend saw it)."""
    cut = stop_position(text, sampling)
    if cut is None:
        return text, natural_end
    return text[:cut], "stop"


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(pattern)
    return _PATTERNS[pattern]


def prompt_seeds(prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int] | None) -> list[int]:
    """The seed of each prompt: the given ones, or by default `sampling.seed + position in the call`."""
    if seeds is None:
        return [sampling.seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return [int(x) for x in seeds]


class Backend(Protocol):
    name: str
    sampler: str   # how sampled tokens are drawn from a seed (part of every episode key)

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]: ...
