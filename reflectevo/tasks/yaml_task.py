"""A task declared in a small YAML file, without code.

    name: my-quiz                  # optional label (items carry the YAML path as their task)
    answer_type: choice            # choice | number | math | code | text
    source: quiz.jsonl             # one JSONL file for the `test` split (relative to the YAML file) ...
    splits: {train: a.jsonl, test: b.jsonl}   # ... or several named splits
    fields:                        # where each value is in a row (dotted paths reach nested keys)
      id: id                       # optional (default `id`); rows without one get "<split>-<line>"
      question: question
      answer: answer               # choice: a letter, an option index (int) or the option text
      choices: choices             # choice: the option texts (optional when listed in the question)
      tests: tests                 # code: assert statements
      setup: meta.test_setup_code  # code: optional setup run before the tests
    answer_format: ...             # optional: replaces the default instruction of the answer type
    timeout: 5                     # code: seconds per check

Full description: docs/tasks.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError, unknown
from reflectevo.tasks.answers import mc_letter
from reflectevo.tasks.base import Item
from reflectevo.tasks.typed import TypedTask, check_answer_type

_FIELDS = ("id", "question", "answer", "choices", "tests", "setup")
_KEYS = ("name", "answer_type", "source", "splits", "fields", "answer_format", "answer_stop", "trial_prefix", "fewshot",
         "timeout", "description")


def is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def _get(row: dict[str, Any], path: str) -> Any:
    cur: Any = row
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class YamlTask(TypedTask):
    """A generic task: JSONL rows mapped to items by the YAML file's `fields`."""

    def __init__(self, path: str | Path, **overrides: Any) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ReflectEvoError(f"task file {self.path} not found")
        from ruamel.yaml import YAML

        try:
            spec = YAML(typ="safe", pure=True).load(self.path.read_text())
        except Exception as e:
            raise ReflectEvoError(f"{self.path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(spec, dict):
            raise ReflectEvoError(f"{self.path}: expected a mapping at the top level")
        spec.update(overrides)
        for key in spec:
            if key not in _KEYS:
                raise unknown("key", key, _KEYS, str(self.path))
        self.name = str(path)  # what items record, so that get_task(item.task) finds this file again
        self.label = str(spec.get("name") or self.path.stem)
        self.answer_type = check_answer_type(str(spec.get("answer_type", "")), f"{self.path}: answer_type")
        if spec.get("timeout") is not None:
            self.timeout = float(spec["timeout"])
        self._format = spec.get("answer_format")
        self._stop = spec.get("answer_stop")
        self._prefix = spec.get("trial_prefix")
        self._fewshot = (self.path.parent / str(spec["fewshot"])) if spec.get("fewshot") else None
        if ("source" in spec) == ("splits" in spec):
            raise ReflectEvoError(f"{self.path}: give exactly one of `source` (one test split) or `splits`")
        raw_splits = {"test": spec["source"]} if "source" in spec else spec["splits"]
        if not isinstance(raw_splits, dict) or not raw_splits:
            raise ReflectEvoError(f"{self.path}: `splits` must map split names to JSONL paths")
        self.split_files = {str(k): (self.path.parent / str(v)) for k, v in raw_splits.items()}
        fields = spec.get("fields") or {}
        if not isinstance(fields, dict):
            raise ReflectEvoError(f"{self.path}: `fields` must be a mapping")
        for key in fields:
            if key not in _FIELDS:
                raise unknown("field", key, _FIELDS, f"{self.path}: fields")
        self.fields = {"id": "id", "question": "question", "answer": "answer", **{k: str(v) for k, v in fields.items()}}
        if self.answer_type == "code" and "tests" not in self.fields:
            self.fields["tests"] = "tests"
        self._cache: dict[str, list[Item]] = {}

    @property
    def splits(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.split_files)

    def answer_format(self) -> str:
        return str(self._format) if self._format is not None else super().answer_format()

    def answer_stop(self) -> str:
        return str(self._stop) if self._stop is not None else super().answer_stop()

    def trial_prefix(self) -> str:
        return str(self._prefix) if self._prefix is not None else super().trial_prefix()

    def fewshot(self) -> list[tuple[str, str]]:
        if self._fewshot is None:
            return super().fewshot()
        from reflectevo.tasks.fewshot import load_fewshot

        return [(q, f"Thought: {t}\n{self.gold_completion(Item('shot', self.name, q, a))}")
                for q, t, a in load_fewshot(str(self._fewshot), self.name)]

    def describe(self) -> dict[str, Any]:
        from reflectevo.tasks.reflectevo_tasks import _count_lines

        return {"source": {s: str(p) for s, p in self.split_files.items()},
                "sizes": {s: _count_lines(p) if p.exists() else None for s, p in self.split_files.items()}}

    def load(self, split: str, n: int = 0, seed: int = 0) -> list[Item]:
        from reflectevo.tasks.reflectevo_tasks import _subset

        if split not in self.split_files:
            raise unknown("split", split, self.splits, f"task {self.path}")
        if split not in self._cache:
            self._cache[split] = self._read(split)
        return _subset(self._cache[split], n, seed)

    def _read(self, split: str) -> list[Item]:
        from reflectevo.jsonio import iter_jsonl

        path = self.split_files[split]
        if not path.exists():
            raise ReflectEvoError(f"task {self.path}, split {split}: source file {path} not found")
        items = []
        for line, row in enumerate(iter_jsonl(path), start=1):
            where = f"{path}:{line}"
            get = {k: _get(row, v) for k, v in self.fields.items()}
            for need in ("question", "answer"):
                if get.get(need) is None:
                    raise ReflectEvoError(f"{where}: missing field {self.fields[need]!r} ({need})")
            choices = get.get("choices")
            if choices is not None and not isinstance(choices, list):
                raise ReflectEvoError(f"{where}: field {self.fields['choices']!r} must be a list")
            tests = get.get("tests")
            if self.answer_type == "code" and (not isinstance(tests, list) or not tests):
                raise ReflectEvoError(f"{where}: field {self.fields['tests']!r} must be a non-empty list of tests")
            answer = get["answer"]
            if self.answer_type == "choice":
                answer = self._letter(answer, choices, where)
            meta: dict[str, Any] = {}
            if get.get("setup"):
                meta["test_setup_code"] = str(get["setup"])
            iid = get.get("id")
            items.append(Item(id=str(iid) if iid is not None else f"{split}-{line}", task=self.name,
                              question=str(get["question"]), answer=str(answer),
                              choices=tuple(str(c) for c in choices) if choices else None,
                              tests=tuple(str(t) for t in tests) if tests else None, meta=meta))
        return items

    @staticmethod
    def _letter(answer: Any, choices: list[Any] | None, where: str) -> str:
        if isinstance(answer, int) and not isinstance(answer, bool):
            if choices is None or not 0 <= answer < len(choices):
                raise ReflectEvoError(f"{where}: option index {answer} out of range")
            return chr(65 + answer)
        letter = mc_letter(str(answer), len(choices) if choices else 26, [str(c) for c in choices or []])
        if letter is None:
            raise ReflectEvoError(f"{where}: answer {answer!r} is not an option letter, index or option text")
        return letter
