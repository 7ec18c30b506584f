"""Convert between the published ReflectEvo formats and ours (see docs/compat.md for the field map).

Kinds:

- ``raw``   their ``run/run.py`` output (and ``example_Reflection_raw.jsonl``, which uses the older
            names ``reasoning``/``trial``/``reasoning_prompt`` and is pretty-printed JSON objects
            one after another, not JSONL) <-> our episode records (``data/raw/episodes-*`` shards);
- ``dplus`` their D+  <-> our D+ rows (``dplus_*.jsonl``);
- ``dpm``   their D±  <-> our D± rows (``dpm_*.jsonl``, ``chosen``/``rejected`` sub-objects);
- ``dpref`` their Dpref (the D± schema) <-> our Dpref rows (the D± row shape plus ``judge``, null on
            import).

Principles:

- every field with a counterpart is mapped; the rest of theirs goes under ``meta.reflectevo`` on
  import, together with the original key order and names, so export(import(x)) reproduces x;
- ours without a counterpart (token counts, scores, sampling, demand ids, hashes, ``judge``...) are
  left out on export;
- their trial reasoning ends in the verdict ("\\nObservation: Answer is INCORRECT"): it is split off
  into ``meta`` on import (our completions are model text only) and put back (or synthesised from
  the correctness flag) on export;
- prompts rebuilt *after* generation (their raw ``reason_prompt``/``reflection_prompt`` and the D+
  ``reason_prompt[1]``, which hold the model's own trajectory between ``(BEGIN)`` and ``(END)``) are
  never used as our pre-generation prompts: they are kept under ``meta`` with a note;
- MC gold letters are lowercase in theirs, upper-case in ours;
- text is never altered (the Dpref example's mojibake "鈥檚" is kept and only flagged in ``meta``).

Readers accept JSONL and concatenated (pretty-printed) JSON objects alike; every error is a single
``ReflectEvoError`` line naming the file and line (and byte offset) or the missing field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from reflectevo.errors import ReflectEvoError, unknown
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


# ---------------------------------------------------------------------------------------------------
# reading


def iter_json_objects(path: str | Path, block: int = 1 << 22) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line where the object starts, object) for JSONL or concatenated pretty-printed JSON.

    Streams: reads `block` bytes at a time, so a multi-gigabyte file (the published 460K set) needs
    memory for about one block and one object. A bad object raises ReflectEvoError naming ``file:line``
    of the object that failed, its byte offset, and where inside it the parser stopped.
    """
    import codecs

    path = Path(path)
    if not path.is_file():
        raise ReflectEvoError(f"{path}: file not found")
    dec = json.JSONDecoder()
    ws = re.compile(r"[\s\ufeff]*")
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, line, consumed, eof = "", 0, 1, 0, False   # consumed: file bytes before `buf`
    with path.open("rb") as fh:

        def fill() -> None:
            nonlocal buf, pos, consumed, eof
            consumed += len(buf[:pos].encode("utf-8"))
            buf, pos = buf[pos:], 0
            chunk = fh.read(block)
            eof = not chunk
            try:
                buf += utf8.decode(chunk, final=eof)
            except UnicodeDecodeError as e:
                bad_line = line + buf.count("\n") + chunk[:e.start].count(b"\n")
                raise ReflectEvoError(f"{path}:{bad_line}: not UTF-8 text (byte offset "
                                      f"{consumed + len(buf.encode('utf-8')) + e.start})") from None

        while True:
            end_ws = ws.match(buf, pos).end()  # type: ignore[union-attr]
            line += buf.count("\n", pos, end_ws)
            pos = end_ws
            if pos >= len(buf):
                if eof:
                    return
                fill()
                continue
            try:
                obj, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if not eof:            # perhaps only cut off by the block: read on and try again
                    fill()
                    continue
                start_byte = consumed + len(buf[:pos].encode("utf-8"))
                file_line = line - buf.count("\n", 0, pos) + e.lineno - 1   # e.lineno counts from buf[0]
                raise ReflectEvoError(f"{path}:{line}: malformed JSON in the object starting at byte offset "
                                      f"{start_byte}: {e.msg} (line {file_line}, column {e.colno})") from None
            if not isinstance(obj, dict):
                if end >= len(buf) and not eof:   # a bare number may go on in the next block
                    fill()
                    continue
                raise ReflectEvoError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
            yield line, obj
            line += buf.count("\n", pos, end)
            pos = end


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


