"""Their raw `run/run.py` records <-> our episode records; a file imported for `generate.import_path`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reflectevo.compat.fields import (
    LEAK_NOTE,
    SOURCE,
    _bool,
    _export_answer,
    _export_question,
    _flag_mojibake,
    _get,
    _h,
    _import_answer,
    _item_dict,
    _str,
    observation,
    split_observation,
    task_name,
)
from reflectevo.compat.jsonstream import iter_json_objects
from reflectevo.episodes.shards import PARQUET_SUFFIX, iter_episodes
from reflectevo.errors import ReflectEvoError
from reflectevo.tasks.base import Item

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


def iter_imported(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, episode) of an imported file, streamed: our episodes (a Parquet shard, JSONL, a raw
    folder) or ReflectEvo's raw run.py records (converted on the fly, `reflectevo.compat`; the task from
    the file name). Imported keys hash the source, task, id and question (`compat.raw_to_episode`), so
    they never equal a generated episode's key."""
    path = Path(path)
    if not path.exists():
        raise ReflectEvoError(f"generate.import_path: {path} does not exist (convert the published file with "
                              "`reflectevo convert --from reflectevo --kind raw`, see data/imported/README.md)")
    if path.is_dir() or path.name.endswith(PARQUET_SUFFIX):
        yield from iter_episodes(path, where=True, journals=False)
        return

    theirs: bool | None = None
    for line, rec in iter_json_objects(path):
        where = f"{path}:{line}"
        if theirs is None:
            theirs = "output" in rec and "trial1" not in rec
        yield where, (raw_to_episode(rec, where, task_name(None, path)) if theirs else rec)
