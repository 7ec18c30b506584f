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

from reflectevo.sampling import Sampling

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
    # the retry each reflection led to: (prompt as sent, completion); the likelihood judge scores them
    first_retry: tuple[str, str] | None = None
    second_retry: tuple[str, str] | None = None


# curate.judge values besides `none` and a preset name: judges made of the generating model itself
JUDGES = ("likelihood", "self")


def judge_record(preset_name: str, preset: Any, backend: Any, kind: str = "preset") -> dict[str, Any]:
    """Who judged: kind (likelihood | self | preset), preset, backend, base-model fingerprint, prompt
    version; for an endpoint also its URL (scheme, host, port, path: never a key), the served model
    name and the request mode."""
    from reflectevo.models.fingerprint import model_fingerprint

    version = LIKELIHOOD_VERSION if kind == "likelihood" else JUDGE_PROMPT_VERSION
    record: dict[str, Any] = {"kind": kind, "preset": preset_name, "backend": preset.backend,
                              "model": model_fingerprint(preset_name, preset), "prompt_version": version}
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


# -- likelihood judge ---------------------------------------------------------------------------------
LIKELIHOOD_VERSION = "likelihood-v1"
_FINISH_OPEN = re.compile(r"Finish\s*(\[|<<<)")


def answer_split(completion: str) -> tuple[str, str] | None:
    """(completion up to and including the opening of its first answer, the answer with its closing
    bracket): `... Action: Finish[` + `7]`. None without a complete `Finish[...]` / `Finish<<<...>>>`."""
    m = _FINISH_OPEN.search(completion)
    if not m:
        return None
    close = "]" if m.group(1) == "[" else ">>>"
    end = completion.find(close, m.end())
    if end < 0:
        return None
    return completion[:m.end()], completion[m.end():end + len(close)]


def check_judge_backend(kind: str, preset_name: str, preset: Any) -> None:
    """Before any model loads: `curate.judge: likelihood` needs a backend that scores continuations (`score`:
    transformers, vllm, scripted); an endpoint (`backend: openai`) cannot, and would otherwise fail only after
    its client (or a vLLM engine) started. Checked on the backend's class."""
    if kind != "likelihood":
        return
    from reflectevo.backends.registry import BACKENDS
    from reflectevo.errors import ReflectEvoError

    cls = BACKENDS.get(preset.backend, where=f"models.{preset_name}.backend")
    if not callable(getattr(cls, "score", None)):
        able = [n for n in BACKENDS.names() if callable(getattr(BACKENDS.get(n), "score", None))]
        raise ReflectEvoError(f"curate.judge: likelihood scores continuations, which backend {preset.backend!r} of "
                              f"models.{preset_name} cannot ({', '.join(able)} can); use curate.judge: self or a "
                              "generating judge preset")


def likelihood_judge(comparisons: Sequence[Comparison], backend, margin: float = 1e-3) -> list[dict[str, Any]]:
    """Prefer the reflection under which the model gives the right answer the higher probability: for
    each fixing reflection, the log-probability of its retry's (correct) answer tokens given the retry
    prompt and the retry's own reasoning up to the answer. No generation, no position bias; a pair whose
    scores differ by less than `margin` nats has no winner. Needs a backend with `score` (`check_judge_backend`)."""
    score = getattr(backend, "score", None)
    if score is None:
        from reflectevo.errors import ReflectEvoError

        raise ReflectEvoError(f"curate.judge likelihood needs the transformers backend (backend {backend.name!r} "
                              "cannot score continuations); use a generating judge preset instead")
    prompts, conts, index, seen = [], [], [], {}
    for n, c in enumerate(comparisons):
        for retry in (c.first_retry, c.second_retry):
            split = answer_split(retry[1]) if retry is not None else None
            if split is None:
                index.append(None)
                continue
            key = (retry[0] + split[0], split[1])   # a reflection in several pairs is scored once
            if key not in seen:
                seen[key] = len(prompts)
                prompts.append(key[0])
                conts.append(key[1])
            index.append(seen[key])
    scores = score(prompts, conts) if prompts else []
    out = []
    for n in range(len(comparisons)):
        a, b = index[2 * n], index[2 * n + 1]
        if a is None or b is None:
            out.append({"winner": None, "votes": []})
            continue
        sa, sb = scores[a], scores[b]
        winner = None if abs(sa - sb) < margin else (0 if sa > sb else 1)
        out.append({"winner": winner, "votes": [round(sa, 4), round(sb, 4)]})
    return out


class LazyJudge:
    """A judge whose backend is built at its first call, so a run with no pair to judge never loads a model
    (curate: `judge=LazyJudge(...)`, `judge_info=lazy.info`). `info` is the judge record (kind, preset,
    model, prompt version); the backend's own fields (an endpoint's URL, served model, mode) join it when
    the backend is built, before the first verdict is returned."""

    def __init__(self, kind: str, preset_name: str, preset: Any, make_backend: Any) -> None:
        check_judge_backend(kind, preset_name, preset)   # likelihood on a backend that cannot score: now
        self.kind, self.preset_name, self.preset = kind, preset_name, preset
        self._make_backend = make_backend
        self.backend: Any = None
        self.info: dict[str, Any] = judge_record(preset_name, preset, None, kind=kind)

    def __call__(self, comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
        if self.backend is None:
            self.backend = self._make_backend(self.preset_name, self.preset)
            self.info.update(judge_record(self.preset_name, self.preset, self.backend, kind=self.kind))
        fn = likelihood_judge if self.kind == "likelihood" else judge
        return fn(comparisons, backend=self.backend)
