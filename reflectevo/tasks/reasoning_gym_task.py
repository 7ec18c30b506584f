"""Any `reasoning-gym` generator as a task: offline, procedurally generated, scored by its own scorer.

Train and test items come from one generator stream (seeded), split by position; items whose question
text also appears in the other split are dropped from train, so the splits are disjoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from pathlib import Path

from reflectevo.errors import ReflectEvoError, unknown
from reflectevo.tasks.base import Item, Task, Verdict
from reflectevo.tasks.fewshot import builtin_file, load_fewshot

_TEST_STREAM = 100_000  # test items are drawn from a separate seed offset
_FEWSHOT_STREAM = 900_000  # few-shot examples come from a third stream, outside both splits
_POOL_STREAM = 800_000     # multiple choice: distractors come from the answers of a fourth stream
_POOL_SIZE = 400


_CACHE_FORMAT = 1


def _cached(kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """A JSON value derived from reasoning-gym, computed once per installed version of it and kept in the user
    cache (`$REFLECTEVO_CACHE/reasoning-gym/`): importing the library alone takes 1-3 s (it loads every
    generator's module, with sympy, pandas and matplotlib), which a stage that only needs a multiple-choice
    task's generator names and answer pool (generate, curate, evaluate on prepared items) should not pay on
    every start. A missing, unreadable or foreign file is recomputed; an unwritable cache is skipped."""
    import os
    from importlib.metadata import version

    from reflectevo.cache import cache_root

    blob = json.dumps({"format": _CACHE_FORMAT, "reasoning_gym": version("reasoning-gym"), "kind": kind, **key},
                      sort_keys=True, default=str)
    path = cache_root() / "reasoning-gym" / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("key") == blob:
            return data["value"]
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": blob, "value": value}))
        os.replace(tmp, path)
    except OSError:
        pass
    return value


@functools.lru_cache(maxsize=1)
def generator_names() -> tuple[str, ...]:
    def compute() -> list[str]:
        import reasoning_gym

        return sorted(reasoning_gym.factory.DATASETS)

    return tuple(_cached("generators", {}, compute))


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=list))


class ReasoningGymTask(Task):
    answer_type = "text"

    def __init__(self, generator: str, options: dict[str, Any] | None = None) -> None:
        if generator not in generator_names():
            raise unknown("reasoning-gym generator", generator, generator_names())
        self.generator = generator
        self.options = dict(options or {})
        self.name = f"rg/{generator}"
        # `fewshot: <file>` among the options picks a few-shot file (default: the built-in one, if any)
        custom = self.options.pop("fewshot", None)
        self.fewshot_file = Path(custom) if custom else builtin_file(self.name)
        # `choices: N` among the options: multiple choice, the gold among N - 1 distractors drawn from the
        # generator's own answers (a separate stream); the answer is then the option letter
        self.n_choices = int(self.options.pop("choices", 0) or 0)
        if self.n_choices:
            if self.n_choices < 3:
                raise ReflectEvoError(f"task {self.name}: choices must be >= 3 (a wrong binary answer is fixed by "
                                      f"flipping it), got {self.n_choices}")
            self.answer_type = "choice"
            pool = self._answer_pool()
            if len(pool) < self.n_choices:
                raise ReflectEvoError(f"task {self.name}: choices {self.n_choices} needs that many distinct answers; "
                                      f"the generator gave {len(pool)} in {_POOL_SIZE} items: {pool[:10]}")
        if self.fewshot_file is not None:
            self.fewshot()  # a missing or empty file fails now, naming the task and the key

    def _dataset(self, size: int, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.generator, size=size, seed=seed, **self.options)
        except (TypeError, ValueError, AssertionError) as e:   # reasoning-gym checks its configs with asserts
            raise ReflectEvoError(f"task {self.name}: bad generator options {self.options}: "
                                  f"{str(e).strip() or type(e).__name__}") from None

    def load(self, split: str, n: int = 0, seed: int = 0) -> list[Item]:
        if split not in self.splits:
            raise unknown("split", split, self.splits, f"task {self.name}")
        n = n or 100
        shots = {q for q, _ in self.fewshot()}
        # oversample so that dropping few-shot (and, for train, test) duplicates still leaves n items
        test = [it for it in self._items(n + 8 if split == "test" else max(n, 1) + 8, seed + _TEST_STREAM, "test")
                if it.question not in shots]
        if split == "test":
            return test[:n]
        seen = {it.question for it in test} | shots
        # oversample so that dropping test duplicates still leaves n items
        train = [it for it in self._items(n * 2 + 8, seed, "train") if it.question not in seen]
        return train[:n]

    def _items(self, size: int, seed: int, split: str) -> list[Item]:
        ds = self._dataset(size, seed)
        items = []
        for i in range(size):
            e = ds[i]
            item = Item(id=f"{self.generator}-{split}-s{seed}-{i}", task=self.name, question=e["question"],
                        answer=str(e["answer"]), meta={"rg_metadata": _jsonable(e.get("metadata", {}))})
            items.append(self._as_choice(item) if self.n_choices else item)
        return items

    # -- multiple choice (`choices: N`) ----------------------------------------------------------------
    @functools.lru_cache(maxsize=1)
    def _answer_pool(self) -> list[str]:
        def compute() -> list[str]:
            ds = self._dataset(_POOL_SIZE, _POOL_STREAM)
            return sorted({str(ds[i]["answer"]).strip() for i in range(_POOL_SIZE)})

        key = {"generator": self.generator, "options": self.options, "size": _POOL_SIZE, "stream": _POOL_STREAM}
        return list(_cached("answer-pool", key, compute))

    def _options(self, question: str, gold: str) -> tuple[list[str], str]:
        """(the N option texts, the gold's letter): distractors and order drawn from the question's hash."""
        import random

        rng = random.Random(hashlib.sha256(f"{self.name}:{question}".encode()).hexdigest())
        others = [a for a in self._answer_pool() if a.lower() != gold.strip().lower()]
        options = rng.sample(others, self.n_choices - 1) + [gold.strip()]
        rng.shuffle(options)
        return options, chr(65 + options.index(gold.strip()))

    def _as_choice(self, item: Item) -> Item:
        options, letter = self._options(item.question, item.answer)
        return Item(id=item.id, task=item.task, question=item.question, answer=letter, choices=tuple(options),
                    meta={**item.meta, "rg_answer": item.answer})

    def answer_format(self) -> str:
        if self.n_choices:
            return 'End with the letter of the correct option in the form "Action: Finish[B]".'
        return super().answer_format()

    def fewshot(self) -> list[tuple[str, str]]:
        """The task's worked examples (`reflectevo/resources/fewshot/rg__<generator>.yaml` or the
        `fewshot` option); without a file, one item of a separate stream with its answer only. Built once
        per task object (every prompt shows them)."""
        if "_fewshot" not in self.__dict__:
            self.__dict__["_fewshot"] = tuple(self._build_fewshot())
        return list(self.__dict__["_fewshot"])

    def _build_fewshot(self) -> list[tuple[str, str]]:
        if self.fewshot_file is not None:
            shots = load_fewshot(str(self.fewshot_file), self.name)
            if not self.n_choices:
                return [(q, f"Thought: {t}\nAction: Finish[{a}]") for q, t, a in shots]
            out = []
            for q, t, a in shots:  # the options are part of the example's question text
                options, letter = self._options(q, a)
                listed = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
                out.append((f"{q}\n{listed}", f"Thought: {t} That is option {letter}.\nAction: Finish[{letter}]"))
            return out
        e = self._dataset(1, _FEWSHOT_STREAM)[0]
        return [(e["question"], f"Thought: The answer is {e['answer']}.\nAction: Finish[{e['answer']}]")]

    @functools.cached_property
    def _scorer(self):
        return self._dataset(1, 0)

    def verify(self, completion: str, item: Item) -> Verdict:
        pred = self.extract(completion)
        if pred is None:
            return Verdict(False, 0.0, None, "no answer found")
        if self.n_choices:
            from reflectevo.tasks.answers import mc_letter

            letter = mc_letter(pred, len(item.choices or ()) or self.n_choices, list(item.choices or ()))
            if letter is None:
                return Verdict(False, 0.0, pred, "not an option letter")
            ok = letter == item.answer
            return Verdict(ok, float(ok), letter)
        entry = {"question": item.question, "answer": item.answer, "metadata": item.meta.get("rg_metadata", {})}
        try:
            score = float(self._scorer.score_answer(pred, entry))
        except Exception as e:  # a scorer crash on junk output is a wrong answer, not a pipeline crash
            return Verdict(False, 0.0, pred, f"scorer error: {type(e).__name__}: {e}")
        return Verdict(score >= 1.0, score, pred)