# ---------------------------------------------------------------------------------------------------
# raw: their run.py records <-> our episodes

PRE_GENERATION_MARK = "prompts_before_generation"
_RAW_TOP = ("id", "question", "answer", "test_list", "output", PRE_GENERATION_MARK)
_OUT_NAMES = {  # field -> accepted names, the run.py (new) name first
    "generated_answer": ("generated_answer",),
    "reflections": ("reflections",),
    "scratchpad": ("scratchpad", "reasoning"),
    "is_correct": ("is_correct",),
    "error": ("error",),
    "trail": ("trail", "trial"),
    "reasoning_source": ("reasoning_source",),
    "reflection_source": ("reflection_source",),
    "reason_prompt": ("reason_prompt", "reasoning_prompt"),
    "reflection_prompt": ("reflection_prompt",),
}
_OUT_ALIAS = {alias: field for field, names in _OUT_NAMES.items() for alias in names}


def _import_output(o: Any, where: str, position: int, trusted_prompts: bool
                   ) -> tuple[dict[str, Any], str, str | None, dict[str, Any]]:
    """One ``output[k]`` -> (our trial record, reflection text, reflection prompt, meta for the entry).

    run.py stores prompts rebuilt after the step (they hold the model's own output), so its prompts go
    to meta; only records we exported (marked ``prompts_before_generation``) give prompts back.
    """
    if not isinstance(o, dict):
        raise ReflectEvoError(f"{where}: expected an object, got {type(o).__name__}")
    answer, _ = _get(o, _OUT_NAMES["generated_answer"], where)
    correct = _bool(_get(o, _OUT_NAMES["is_correct"], where)[0], "is_correct", where)
    reasoning, rname = _get(o, _OUT_NAMES["scratchpad"], where)
    reasoning = _str(reasoning, rname or "scratchpad", where)
    trail, _ = _get(o, _OUT_NAMES["trail"], where, required=False)
    expected = 1 if position == 0 else 2
    if trail is not None and trail != expected:
        raise ReflectEvoError(f"{where}: trail={trail!r}, expected {expected} "
                              f"(output[0] is trial 1, output[1:] are trial 2)")
    reflections, _ = _get(o, _OUT_NAMES["reflections"], where, required=False)
    reflections = reflections if reflections is not None else []
    if not isinstance(reflections, list):
        reflections = [reflections]
    completion, tail = split_observation(reasoning)
    meta: dict[str, Any] = {"keys": list(o), "observation": tail}
    if len(reflections) > 1:
        meta["reflections"] = reflections
    for field in ("reasoning_source", "reflection_source"):
        if field in o:
            meta[field] = o[field]
    prompts: dict[str, Any] = {}
    for field in ("reason_prompt", "reflection_prompt"):
        value, name = _get(o, _OUT_NAMES[field], where, required=False)
        if name is not None:
            prompts[field] = value
    if not trusted_prompts:
        meta.update(prompts)
        if prompts:
            meta["prompt_note"] = LEAK_NOTE
        prompts = {}
    extra = {k: v for k, v in o.items() if k not in _OUT_ALIAS}
    if extra:
        meta["extra"] = extra
    error, _ = _get(o, _OUT_NAMES["error"], where, required=False)
    trial = {"prompt": prompts.get("reason_prompt"), "completion": completion, "n_prompt_tokens": None, "n_new_tokens": None,
             "extracted": answer, "correct": correct, "score": 1.0 if correct else 0.0, "error": error}
    text = reflections[-1] if reflections else ""
    return trial, str(text), prompts.get("reflection_prompt"), meta


