"""Field rules shared by the conversions: names, ids, task names, inline options, the verdict line their
reasoning ends with."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from reflectevo.errors import ReflectEvoError
from reflectevo.tasks.base import Item

KINDS: tuple[str, ...] = ("raw", "dplus", "dpm", "dpref")
Kind = Literal["raw", "dplus", "dpm", "dpref"]
SOURCE = "reflectevo"
UNKNOWN_TASK = "reflectevo/unknown"

LEAK_NOTE = ("rebuilt by ReflectEvo after generation: holds the model's own trajectory and verdict between "
             "(BEGIN) and (END) (protocol §9.12), so it is not used as our pre-generation prompt")
MOJIBAKE_NOTE = "text carries GBK-decoded UTF-8 punctuation (e.g. '鈥檚' for '’s'); kept as is"

_DATASETS = ("bigbenchfree", "bigbench", "logiqa", "math", "mbpp", "hotpot")
_OBS = "\nObservation:"
_OPTION_LINE = re.compile(r"^\s*([A-J])\s*[.)]\s?(.*)$")
_MOJIBAKE = re.compile("[鈥锛銆]")


def _get(obj: dict[str, Any], names: Sequence[str], where: str, required: bool = True) -> tuple[Any, str | None]:
    """(value, the name it was found under); a required field that is absent names itself."""
    if not isinstance(obj, dict):
        raise ReflectEvoError(f"{where}: expected an object, got {type(obj).__name__}")
    for name in names:
        if name in obj:
            return obj[name], name
    if required:
        alt = f" (or {', '.join(repr(a) for a in names[1:])})" if len(names) > 1 else ""
        raise ReflectEvoError(f"{where}: missing field {names[0]!r}{alt}")
    return None, None


def _str(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise ReflectEvoError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _bool(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ReflectEvoError(f"{where}: field {name!r} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# small shared pieces


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def derive_item_id(question: str) -> str:
    """Stable item id from the question text (their curated rows carry row ids, not item ids)."""
    return "re-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def task_name(task: str | None, path: str | Path | None = None) -> str:
    """Our task name for their file: ``--task`` (``logiqa`` -> ``reflectevo/logiqa``; a name with a
    slash is kept), else the dataset prefix of their run.py file name, else ``reflectevo/unknown``."""
    if task:
        return task if "/" in task else f"{SOURCE}/{task.lower()}"
    if path is not None:
        stem = Path(path).name.lower()
        for ds in _DATASETS:
            if stem.startswith((ds + "_", ds + "-")):
                return f"{SOURCE}/{ds}"
    return UNKNOWN_TASK


def inline_choices(question: str) -> list[str] | None:
    """Options written at the end of the question as ``A. ...`` lines, in order A, B, C...; else None."""
    found: list[tuple[str, str]] = []
    for ln in reversed(question.rstrip().split("\n")):
        m = _OPTION_LINE.match(ln)
        if not m:
            if found:
                break
            continue
        found.append((m.group(1), m.group(2).strip()))
    found.reverse()
    labels = [lab for lab, _ in found]
    if not labels or labels != [chr(ord("A") + i) for i in range(len(labels))]:
        return None
    return [txt for _, txt in found]


def _import_answer(answer: str, question: str) -> tuple[str, list[str] | None]:
    """Their gold -> ours: an MC letter (options inline in the question) becomes upper-case."""
    choices = inline_choices(question)
    if choices and len(answer.strip()) == 1 and answer.strip().isalpha() \
            and ord(answer.strip().upper()) - ord("A") < len(choices):
        return answer.strip().upper(), choices
    return answer, None


def _export_answer(answer: str, choices: Sequence[str] | None, original: Any) -> Any:
    """Ours -> their gold: MC letters lowercase; an imported original is restored when it still matches."""
    if isinstance(original, str) and original.strip().upper() == str(answer).upper():
        return original
    if choices and len(answer) == 1 and answer.isalpha():
        return answer.lower()
    return answer


def _export_question(question: str, choices: Sequence[str] | None) -> str:
    """Their prompts show only `question`: append our `choices` as ``A. ...`` lines unless inline already."""
    if not choices or inline_choices(question) == list(choices):
        return question
    return question.rstrip("\n") + "\n" + "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def split_observation(reasoning: str) -> tuple[str, str]:
    """Their reasoning -> (model text, verdict tail starting at the last "\\nObservation:" or "")."""
    idx = reasoning.rfind(_OBS)
    if idx < 0:
        return reasoning, ""
    return reasoning[:idx], reasoning[idx:]


def observation(correct: bool, error: str | None = None) -> str:
    """The verdict tail their environments append (MBPP puts the error text first)."""
    verdict = "Answer is CORRECT" if correct else "Answer is INCORRECT"
    return f"{_OBS} {error}\n{verdict}" if error else f"{_OBS} {verdict}"


def verdict_of(tail: str) -> bool | None:
    """True / False when the verdict tail states it, None when there is none."""
    if "Answer is CORRECT" in tail:
        return True
    if "Answer is INCORRECT" in tail:
        return False
    return None


def prompt_leaks(prompt: str) -> bool:
    """True when a ReAct prompt's progress history between (BEGIN) and (END) is not empty."""
    b = prompt.find("(BEGIN)")
    e = prompt.find("(END)", b + 1) if b >= 0 else -1
    return e > b >= 0 and bool(prompt[b + len("(BEGIN)"):e].strip())


def _flag_mojibake(meta: dict[str, Any], *texts: str | None) -> None:
    if any(t and _MOJIBAKE.search(t) for t in texts):
        meta["mojibake"] = MOJIBAKE_NOTE


def _item_dict(item_id: str, task: str, question: str, answer: str, choices: list[str] | None,
               tests: list[str] | None) -> dict[str, Any]:
    return Item(id=item_id, task=task, question=question, answer=answer,
                choices=tuple(choices) if choices is not None else None,
                tests=tuple(tests) if tests is not None else None).to_dict()
