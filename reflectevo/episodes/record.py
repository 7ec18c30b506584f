"""The episode record: one home for its fields, their types and version. The generate stage writes it
(`reflectevo.generation`), the shards store it (`reflectevo.episodes.shards`: index columns + the record as
JSON), curation checks and reads it (`check_episode`), and `reflectevo.compat` maps ReflectEvo's raw
format onto it. `data/README.md` describes every field for users.

Version 1 (records written before the field existed carry no `version`, and are version 1 too): an episode
has trial 1 (`trial1`) and one sample per reflection (`samples[]`: the reflection and the retry `trial2`;
`later_rounds[]` with more than one reflect -> retry round). Every prompt is stored exactly as sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from reflectevo.errors import ReflectEvoError

EPISODE_VERSION = 1
VERSIONS = (1,)


class TrialRecord(TypedDict, total=False):
    prompt: str | None               # as sent (ends with the task's assistant-side prefix); None when imported
    completion: str                  # the generated text
    attempt: str                     # what later prompts show: prefix + completion
    stop_reason: str                 # eos | stop | length
    forced_answer: bool              # the answer came from the answer step
    n_prompt_tokens: int | None
    n_new_tokens: int | None
    extracted: str | None            # the verdict: extracted answer, correct, score, error
    correct: bool
    score: float
    error: str | None
    sampling: dict[str, Any]         # a sampled retry only: Sampling fields + its seed


class ReflectionRecord(TypedDict, total=False):
    prompt: str | None
    text: str
    stop_reason: str
    n_prompt_tokens: int | None
    n_new_tokens: int | None
    sampling: dict[str, Any] | None  # Sampling fields + the sample's seed


class RoundRecord(TypedDict):
    round: int
    reflection: ReflectionRecord | None
    trial: TrialRecord


class SampleRecord(TypedDict, total=False):
    sample_id: str                   # <episode_id>-<sample_idx>
    sample_idx: int
    demand_id: str | None            # the demand instruction (oracle generation), else None
    reflection: ReflectionRecord | None   # None: generated with `reflect: false`
    trial2: TrialRecord
    later_rounds: list[RoundRecord]  # rounds 2.. (generate.rounds > 1)


class EpisodeRecord(TypedDict, total=False):
    version: int
    episode_id: str                  # content key (reflectevo.generation.keys)
    item_id: str
    task: str
    item_hash: str
    model: dict[str, Any]            # the model fingerprint: preset, source, revision
    dtype: str | None                # the preset's dtype setting
    resolved_dtype: str | None       # the dtype the model ran in
    prompt_version: str | None
    gen: dict[str, Any] | None       # the generation parameters (None when imported)
    adapters: dict[str, Any]         # generated with a trained setting's adapters: setting and hashes
    item: dict[str, Any]             # the item in the unified schema
    trial1: TrialRecord
    samples: list[SampleRecord]
    meta: dict[str, Any]


def trial_record(prompt: str | None, gen: Any, verdict: Any, attempt: str, sampling: Any = None,
                 seed: int | None = None) -> TrialRecord:
    """A trial as recorded: the prompt as sent, the generated text (`gen`: a `reflectevo.sampling.Generation`),
    the attempt later prompts show, why generation stopped, tokens and the verdict (`Verdict`); a sampled one
    (temperature > 0) also its sampling and seed."""
    rec: TrialRecord = {"prompt": prompt, "completion": gen.text, "attempt": attempt, "stop_reason": gen.stop_reason,
                        "forced_answer": gen.forced, "n_prompt_tokens": gen.n_prompt_tokens,
                        "n_new_tokens": gen.n_new_tokens, **verdict.to_dict()}
    if sampling is not None and sampling.temperature > 0:
        rec["sampling"] = {**sampling.to_dict(), "seed": seed}
    return rec


def reflection_record(prompt: str | None, gen: Any, sampling: Any, seed: int | None) -> ReflectionRecord:
    return {"prompt": prompt, "text": gen.text, "stop_reason": gen.stop_reason, "n_prompt_tokens": gen.n_prompt_tokens,
            "n_new_tokens": gen.n_new_tokens, "sampling": {**sampling.to_dict(), "seed": seed}}


def sample_record(episode_id: str, idx: int, demand_id: str | None, rounds: Sequence[tuple[Any, TrialRecord]],
                  multi_round: bool) -> SampleRecord:
    """One sample: round 1's reflection and retry, and (`multi_round`) the later rounds."""
    first_refl, first_trial = rounds[0]
    out: SampleRecord = {"sample_id": f"{episode_id}-{idx}", "sample_idx": idx, "demand_id": demand_id,
                         "reflection": first_refl, "trial2": first_trial}
    if multi_round:
        out["later_rounds"] = [{"round": n, "reflection": r, "trial": t} for n, (r, t) in enumerate(rounds[1:], start=2)]
    return out


# The fields curation reads, as paths into an episode (`samples[].x`: in every sample; a sample's `reflection`
# may be null: generated with `reflect: false`).
REQUIRED = ("episode_id", "item_id", "task", "item.question", "item.answer", "trial1.prompt", "trial1.completion",
            "trial1.extracted", "trial1.correct", "samples", "model.preset", "prompt_version", "gen")
SAMPLE_REQUIRED = ("sample_id", "demand_id", "reflection", "trial2.prompt", "trial2.completion", "trial2.extracted",
                   "trial2.correct")