def raw_to_episode(rec: dict[str, Any], where: str, task: str) -> dict[str, Any]:
    """One record of their run.py output -> one of our episodes."""
    rid, _ = _get(rec, ("id",), where)
    question = _str(_get(rec, ("question",), where)[0], "question", where)
    gold = _get(rec, ("answer",), where)[0]
    if isinstance(gold, dict) and "answer" in gold:  # BIG-bench golds may be {'answer': ...}
        gold = gold["answer"]
    gold = _str(gold, "answer", where)
    outputs, _ = _get(rec, ("output",), where)
    if not isinstance(outputs, list) or not outputs:
        raise ReflectEvoError(f"{where}: field 'output' must be a non-empty list (output[0] is trial 1)")
    tests, _ = _get(rec, ("test_list",), where, required=False)
    answer, choices = _import_answer(gold, question)
    item_id = str(rid)
    item = _item_dict(item_id, task, question, answer, choices, list(tests) if tests is not None else None)
    episode_id = _h({"source": SOURCE, "task": task, "id": rid, "question": question})[:20]

    trusted = rec.get(PRE_GENERATION_MARK) is True
    parsed = [_import_output(o, f"{where}: output[{k}]", k, trusted) for k, o in enumerate(outputs)]
    trial1, _, _, m1 = parsed[0]
    source = m1.get("reasoning_source")
    samples = []
    for j, (t2, text, rprompt, _m) in enumerate(parsed[1:]):
        samples.append({"sample_id": f"{episode_id}-{j}", "sample_idx": j, "demand_id": None,
                        "reflection": {"prompt": rprompt, "text": text, "n_new_tokens": None, "sampling": None},
                        "trial2": t2})
    meta: dict[str, Any] = {"id": rid, "answer": gold if gold != answer else None, "keys": list(rec),
                            "outputs": [m for *_, m in parsed]}
    extra = {k: v for k, v in rec.items() if k not in _RAW_TOP}
    if extra:
        meta["extra"] = extra
    _flag_mojibake(meta, question)
    return {
        "episode_id": episode_id, "item_id": item_id, "task": task, "item_hash": Item.from_dict(item).text_hash(),
        "model": {"preset": None, "source": source, "revision": None}, "dtype": None, "resolved_dtype": None,
        "prompt_version": None, "gen": None, "item": item, "trial1": trial1, "samples": samples,
        "meta": {SOURCE: meta},
    }


def _export_output(trial: dict[str, Any], reflection: str | None, reflection_prompt: str | None, trail: int,
                   source: Any, meta: dict[str, Any] | None, where: str) -> dict[str, Any]:
    meta = meta or {}
    completion = _str(_get(trial, ("completion",), where)[0], "completion", where)
    correct = bool(_get(trial, ("correct",), where)[0])
    error = trial.get("error")
    tail = meta["observation"] if "observation" in meta else observation(correct, error)
    if "reflections" in meta and meta["reflections"] and meta["reflections"][-1] == reflection:
        reflections = meta["reflections"]
    else:
        reflections = [] if reflection is None else [reflection]
    values: dict[str, Any] = {
        "generated_answer": trial.get("extracted") if trial.get("extracted") is not None else "",
        "reflections": reflections,
        "scratchpad": completion + tail,
        "is_correct": correct,
        "error": error,
        "trail": trail,
        "reasoning_source": meta.get("reasoning_source", source),
        "reflection_source": meta.get("reflection_source", source),
        "reason_prompt": trial.get("prompt") if trial.get("prompt") is not None else meta.get("reason_prompt"),
        "reflection_prompt": reflection_prompt if reflection_prompt is not None else meta.get("reflection_prompt"),
    }
    extra = meta.get("extra") or {}
    keys = meta.get("keys")
    if not keys:  # our own episode: the run.py layout
        return values
    return {k: (values[_OUT_ALIAS[k]] if k in _OUT_ALIAS else extra.get(k)) for k in keys}


