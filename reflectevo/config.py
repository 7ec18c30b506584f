"""Typed, validated views of `params.yaml`.

Every stage reads its own section (plus `models.<model>`) through `load_section`, which rejects
unknown keys with a "did you mean" hint, wrong types with the key's dotted path, and unknown presets
with the list of valid ones. Read with ruamel (YAML 1.2), so `-S x=1e-05` stays a float.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from reflectevo.errors import ReflectEvoError, did_you_mean, unknown

T = TypeVar("T")

# --------------------------------------------------------------------------------------------------
# Generic strict loader


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ReflectEvoError as e:
                errors.append(str(e))
        raise ReflectEvoError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise unknown("value", value, [str(a) for a in allowed], where)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ReflectEvoError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ReflectEvoError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ReflectEvoError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ReflectEvoError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML-style '1e-05' strings
            try:
                return float(value)
            except ValueError:
                pass
        raise ReflectEvoError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ReflectEvoError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {_type_name(tp)} at {where}")


def from_dict(cls: type[T], data: Any, where: str, require_all: bool = False) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types.

    With `require_all`, every field must be given (stage sections: DVC can only track values that are
    written in params.yaml, so no stage silently falls back to a code default)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ReflectEvoError(
                f"{where}.{key}: unknown key.{did_you_mean(key, fields)} Valid keys: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    for name, f in fields.items():
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name not in kwargs and (require_all or not has_default):
            raise ReflectEvoError(f"{where}.{name}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------------
# Model presets

SOURCES = ("tiny-random", "gguf-package", "hub", "api", "scripted")   # api: weights only behind an endpoint
# (backend openai); scripted: no weights, completions from a recipe (backend scripted)
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("transformers", "vllm", "openai", "scripted")
API_MODES = ("auto", "completions", "chat")
ENGINES = ("local", "ray")        # generate.engine: how episodes are computed (records are the same)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ScriptRecipe:
    """`backend: scripted`: how its deterministic completions are drawn (reflectevo/backends/scripted.py).
    Defaults follow ReflectEvo-460K's statistics (lengths in words; 13.93% of retries right)."""

    trial1_correct: float = 0.3      # share of right first trials
    retry_correct: float = 0.14      # share of right retries (after a reflection)
    trial_words: int = 189           # mean thought length of trial 1 (cut to max_new_tokens_trial)
    retry_words: int = 237           # mean thought length of a retry
    reflection_words: int = 250      # mean reflection length (cut to max_new_tokens_reflection)
    length_sd: float = 0.3           # relative standard deviation of the lengths
    seed: int = 0

    def validate(self, where: str) -> None:
        for k in ("trial1_correct", "retry_correct"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ReflectEvoError(f"{where}.{k}: must be in [0, 1]")
        if min(self.trial_words, self.retry_words, self.reflection_words) < 1 or self.length_sd < 0:
            raise ReflectEvoError(f"{where}: lengths must be >= 1 and length_sd >= 0")


@dataclass(frozen=True)
class ModelPreset:
    """One entry of `models:` in params.yaml. Adding a preset is a data change."""

    source: str                      # tiny-random | gguf-package | hub
    hub_id: str = ""                 # the real Hugging Face path (what users on the hub load)
    revision: str = "main"           # hub commit; recorded in every generated record
    package: str = ""                # gguf-package: the Python package that ships the file
    package_version: str = ""        # gguf-package: pinned version (part of the cache key)
    file: str = ""                   # gguf-package: file name inside the package
    path: str = ""                   # optional local folder that overrides the hub (offline use)
    license: str = ""                # the base's Hub license id (model cards' `license:`); empty: none stated
    dtype: str = "auto"              # auto picks bf16 where the CPU/GPU has fast bf16, else fp32
    quantization: str = "none"       # none | 4bit (QLoRA training: NF4 base + LoRA; CUDA + bitsandbytes; generation unquantized)
    backend: str = "transformers"
    gen_batch_size: int = 32
    max_length: int = 2048           # context (prompt + new tokens) the vllm backend's engine holds (max_model_len)
    lora: LoraConfig = field(default_factory=LoraConfig)
    lr_sft: float = 2.0e-4
    lr_dpo: float = 5.0e-6
    lr_full: float = 1.0e-5          # train.method full: learning rate of SFT (DPO / RL use lr_dpo / train.rl.lr)
    train_method: str = "lora"       # what train.method auto means for this preset: lora | full
    seed: int = 0                    # tiny-random: weight init seed
    # backend: openai (an OpenAI-compatible endpoint; see reflectevo/backends/openai_backend.py)
    api_model: str = ""              # model name the endpoint serves; default: hub_id, else the preset name
    api_mode: str = "auto"           # completions (chat template applied here) | chat | auto (chat for source api)
    api_base_url: str = ""           # empty: $REFLECTEVO_OPENAI_BASE_URL, else $OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key)
    api_concurrency: int = 0         # requests in flight; 0: $REFLECTEVO_OPENAI_CONCURRENCY, else 8
    api_retries: int = 5             # retries on 408/409/429/5xx and connection errors, exponential backoff
    api_extra: dict[str, Any] = field(default_factory=dict)  # extra request fields (vllm serve: add_special_tokens)
    script: ScriptRecipe = field(default_factory=ScriptRecipe)  # backend: scripted (no model; see ScriptRecipe)

    def validate(self, where: str) -> None:
        if self.source not in SOURCES:
            raise unknown("model source", self.source, SOURCES, f"{where}.source")
        if self.dtype not in DTYPES:
            raise unknown("dtype", self.dtype, DTYPES, f"{where}.dtype")
        if self.quantization not in ("none", "4bit"):
            raise unknown("quantization", self.quantization, ("none", "4bit"), f"{where}.quantization")
        if self.backend not in BACKENDS:
            raise unknown("backend", self.backend, BACKENDS, f"{where}.backend")
        if self.source == "hub" and not (self.hub_id or self.path):
            raise ReflectEvoError(f"{where}.hub_id: a hub preset needs hub_id (or a local path)")
        if self.source == "gguf-package" and not (self.package and self.file):
            raise ReflectEvoError(f"{where}: a gguf-package preset needs package and file")
        if self.gen_batch_size < 1:
            raise ReflectEvoError(f"{where}.gen_batch_size: must be >= 1")
        if self.api_mode not in API_MODES:
            raise unknown("api_mode", self.api_mode, API_MODES, f"{where}.api_mode")
        if self.source == "api" and self.backend != "openai":
            raise ReflectEvoError(f"{where}.backend: a source: api preset runs only through backend: openai")
        if self.source == "api" and not (self.api_model or self.hub_id):
            raise ReflectEvoError(f"{where}.api_model: a source: api preset needs the endpoint's model name")
        if self.source == "api" and self.api_mode == "completions":
            raise ReflectEvoError(f"{where}.api_mode: completions needs the model's chat template (a tokenizer), "
                                  "which a source: api preset has not; use chat")
        if self.train_method not in ("lora", "full"):
            raise unknown("train_method", self.train_method, ("lora", "full"), f"{where}.train_method")
        if (self.source == "scripted") != (self.backend == "scripted"):
            raise ReflectEvoError(f"{where}: a scripted preset needs both source: scripted and backend: scripted")
        if self.api_concurrency < 0 or self.api_retries < 0:
            raise ReflectEvoError(f"{where}: api_concurrency and api_retries must be >= 0")


# --------------------------------------------------------------------------------------------------
# Stage sections


@dataclass(frozen=True)
class TaskSpec:
    name: str                        # a registered task name (see `reflectevo tasks`)
    n_train: int = 0                 # 0 = the whole train split
    n_test: int = 0                  # 0 = the whole test split
    options: dict[str, Any] = field(default_factory=dict)  # generator options (reasoning-gym kwargs)

    def validate(self, where: str) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise ReflectEvoError(f"{where}: n_train/n_test must be >= 0")


@dataclass(frozen=True)
class PrepareConfig:
    tasks: tuple[TaskSpec, ...]
    seed: int = 0

    def validate(self, where: str) -> None:
        if not self.tasks:
            raise ReflectEvoError(f"{where}.tasks: list at least one task")
        from reflectevo.tasks.registry import get_task

        for i, t in enumerate(self.tasks):
            get_task(t.name, where=f"{where}.tasks[{i}].name")


@dataclass(frozen=True)
class GenerateConfig:
    k: int = 2                                  # reflections per failed item
    demands: tuple[str, ...] = ("all",)         # demand ids from the pool, or "all"
    temperature: float = 0.8                    # reflection sampling
    top_p: float = 1.0
    max_new_tokens_trial: int = 256
    max_new_tokens_reflection: int = 256
    use_previous_trial: bool = True             # show trial 1 in the trial-2 prompt
    protocol: str = "oracle"                    # oracle: reflect on failures, told so; intrinsic: on every item, not told
    reflect: bool = True                        # false: the "w/o reflection" baseline (retry sees notice + attempt only)
    rounds: int = 1                             # reflect -> retry rounds per sample (multi-round, Figure 4)
    retry_temperature: float = 0.0              # trial 2 sampling (paper: 0 = greedy); > 0 draws each sample's retry
    name_rejected: bool = False                 # oracle: the retry prompt names the rejected answer (not in the paper)
    seed: int = 0
    limit: int = 0                              # 0 = every train item
    shard_size: int = 50000                     # episodes per output shard
    workers: int = 1                            # parallel generation processes (one per GPU), merged at the end
    engine: str = "local"                       # local: processes on this machine; ray: a Ray Data pipeline
    ray_address: str = ""                       # engine ray: "" starts a local Ray; "auto" or "ray://head:10001" joins a cluster
    import_path: str = ""                       # non-empty: no generation; data/raw holds this file's episodes
                                                # (ReflectEvo raw or our episodes; see data/imported/README.md)

    def validate(self, where: str) -> None:
        if self.workers < 1:
            raise ReflectEvoError(f"{where}.workers: must be >= 1")
        if self.engine not in ENGINES:
            raise unknown("engine", self.engine, ENGINES, f"{where}.engine")
        if self.k < 1:
            raise ReflectEvoError(f"{where}.k: must be >= 1")
        if self.protocol not in ("oracle", "intrinsic"):
            raise unknown("protocol", self.protocol, ["oracle", "intrinsic"], f"{where}.protocol")
        if not 1 <= self.rounds <= 10:
            raise ReflectEvoError(f"{where}.rounds: must be in [1, 10]")
        if not 0.0 <= self.temperature <= 5.0:
            raise ReflectEvoError(f"{where}.temperature: must be in [0, 5]")
        if not 0.0 <= self.retry_temperature <= 5.0:
            raise ReflectEvoError(f"{where}.retry_temperature: must be in [0, 5]")
        from reflectevo.demands import demand_pool

        pool = demand_pool()
        for d in self.demands:
            if d != "all" and d not in pool:
                raise unknown("demand id", d, pool, f"{where}.demands")


@dataclass(frozen=True)
class CurateConfig:
    eval_fraction: float = 0.1                  # items (not rows) held out for eval
    min_reflection_words: int = 3
    max_reflection_words: int = 400
    max_pairs_per_item: int = 4                 # D± / Dpref pairs kept per failed attempt
    dedup_threshold: float = 0.9                # TF-IDF cosine at or above which a reflection is a near-duplicate
    judge: str = "none"                         # ranks fixing reflections (Dpref): likelihood | self (the generating
                                                # model) | a model preset | none
    seed: int = 0

    def validate(self, where: str) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ReflectEvoError(f"{where}.eval_fraction: must be in [0, 1)")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ReflectEvoError(f"{where}.dedup_threshold: must be in (0, 1]")


LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


@dataclass(frozen=True)
class SFTHyper:
    epochs: float = 1.0
    max_steps: int = -1                         # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"                # transformers' lr_scheduler_type (paper DPO: cosine)
    weight_decay: float = 0.0                   # paper two-stage SFT: 0.01
    save_steps: int = 50                        # checkpoint every N optimizer steps (resume after a kill); 0 = none
    save_total_limit: int = 2                   # checkpoints kept per adapter role (newest)

    def validate(self, where: str) -> None:
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise unknown("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS, f"{where}.lr_scheduler")
        if self.save_steps < 0:
            raise ReflectEvoError(f"{where}.save_steps: must be >= 0 (0 = no checkpoints)")
        if self.save_total_limit < 1:
            raise ReflectEvoError(f"{where}.save_total_limit: must be >= 1")


@dataclass(frozen=True)
class DPOHyper(SFTHyper):
    beta: float = 0.1                           # paper: 0.01 (full-parameter DPO)


REWARDS = ("correct", "format")                 # reflectevo.training.rewards: the verifier, the answer form
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")   # trl.GRPOConfig.loss_type
TRAIN_METHODS = ("auto", "lora", "full")


@dataclass(frozen=True)
class RLHyper(SFTHyper):
    """Online RL (grpo_one_stage, grpo_reflect_retry, rloo). TRL 1.16 defaults noted where ours differ."""

    enabled: bool = False                       # false: the RL settings write a "disabled" card (seconds)
    protocol: str = "oracle"                    # oracle: failed trial-1 attempts + notice; intrinsic: every item
    limit: int = 0                              # prompts drawn from data/raw (0 = all)
    num_generations: int = 4                    # rollouts per prompt (TRL: 8); >= 2 (group baseline)
    beta: float = 0.0                           # KL to the reference (TRL GRPO: 0.0; RLOO: 0.05)
    loss_type: str = "dapo"                     # TRL GRPO default
    max_completion_length: int = 64             # TRL: 512 (one_stage: reflection + answer; reflect_retry: reflection)
    max_new_tokens_retry: int = 64              # grpo_reflect_retry: the retry's budget
    temperature: float = 1.0                    # TRL default
    lr: float = 1.0e-5                          # TRL GRPO default 1e-6 (full FT); LoRA wants more
    reward_weights: dict[str, float] = field(default_factory=lambda: {"correct": 1.0, "format": 0.0})
    retry_by: str = "policy"                    # grpo_reflect_retry: policy (the adapter) | base (adapter disabled)
    train_retry: bool = False                   # grpo_reflect_retry: also train the retry tokens (env_mask 1)
    use_vllm: bool = False                      # grpo_one_stage / rloo rollouts by TRL's vLLM (colocate; CUDA + vllm)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.num_generations < 2:
            raise ReflectEvoError(f"{where}.num_generations: must be >= 2 (the group is the baseline), got "
                                  f"{self.num_generations}")
        if self.batch_size % self.num_generations:
            raise ReflectEvoError(f"{where}.batch_size: {self.batch_size} completions per step must be a multiple of "
                                  f"num_generations ({self.num_generations})")
        if self.protocol not in ("oracle", "intrinsic"):
            raise unknown("protocol", self.protocol, ["oracle", "intrinsic"], f"{where}.protocol")
        if self.retry_by not in ("policy", "base"):
            raise unknown("retry_by", self.retry_by, ["policy", "base"], f"{where}.retry_by")
        if self.train_retry and self.retry_by != "policy":
            raise ReflectEvoError(f"{where}.train_retry: true needs retry_by: policy (the frozen base's retry tokens are "
                                  "not the policy's samples to train)")
        if self.loss_type not in LOSS_TYPES:
            raise unknown("loss_type", self.loss_type, LOSS_TYPES, f"{where}.loss_type")
        if self.beta < 0 or self.temperature <= 0 or self.lr <= 0:
            raise ReflectEvoError(f"{where}: beta must be >= 0, temperature and lr > 0")
        if self.max_completion_length < 1 or self.max_new_tokens_retry < 1 or self.limit < 0:
            raise ReflectEvoError(f"{where}: max_completion_length, max_new_tokens_retry >= 1; limit >= 0")
        for name, w in self.reward_weights.items():
            if name not in REWARDS:
                raise unknown("reward", name, REWARDS, f"{where}.reward_weights")
            if not w >= 0 or w == float("inf"):  # NaN fails too
                raise ReflectEvoError(f"{where}.reward_weights.{name}: must be a number >= 0, got {w!r}")
        if not any(w > 0 for w in self.reward_weights.values()):
            raise ReflectEvoError(f"{where}.reward_weights: at least one weight must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters shared by the settings (dvc.yaml `vars.settings` lists which settings run)."""

    seed: int = 0
    method: str = "auto"                        # lora | full | auto (the preset's train_method)
    gradient_checkpointing: bool = False        # recompute activations in backward (full FT of big models)
    sft: SFTHyper = field(default_factory=SFTHyper)
    dpo: DPOHyper = field(default_factory=DPOHyper)
    rl: RLHyper = field(default_factory=RLHyper)
    keep_checkpoints: bool = False              # keep checkpoints/<setting>/ after a successful run

    def validate(self, where: str) -> None:
        if self.method not in TRAIN_METHODS:
            raise unknown("training method", self.method, TRAIN_METHODS, f"{where}.method")


@dataclass(frozen=True)
class EvaluateConfig:
    protocol: str = "oracle"                    # oracle: reflect only when wrong; intrinsic: always, no feedback
    rounds: int = 1                             # reflect -> retry rounds: Acc@t1 .. Acc@t(rounds+1) (Figure 4)
    max_new_tokens_trial: int = 256
    max_new_tokens_reflection: int = 256
    name_rejected: bool = False                 # oracle: the retry prompt names the rejected answer (as generate.name_rejected)
    limit: int = 0                              # 0 = every test item

    def validate(self, where: str) -> None:
        if self.protocol not in ("oracle", "intrinsic"):
            raise unknown("protocol", self.protocol, ["oracle", "intrinsic"], f"{where}.protocol")
        if not 1 <= self.rounds <= 10:
            raise ReflectEvoError(f"{where}.rounds: must be in [1, 10]")


@dataclass(frozen=True)
class EvolveStep:
    """One iteration i >= 2 of `evolve.chain`: where iteration i-1's outputs are (dvc.yaml's foreach)."""

    models: str                                 # its trained settings folder (models, evolve/it<i-1>/models)
    data: str                                   # its training data folder (data/curated, evolve/it<i-1>/data)


EVOLVE_DATA = ("new", "union")
EVOLVE_INIT = ("base", "previous")


def evolve_chain(iterations: int) -> dict[str, dict[str, str]]:
    """The `evolve.chain` for N iterations: it2 reads the main pipeline's outputs, it<i> those of it<i-1>."""
    chain = {}
    for i in range(2, iterations + 1):
        prev = "" if i == 2 else f"evolve/it{i - 1}/"
        chain[f"it{i}"] = {"models": f"{prev}models" if prev else "models",
                           "data": f"{prev}data" if prev else "data/curated"}
    return chain


@dataclass(frozen=True)
class EvolveConfig:
    """Self-evolution (generate -> curate -> train again with the trained reflector): dvc.yaml's `evolve_*`
    stages, one set per entry of `chain` (iterations 2..N); iteration 1 is the main pipeline."""

    iterations: int = 1                         # N: 1 = train once (the paper)
    setting: str = "one_stage"                  # whose adapters write the next round's reflections
    data: str = "new"                           # new: the iteration's own D+ (D±, Dpref); union: with earlier ones
    init: str = "base"                          # base: a fresh LoRA; previous: continue from iteration i-1's adapter
    chain: dict[str, EvolveStep] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        from reflectevo.settings import reflection_settings

        if self.iterations < 1:
            raise ReflectEvoError(f"{where}.iterations: must be >= 1 (1 = train once, as the paper), got {self.iterations}")
        if self.setting not in reflection_settings():
            raise unknown("reflection setting", self.setting, reflection_settings(), f"{where}.setting")
        if self.data not in EVOLVE_DATA:
            raise unknown("data policy", self.data, EVOLVE_DATA, f"{where}.data")
        if self.init not in EVOLVE_INIT:
            raise unknown("init", self.init, EVOLVE_INIT, f"{where}.init")
        want = evolve_chain(self.iterations)
        have = {k: {"models": v.models, "data": v.data} for k, v in self.chain.items()}
        if have != want:
            raise ReflectEvoError(
                f"{where}.chain: does not match {where}.iterations: {self.iterations} (dvc.yaml runs one set of "
                f"evolve stages per entry); write it with `python stages/evolve.py chain {self.iterations}`")


PROTOCOLS = ("oracle", "intrinsic")


@dataclass(frozen=True)
class DemoProtocol:
    systems: tuple[str, ...] = ()               # systems evaluated under this protocol; () = every one evaluate runs


@dataclass(frozen=True)
class DemoConfig:
    """The demo (demo/dvc.yaml, `make demo`): the default run's trained settings evaluated on `items` fresh
    held-out items per task (never in data/sources), under each protocol of `protocols`."""

    items: int = 300                            # fresh test items per task of prepare.tasks
    protocols: dict[str, DemoProtocol] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        from reflectevo.settings import system_names

        if self.items < 1:
            raise ReflectEvoError(f"{where}.items: must be >= 1, got {self.items}")
        if not self.protocols:
            raise ReflectEvoError(f"{where}.protocols: name at least one of {', '.join(PROTOCOLS)}")
        known = system_names()
        for key, proto in self.protocols.items():
            if key not in PROTOCOLS:
                raise unknown("protocol", key, PROTOCOLS, f"{where}.protocols")
            for s in proto.systems:
                if s not in known:
                    raise unknown("system", s, known, f"{where}.protocols.{key}.systems")


SECTIONS: dict[str, type] = {
    "prepare": PrepareConfig,
    "generate": GenerateConfig,
    "curate": CurateConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "evolve": EvolveConfig,
    "demo": DemoConfig,
}
OPTIONAL_SECTIONS = ("evolve", "demo")                 # params files written before it need not have it
TOP_LEVEL = ("model", "models", *SECTIONS)


# --------------------------------------------------------------------------------------------------
# params.yaml access


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    from ruamel.yaml import YAML

    path = Path(path)
    if not path.exists():
        raise ReflectEvoError(f"{path}: params file not found")
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text())
    except Exception as e:  # ruamel's errors carry line/column
        raise ReflectEvoError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: expected a mapping at the top level")
    for key in data:
        if key not in TOP_LEVEL:
            raise ReflectEvoError(
                f"{path}: unknown top-level key {key!r}.{did_you_mean(key, TOP_LEVEL)} Valid: {', '.join(TOP_LEVEL)}"
            )
    return data


# Preset names must survive DVC: `params: [models.${model}]` in dvc.yaml is a dotted key path (a dot in
# the name makes nested keys: `qwen2.5-0.5b` -> models / qwen2 / 5-0 ...), and `dvc exp run -S model=X`
# parses X with Hydra's override grammar (`true`, `null`, `1_000` are not strings there). So: a letter
# first, then letters, digits, `-` and `_`; a version's dot becomes `_` (qwen2_5-0_5b-instruct).
PRESET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}

# Renamed presets, old name -> new name: our commands answer "did you mean" for an old name (DVC itself
# only says `Parameters 'models.<old>' are missing`).
PRESET_ALIASES: dict[str, str] = {
    "qwen2.5-0.5b-instruct": "qwen2_5-0_5b-instruct",
    "qwen2.5-1.5b-instruct": "qwen2_5-1_5b-instruct",
}


def preset_name_problem(name: str) -> str:
    """'' when DVC can select preset `name` (`-S model=<name>` and `models.${model}`), else why not."""
    if not isinstance(name, str) or not PRESET_NAME.fullmatch(name) or name.lower() in _HYDRA_WORDS:
        fixed = PRESET_ALIASES.get(str(name)) or re.sub(r"[^A-Za-z0-9_-]", "_", str(name))
        if not fixed[:1].isalpha() or fixed.lower() in _HYDRA_WORDS:
            fixed = "m-" + fixed
        return (f"preset name {name!r} cannot be selected with `dvc exp run -S model=...` (DVC splits "
                f"`models.${{model}}` at dots and parses the name with Hydra): use a letter, then letters, "
                f"digits, '-' and '_', e.g. {fixed!r}")
    return ""


def load_preset(params: dict[str, Any], name: str | None = None, where: str = "model") -> tuple[str, ModelPreset]:
    """Return (preset name, preset) for `name` or the params' `model:` selector; `where` names the key."""
    models = params.get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ReflectEvoError("models: params.yaml needs a non-empty `models:` map of presets")
    name = name or params.get("model")
    if not name:
        raise ReflectEvoError(f"model: required key is missing. Valid presets: {', '.join(sorted(models))}")
    if name not in models:
        new = PRESET_ALIASES.get(str(name))
        if new in models:
            raise ReflectEvoError(f"{where}: model preset {name!r} was renamed (preset names have no dots, so DVC "
                                  f"can select them). Did you mean {new!r}?")
        raise unknown("model preset", name, models, where)
    problem = preset_name_problem(name)
    if problem:
        raise ReflectEvoError(f"models.{name}: {problem}")
    return name, from_dict(ModelPreset, models[name], f"models.{name}")


def load_section(params: dict[str, Any], section: str) -> Any:
    if section not in SECTIONS:
        raise unknown("params section", section, SECTIONS)
    if section not in params:
        raise ReflectEvoError(f"{section}: section missing from params.yaml")
    return from_dict(SECTIONS[section], params[section], section, require_all=True)


def validate_all(params: dict[str, Any]) -> None:
    """Validate every preset and section (used by `reflectevo params check` and the tests)."""
    for name in params.get("models") or {}:
        load_preset(params, name)
    load_preset(params)
    for section in SECTIONS:
        if section in OPTIONAL_SECTIONS and section not in params:
            continue
        load_section(params, section)
