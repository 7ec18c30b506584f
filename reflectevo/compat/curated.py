"""Their D+ / D± / Dpref records <-> our curated rows."""

from __future__ import annotations

import hashlib
from typing import Any

from reflectevo.compat.fields import (
    LEAK_NOTE,
    SOURCE,
    Kind,
    _export_answer,
    _export_question,
    _flag_mojibake,
    _get,
    _import_answer,
    _str,
    derive_item_id,
    observation,
    prompt_leaks,
    split_observation,
    verdict_of,
)

_DPLUS_FIELDS = ("id", "question", "answer", "first_trial_reasoning", "first_trial_answer", "second_trial_reasoning",
                 "second_reason", "second_trial_answer", "reflections", "reason_prompt", "reflect_prompt")
_PAIR_FIELDS = ("id", "question", "answer", "first_trial_reasoning", "first_trial_answer",
                "reflection_chosen", "second_trial_reasoning_chosen", "second_trial_answer_chosen",
                "reflection_rejected", "second_trial_reasoning_rejected", "second_trial_answer_rejected",
                "reason_prompt", "reflection_prompt")


def _common_in(rec: dict[str, Any], where: str, task: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Item and trial-1 fields shared by D+ and D± rows (`reflectevo.curation.rows._common`'s order)."""
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