def episode_to_raw(ep: dict[str, Any], where: str) -> dict[str, Any]:
    """One of our episodes -> one record of their run.py output (trial 1, then one entry per sample)."""
    item, _ = _get(ep, ("item",), where)
    trial1, _ = _get(ep, ("trial1",), where)
    samples, _ = _get(ep, ("samples",), where)
    question = _str(_get(item, ("question",), f"{where}: item")[0], "question", where)
    answer = _str(_get(item, ("answer",), f"{where}: item")[0], "answer", where)
    meta = ((ep.get("meta") or {}).get(SOURCE)) or {}
    outs_meta: list[dict[str, Any]] = meta.get("outputs") or []
    model = ep.get("model") or {}
    source = model.get("source") or model.get("preset") if isinstance(model, dict) else model

    def om(k: int) -> dict[str, Any] | None:
        return outs_meta[k] if k < len(outs_meta) else None

    output = [_export_output(trial1, None, None, 1, source, om(0), f"{where}: trial1")]
    for j, s in enumerate(samples, start=1):
        w = f"{where}: samples[{j - 1}]"
        refl, _ = _get(s, ("reflection",), w)
        t2, _ = _get(s, ("trial2",), w)
        output.append(_export_output(t2, _get(refl, ("text",), f"{w}.reflection")[0], refl.get("prompt"), 2,
                                     source, om(j), w))
    values: dict[str, Any] = {
        "id": meta["id"] if "id" in meta else ep.get("item_id", item.get("id")),
        "question": _export_question(question, item.get("choices")),
        "answer": _export_answer(answer, item.get("choices"), meta.get("answer")),
        "test_list": item.get("tests"),
        "output": output,
    }
    keys = meta.get("keys")
    if not keys:
        out = {k: values[k] for k in ("question", "answer", "id")}
        if item.get("tests") is not None:
            out["test_list"] = item["tests"]
        out["output"] = output
        out[PRE_GENERATION_MARK] = True  # our prompts are stored before generation: safe to import back
        return out
    extra = meta.get("extra") or {}
    return {k: (values[k] if k in values else extra.get(k)) for k in keys}


# ---------------------------------------------------------------------------------------------------
# curated sets: their D+ / D± / Dpref <-> our rows

_DPLUS_FIELDS = ("id", "question", "answer", "first_trial_reasoning", "first_trial_answer", "second_trial_reasoning",
                 "second_reason", "second_trial_answer", "reflections", "reason_prompt", "reflect_prompt")
_PAIR_FIELDS = ("id", "question", "answer", "first_trial_reasoning", "first_trial_answer",
                "reflection_chosen", "second_trial_reasoning_chosen", "second_trial_answer_chosen",
                "reflection_rejected", "second_trial_reasoning_rejected", "second_trial_answer_rejected",
                "reason_prompt", "reflection_prompt")