# Their types (None: null allowed; imported episodes have no prompts, preset, prompt version or demand);
# optional fields are checked when present.
_S, _N, _I = (str,), (str, type(None)), (int, type(None))   # _I: token counts (diagnostics sum them)
TYPES = {"episode_id": _S, "item_id": _S, "task": _S, "item": (dict,), "item.question": _S, "item.answer": _S,
         "item.choices": (list, type(None)), "item.meta": (dict, type(None)), "trial1": (dict,), "trial1.prompt": _N,
         "trial1.completion": _S, "trial1.attempt": _S, "trial1.extracted": _N, "trial1.correct": (bool,),
         "trial1.n_prompt_tokens": _I, "trial1.n_new_tokens": _I,
         "samples": (list,), "model": (dict,), "model.preset": _N, "prompt_version": _N, "gen": (dict, type(None))}
SAMPLE_TYPES = {"sample_id": _S, "demand_id": _N, "reflection": (dict, type(None)), "reflection.prompt": _N,
                "reflection.text": _S, "reflection.n_prompt_tokens": _I, "reflection.n_new_tokens": _I,
                "trial2": (dict,), "trial2.prompt": _N, "trial2.completion": _S, "trial2.attempt": _S,
                "trial2.extracted": _N, "trial2.correct": (bool,), "trial2.n_prompt_tokens": _I,
                "trial2.n_new_tokens": _I}
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "an object",
               type(None): "null"}


def _missing(obj: Any, paths: Sequence[str]) -> str | None:
    for path in paths:
        cur = obj
        parts = path.split(".")
        for k, part in enumerate(parts):
            if not isinstance(cur, dict) or part not in cur:
                return ".".join(parts[: k + 1])   # the outermost missing field: `trial1`, not `trial1.prompt`
            cur = cur[part]
    return None


def _mistyped(obj: Any, types: dict[str, tuple[type, ...]]) -> str | None:
    """The first field of `types` present in `obj` with another type: 'field must be X, got Y'."""
    for path, allowed in types.items():
        cur = obj
        for part in path.split("."):
            if not isinstance(cur, dict) or part not in cur:
                break
            cur = cur[part]
        else:
            if not isinstance(cur, allowed):
                want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
                return f"field {path!r} must be {want}, got {type(cur).__name__}"
    return None


def check_episode(ep: Any, where: str) -> None:
    """Raise one ReflectEvoError naming `where` (file and row) and the first missing or mistyped field, or an
    unknown record version."""
    if not isinstance(ep, dict):
        raise ReflectEvoError(f"{where}: expected an episode object, got {type(ep).__name__}")
    version = ep.get("version", 1)
    if version not in VERSIONS:
        raise ReflectEvoError(f"{where}: episode record version {version!r} is not one this version of reflectevo "
                              f"reads ({', '.join(map(str, VERSIONS))}); upgrade reflectevo")
    wrong = _mistyped(ep, {k: TYPES[k] for k in ("item", "trial1", "model", "samples")})   # containers first
    miss = _missing(ep, REQUIRED) if wrong is None else None
    wrong = wrong or (_mistyped(ep, TYPES) if miss is None else None)
    if miss is None and wrong is None:
        for j, smp in enumerate(ep["samples"]):
            if not isinstance(smp, dict):
                wrong = f"field 'samples[{j}]' must be an object, got {type(smp).__name__}"
                break
            w = _mistyped(smp, {k: SAMPLE_TYPES[k] for k in ("reflection", "trial2")})
            m = _missing(smp, SAMPLE_REQUIRED) if w is None else None
            if m is None and w is None and isinstance(smp["reflection"], dict):
                m = _missing(smp["reflection"], ("prompt", "text"))
                m = m and f"reflection.{m}"
            if m is not None:
                miss = f"samples[{j}].{m}"
                break
            w = w or _mistyped(smp, SAMPLE_TYPES)
            if w is not None:
                wrong = w.replace("field '", f"field 'samples[{j}].", 1)
                break
    eid = ep.get("episode_id", "?")
    if miss is not None:
        raise ReflectEvoError(f"{where}: episode {eid!r} lacks the required field {miss!r}")
    if wrong is not None:
        raise ReflectEvoError(f"{where}: episode {eid!r}: {wrong}")


def attempt(trial: dict[str, Any]) -> str:
    """A trial's text as later prompts show it: the assistant-side prefix + completion (`attempt`; records
    written before the prefix existed hold the completion only)."""
    return trial.get("attempt", trial["completion"])


# How a shard stores a record: these index columns (readable alone) and the record as JSON text.
INDEX_COLUMNS = ("episode_id", "item_id", "task", "trial1_correct")


def index_values(ep: dict[str, Any]) -> dict[str, Any]:
    return {"episode_id": str(ep.get("episode_id")), "item_id": str(ep.get("item_id")), "task": str(ep.get("task")),
            "trial1_correct": bool((ep.get("trial1") or {}).get("correct"))}


def arrow_schema():
    """The Parquet schema of an episode shard."""
    import pyarrow as pa

    return pa.schema([("episode_id", pa.string()), ("item_id", pa.string()), ("task", pa.string()),
                      ("trial1_correct", pa.bool_()), ("episode", pa.string())])


__all__ = ["EPISODE_VERSION", "INDEX_COLUMNS", "REQUIRED", "SAMPLE_REQUIRED", "EpisodeRecord", "ReflectionRecord",
           "SampleRecord", "TrialRecord", "arrow_schema", "attempt", "check_episode", "index_values",
           "reflection_record", "sample_record", "trial_record"]