def _common_in(rec: dict[str, Any], where: str, task: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Item and trial-1 fields shared by D+ and D± rows (curation.py's `_common` order)."""
    rid, _ = _get(rec, ("id",), where)
    question = _str(_get(rec, ("question",), where)[0], "question", where)
    gold = _str(_get(rec, ("answer",), where)[0], "answer", where)
    answer, choices = _import_answer(gold, question)
    reasoning = _str(_get(rec, ("first_trial_reasoning",), where)[0], "first_trial_reasoning", where)
    t1, tail = split_observation(reasoning)
    t1_answer, _ = _get(rec, ("first_trial_answer",), where, required=False)
    prompt, pname = _get(rec, ("reason_prompt",), where, required=False)
    t1_prompt: str | None = None
    if isinstance(prompt, list):
        meta["reason_prompt"] = prompt
        first = prompt[0] if prompt else None
        if isinstance(first, str) and not prompt_leaks(first):
            t1_prompt = first
    elif isinstance(prompt, str):
        if prompt_leaks(prompt):
            meta["reason_prompt"] = prompt
            meta["prompt_note"] = LEAK_NOTE
        else:
            t1_prompt = prompt
    elif pname is not None:
        meta["reason_prompt"] = prompt
    meta.update({"id": rid, "answer": gold if gold != answer else None, "trial1_observation": tail,
                 "keys": list(rec)})
    _flag_mojibake(meta, question)
    item_id = derive_item_id(question)
    return {"item_id": item_id, "task": task, "question": question, "choices": choices, "answer": answer,
            "trial1_prompt": t1_prompt, "trial1": t1, "trial1_answer": t1_answer, "model": None,
            "prompt_version": None, "episode_id": None}


def _side_in(item_id: str, reflection: str, reflection_prompt: str | None, reasoning: str, answer: Any,
             default_correct: bool, meta: dict[str, Any], prefix: str) -> dict[str, Any]:
    trial2, tail = split_observation(reasoning)
    meta[f"{prefix}observation"] = tail
    said = verdict_of(tail)
    return {"sample_id": f"{item_id}-r{hashlib.sha256(reflection.encode()).hexdigest()[:10]}", "demand_id": None,
            "reflection_prompt": reflection_prompt, "reflection": reflection, "trial2_prompt": None,
            "trial2": trial2, "trial2_answer": answer, "trial2_correct": default_correct if said is None else said}


def dplus_in(rec: dict[str, Any], where: str, task: str) -> dict[str, Any]:
    """Their D+ row -> our D+ row. ``reason_prompt[1]`` (leaks the trial-2 answer) stays in meta."""
    meta: dict[str, Any] = {}
    common = _common_in(rec, where, task, meta)
    reflection = _str(_get(rec, ("reflections",), where)[0], "reflections", where)
    reasoning, rname = _get(rec, ("second_trial_reasoning", "second_reason"), where)
    reasoning = _str(reasoning, rname or "second_trial_reasoning", where)
    rprompt, _ = _get(rec, ("reflect_prompt", "reflection_prompt"), where, required=False)
    answer2, _ = _get(rec, ("second_trial_answer",), where, required=False)
    if isinstance(meta.get("reason_prompt"), list) and len(meta["reason_prompt"]) > 1:
        meta["prompt_note"] = "reason_prompt[1] is the trial-2 prompt " + LEAK_NOTE
    side = _side_in(common["item_id"], reflection, rprompt, reasoning, answer2, True, meta, "trial2_")
    extra = {k: v for k, v in rec.items() if k not in _DPLUS_FIELDS and k != "reflection_prompt"}
    if extra:
        meta["extra"] = extra
    return {"id": str(meta["id"]), **common, **side, "meta": {SOURCE: meta}}


def pair_in(rec: dict[str, Any], where: str, task: str, kind: Kind) -> dict[str, Any]:
    """Their D± / Dpref row -> our D± / Dpref row (Dpref: ``judge`` null, their judge is not shipped)."""
    meta: dict[str, Any] = {}
    common = _common_in(rec, where, task, meta)
    rprompt, _ = _get(rec, ("reflection_prompt",), where, required=False)
    sides = {}
    for side in ("chosen", "rejected"):
        refl = _str(_get(rec, (f"reflection_{side}",), where)[0], f"reflection_{side}", where)
        reasoning = _str(_get(rec, (f"second_trial_reasoning_{side}",), where)[0],
                         f"second_trial_reasoning_{side}", where)
        answer2, _ = _get(rec, (f"second_trial_answer_{side}",), where, required=False)
        default = side == "chosen" or kind == "dpref"
        sides[side] = _side_in(common["item_id"], refl, rprompt, reasoning, answer2, default, meta, f"{side}_")
    extra = {k: v for k, v in rec.items() if k not in _PAIR_FIELDS}
    if extra:
        meta["extra"] = extra
    row: dict[str, Any] = {"id": str(meta["id"]), **common, **sides}
    if kind == "dpref":
        row["judge"] = None
    row["meta"] = {SOURCE: meta}
    return row


def _common_out(row: dict[str, Any], where: str, meta: dict[str, Any]) -> dict[str, Any]:
    question = _str(_get(row, ("question",), where)[0], "question", where)
    answer = _str(_get(row, ("answer",), where)[0], "answer", where)
    t1 = _str(_get(row, ("trial1",), where)[0], "trial1", where)
    choices = row.get("choices")
    tail = meta["trial1_observation"] if "trial1_observation" in meta else observation(False)
    return {"id": meta["id"] if "id" in meta else _get(row, ("id",), where)[0],
            "question": _export_question(question, choices),
            "answer": _export_answer(answer, choices, meta.get("answer")),
            "first_trial_reasoning": t1 + tail,
            "first_trial_answer": row.get("trial1_answer") if row.get("trial1_answer") is not None else ""}


def _reasoning_out(side: dict[str, Any], where: str, meta: dict[str, Any], prefix: str) -> str:
    t2 = _str(_get(side, ("trial2",), where)[0], "trial2", where)
    key = f"{prefix}observation"
    return t2 + (meta[key] if key in meta else observation(bool(side.get("trial2_correct", True))))


def _ordered(values: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    keys = meta.get("keys")
    if not keys:
        return values
    extra = meta.get("extra") or {}
    return {k: (values[k] if k in values else extra.get(k)) for k in keys}


def dplus_out(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Our D+ row -> their D+ row (``reason_prompt`` = [trial-1 prompt, trial-2 prompt])."""
    meta = ((row.get("meta") or {}).get(SOURCE)) or {}
    values = _common_out(row, where, meta)
    reflection = _str(_get(row, ("reflection",), where)[0], "reflection", where)
    original = meta.get("reason_prompt") if isinstance(meta.get("reason_prompt"), list) else None
    t1p = row.get("trial1_prompt")
    t2p = row.get("trial2_prompt")
    if original is not None:
        prompts = list(original)
        if t1p is not None and prompts:
            prompts[0] = t1p
        if t2p is not None and len(prompts) > 1:
            prompts[1] = t2p
    else:
        prompts = [t1p or "", t2p or ""]
    values.update({
        "second_trial_reasoning": _reasoning_out(row, where, meta, "trial2_"),
        "second_trial_answer": row.get("trial2_answer") if row.get("trial2_answer") is not None else "",
        "reflections": reflection,
        "reason_prompt": prompts,
        "reflect_prompt": row.get("reflection_prompt") or "",
    })
    if meta.get("keys") and "second_reason" in meta["keys"]:
        values["second_reason"] = values.pop("second_trial_reasoning")
    if meta.get("keys") and "reflection_prompt" in meta["keys"]:
        values["reflection_prompt"] = values.pop("reflect_prompt")
    return _ordered(values, meta)


def pair_out(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Our D± / Dpref row -> their D± / Dpref row (one reflection prompt per row: the chosen side's)."""
    meta = ((row.get("meta") or {}).get(SOURCE)) or {}
    values = _common_out(row, where, meta)
    for side in ("chosen", "rejected"):
        s, _ = _get(row, (side,), where)
        w = f"{where}: {side}"
        values[f"reflection_{side}"] = _str(_get(s, ("reflection",), w)[0], "reflection", w)
        values[f"second_trial_reasoning_{side}"] = _reasoning_out(s, w, meta, f"{side}_")
        values[f"second_trial_answer_{side}"] = s.get("trial2_answer") if s.get("trial2_answer") is not None else ""
    original = meta.get("reason_prompt")
    values["reason_prompt"] = row.get("trial1_prompt") if row.get("trial1_prompt") is not None else (
        original if original is not None else "")
    values["reflection_prompt"] = row["chosen"].get("reflection_prompt") or ""
    return _ordered(values, meta)


# ---------------------------------------------------------------------------------------------------
# entry points


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise unknown("kind", kind, KINDS)
    return kind  # type: ignore[return-value]


def import_records(path: str | Path, kind: str, task: str | None = None) -> Iterator[dict[str, Any]]:
    """Read their file of `kind` and yield our records (episodes for raw, rows otherwise)."""
    k = _check_kind(kind)
    name = task_name(task, path)
    for line, rec in iter_json_objects(path):
        where = f"{path}:{line}"
        if k == "raw":
            yield raw_to_episode(rec, where, name)
        elif k == "dplus":
            yield dplus_in(rec, where, name)
        else:
            yield pair_in(rec, where, name, k)


def _check_source_meta(meta: Any, where: str) -> None:
    """The imported record's metadata we keep under meta.reflectevo (keys, extra fields, verdict tails, the
    outputs' own metadata), as far as exporting reads it."""
    if not isinstance(meta, dict):
        raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}' must be an object, got {type(meta).__name__}")
    for key, value in meta.items():
        if key.endswith("observation") and not isinstance(value, str):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.{key}' must be a string")
        if key == "keys" and not (value is None or isinstance(value, list) and all(isinstance(k, str) for k in value)):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.keys' must be a list of strings")
        if key in ("extra",) and not isinstance(value, (dict, type(None))):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.{key}' must be an object")
        if key == "reflections" and not isinstance(value, (list, type(None))):
            raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.reflections' must be a list")
        if key == "outputs":
            if not isinstance(value, (list, type(None))):
                raise ReflectEvoError(f"{where}: field 'meta.{SOURCE}.outputs' must be a list")
            for o in value or []:
                if o is not None:
                    _check_source_meta(o, where)


def _check_ours(row: dict[str, Any], kind: str, where: str) -> None:
    """Our record of `kind` (an episode, a D+ / D± / Dpref row), its types as export reads them."""
    holder = row.get("item") if kind == "raw" and isinstance(row.get("item"), dict) else row
    choices = holder.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise ReflectEvoError(f"{where}: field 'choices' must be a list of strings or null")
    if kind == "raw":
        if row.get("samples") is not None and not isinstance(row["samples"], list):
            raise ReflectEvoError(f"{where}: field 'samples' must be a list")
    else:
        for key in ("trial1_prompt", "trial2_prompt", "reflection_prompt"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ReflectEvoError(f"{where}: field {key!r} must be a string or null")
        for side in ("chosen", "rejected") if kind != "dplus" else ():
            if side not in row:
                continue   # named as missing where it is read
            if not isinstance(row[side], dict):
                raise ReflectEvoError(f"{where}: field {side!r} must be an object")
            if row[side].get("reflection_prompt") is not None and not isinstance(row[side]["reflection_prompt"], str):
                raise ReflectEvoError(f"{where}: field '{side}.reflection_prompt' must be a string or null")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ReflectEvoError(f"{where}: field 'meta' must be an object or null")
    if (meta or {}).get(SOURCE) is not None:
        _check_source_meta(meta[SOURCE], where)


def export_records(path: str | Path, kind: str) -> Iterator[dict[str, Any]]:
    """Read our file of `kind` and yield their records."""
    k = _check_kind(kind)
    p = Path(path)
    rows = (iter_episodes_where(p) if k == "raw" and (p.is_dir() or p.name.endswith(".parquet"))
            else ((f"{p}:{line}", row) for line, row in iter_json_objects(p)))
    for where, row in rows:
        _check_ours(row, k, where)
        if k == "raw":
            yield episode_to_raw(row, where)
        elif k == "dplus":
            yield dplus_out(row, where)
        else:
            yield pair_out(row, where)


def convert(src: str | Path, dst: str | Path, kind: str, direction: Literal["from", "to"],
            task: str | None = None) -> int:
    """Convert a whole file; the output is written atomically only after every record converted."""
    from reflectevo.jsonio import write_jsonl

    if Path(src).resolve() == Path(dst).resolve():
        raise ReflectEvoError(f"{dst}: output must differ from the input")
    # streams record by record into a temporary file that replaces `dst` only at the end
    return write_jsonl(dst, import_records(src, kind, task) if direction == "from" else export_records(src, kind))


# ---------------------------------------------------------------------------------------------------
# results for `reflectevo metrics`

Format = Literal["reflectevo", "ours"]
Protocol = Literal["oracle", "intrinsic"]


def detect_format(rec: dict[str, Any]) -> tuple[Format, str]:
    """(format, what) for one record: their raw results, our predictions or our episodes."""
    if "system" in rec and "t1_correct" in rec:   # first: a one-stage prediction has an `output` field too
        return "ours", "predictions"
    if "output" in rec:
        return "reflectevo", "raw"
    if "trial1" in rec and "samples" in rec:
        return "ours", "episodes"
    raise ReflectEvoError("not a results file: expected ReflectEvo raw records ('output'), our predictions "
                          "('system', 't1_correct') or our episodes ('trial1', 'samples')")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        from reflectevo.shards import SHARD_GLOB, shard_files

        found = shard_files(path)
        if not found:
            raise ReflectEvoError(f"{path}: no {SHARD_GLOB} shards in this folder")
        return found
    return [path]


def iter_episodes_where(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, episode) from a raw folder's shards or one Parquet shard (reflectevo.shards)."""
    from reflectevo.shards import iter_episodes

    return iter_episodes(path, where=True, journals=False)


def _records(f: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of one results file, streamed: a Parquet episode shard or JSON objects."""
    if f.name.endswith(".parquet"):
        from reflectevo.shards import iter_episodes

        yield from iter_episodes(f, where=True)
        return
    for line, rec in iter_json_objects(f):
        yield f"{f}:{line}", rec


def result_rows(path: str | Path, fmt: str | None = None, task: str | None = None
                ) -> tuple[Format, str, list[dict[str, Any]]]:
    """Per-item rows ``{system, task, t1, t2_first}`` (``t2_first`` None when there was no retry).

    reflectevo raw: t1 = output[0].is_correct, t2_first = output[1].is_correct (later entries ignored,
    as count.py does); our predictions: t1_correct / t2_correct per system; our episodes: t1 =
    trial1.correct, t2_first = the first sample's trial2.correct.
    """
    if fmt is not None and fmt not in ("reflectevo", "ours"):
        raise unknown("format", fmt, ("reflectevo", "ours"))
    rows: list[dict[str, Any]] = []
    detected: tuple[Format, str] | None = None
    for f in _files(Path(path)):
        name = task_name(task, f)
        for where, rec in _records(f):
            try:
                this = detect_format(rec)
            except ReflectEvoError as e:
                raise ReflectEvoError(f"{where}: {e}") from None
            if fmt is not None and this[0] != fmt:
                raise ReflectEvoError(f"{where}: looks like {this[0]!r} {this[1]}, not --format {fmt}")
            if detected is not None and this != detected:
                raise ReflectEvoError(f"{where}: mixes {this[1]} with {detected[1]} records")
            detected = this
            if this[1] == "raw":
                outputs, _ = _get(rec, ("output",), where)
                if not isinstance(outputs, list) or not outputs:
                    raise ReflectEvoError(f"{where}: field 'output' must be a non-empty list")
                t1 = _bool(_get(outputs[0], ("is_correct",), f"{where}: output[0]")[0], "is_correct", where)
                t2 = (_bool(_get(outputs[1], ("is_correct",), f"{where}: output[1]")[0], "is_correct", where)
                      if len(outputs) > 1 else None)
                rows.append({"system": None, "task": name, "t1": t1, "t2_first": t2})
            elif this[1] == "predictions":
                t1 = _bool(rec["t1_correct"], "t1_correct", where)
                t2 = _get(rec, ("t2_correct",), where)[0]
                item_id = rec.get("item_id")
                if not isinstance(item_id, (str, int, type(None))) or isinstance(item_id, bool):
                    raise ReflectEvoError(f"{where}: field 'item_id' must be a string, got {type(item_id).__name__}")
                rows.append({"system": _str(rec["system"], "system", where), "item_id": item_id,
                             "task": _str(_get(rec, ("task",), where)[0], "task", where), "t1": t1,
                             "t2_first": None if t2 is None else _bool(t2, "t2_correct", where)})
            else:
                t1 = _bool(_get(rec["trial1"], ("correct",), f"{where}: trial1")[0], "trial1.correct", where)
                if not isinstance(rec["samples"], list):
                    raise ReflectEvoError(f"{where}: field 'samples' must be a list")
                for j, smp in enumerate(rec["samples"]):
                    idx = _get(smp, ("sample_idx",), f"{where}: samples[{j}]", required=False)[0]
                    if not isinstance(idx, (int, type(None))):
                        raise ReflectEvoError(f"{where}: field 'samples[{j}].sample_idx' must be an integer")
                samples = sorted(rec["samples"], key=lambda s: s.get("sample_idx") or 0)
                t2 = _bool(_get(_get(samples[0], ("trial2",), f"{where}: samples[0]")[0], ("correct",),
                                f"{where}: samples[0].trial2")[0], "samples[0].trial2.correct", where) if samples else None
                rows.append({"system": None, "task": _str(_get(rec, ("task",), where)[0], "task", where),
                             "t1": t1, "t2_first": t2})
    if detected is None:
        raise ReflectEvoError(f"{path}: no records")
    return detected[0], detected[1], rows


def protocol_pairs(rows: Iterable[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Apply the protocol: rows with ``task``, ``t1_correct`` and ``t2_correct`` for metrics.by_task.

    oracle (count.py): t2 = t1 or t2_first (a retry only happens after a wrong t1, so a right t1 stays
    right; no retry counts as wrong). intrinsic: t2 = t2_first when there was a second answer, even
    after a right t1 (so c->i transitions show), else t1.
    """
    if protocol not in ("oracle", "intrinsic"):
        raise unknown("protocol", protocol, ("oracle", "intrinsic"))
    out = []
    for r in rows:
        t1, t2f = r["t1"], r["t2_first"]
        t2 = (t1 or bool(t2f)) if protocol == "oracle" else (t1 if t2f is None else t2f)
        out.append({"system": r["system"], "item_id": r.get("item_id"), "task": r["task"], "t1_correct": t1,
                    "t2_correct": t2})
    return out


def count_py(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What ReflectEvo's eval/count.py prints for these rows (its four keys, percent strings)."""
    n = len(rows)
    first = sum(1 for r in rows if r["t1"])
    second = sum(1 for r in rows if not r["t1"] and r["t2_first"])
    return {"first_output_correct": first, "acc@t1": f"{(first / n * 100) if n else 0:.2f}%",
            "second_output_correct": second, "acc@t2": f"{((first + second) / n * 100) if n else 0:.2f}%"}
