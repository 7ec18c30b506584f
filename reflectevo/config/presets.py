"""Model presets: one entry of `models:` in params.yaml each (adding a preset is a data change), the rules
their names follow so DVC can select them, and `load_preset`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from reflectevo.config.loader import (Fraction, Gt, Int, MinLen, Named, NonNegFloat, NonNegInt, PosFloat,
                                      PosInt, Probability, Schema, Seed, Str, choices, from_dict)
from reflectevo.errors import ReflectEvoError, unknown

Source = Literal["tiny-random", "gguf-package", "hub", "api", "scripted"]  # api: weights only behind an endpoint
# (backend openai); scripted: no weights, completions from a recipe (backend scripted)
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["transformers", "vllm", "openai", "scripted"]
ApiMode = Literal["auto", "completions", "chat"]
Quantization = Literal["none", "4bit"]
TrainMethod = Literal["lora", "full"]
SOURCES, DTYPES, BACKENDS, API_MODES = choices(Source), choices(Dtype), choices(Backend), choices(ApiMode)


@dataclass(frozen=True)
class LoraConfig(Schema):
    r: PosInt = 8
    alpha: Annotated[Int, Gt(0)] = 16
    dropout: Fraction = 0.0
    targets: Annotated[tuple[Str, ...], MinLen(1)] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ScriptRecipe(Schema):
    """`backend: scripted`: how its deterministic completions are drawn (reflectevo/backends/scripted.py).
    Defaults follow ReflectEvo-460K's statistics (lengths in words; 13.93% of retries right)."""

    trial1_correct: Probability = 0.3      # share of right first trials
    retry_correct: Probability = 0.14      # share of right retries (after a reflection)
    trial_words: PosInt = 189              # mean thought length of trial 1 (cut to max_new_tokens_trial)
    retry_words: PosInt = 237              # mean thought length of a retry
    reflection_words: PosInt = 250         # mean reflection length (cut to max_new_tokens_reflection)
    length_sd: NonNegFloat = 0.3           # relative standard deviation of the lengths
    seed: Seed = 0


@dataclass(frozen=True)
class ModelPreset(Schema):
    """One entry of `models:` in params.yaml. Adding a preset is a data change."""

    source: Annotated[Source, Named("model source")]
    hub_id: Str = ""                 # the real Hugging Face path (what users on the hub load)
    revision: Str = "main"           # hub commit; recorded in every generated record
    package: Str = ""                # gguf-package: the Python package that ships the file
    package_version: Str = ""        # gguf-package: pinned version (part of the cache key)
    file: Str = ""                   # gguf-package: file name inside the package
    path: Str = ""                   # optional local folder that overrides the hub (offline use)
    license: Str = ""                # the base's Hub license id (model cards' `license:`); empty: none stated
    dtype: Dtype = "auto"            # auto picks bf16 where the CPU/GPU has fast bf16, else fp32
    quantization: Quantization = "none"  # 4bit: QLoRA training (NF4 base + LoRA; CUDA + bitsandbytes; generation unquantized)
    backend: Backend = "transformers"
    gen_batch_size: PosInt = 32
    max_length: PosInt = 2048        # context (prompt + new tokens) the vllm backend's engine holds (max_model_len)
    lora: LoraConfig = field(default_factory=LoraConfig)
    lr_sft: PosFloat = 2.0e-4
    lr_dpo: PosFloat = 5.0e-6
    lr_full: PosFloat = 1.0e-5       # train.method full: learning rate of SFT (DPO / RL use lr_dpo / train.rl.lr)
    train_method: TrainMethod = "lora"  # what train.method auto means for this preset
    seed: Seed = 0                   # tiny-random: weight init seed
    # backend: openai (an OpenAI-compatible endpoint; see reflectevo/backends/openai_backend.py)
    api_model: Str = ""              # model name the endpoint serves; default: hub_id, else the preset name
    api_mode: ApiMode = "auto"       # completions (chat template applied here) | chat | auto (chat for source api)
    api_base_url: Str = ""           # empty: $REFLECTEVO_OPENAI_BASE_URL, else $OPENAI_BASE_URL
    api_key_env: Str = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key)
    api_concurrency: NonNegInt = 0   # requests in flight; 0: $REFLECTEVO_OPENAI_CONCURRENCY, else 8
    api_retries: NonNegInt = 5       # retries on 408/409/429/5xx and connection errors, exponential backoff
    api_extra: dict[Str, Any] = field(default_factory=dict)  # extra request fields (vllm serve: add_special_tokens)
    script: ScriptRecipe = field(default_factory=ScriptRecipe)  # backend: scripted (no model; see ScriptRecipe)

    def check(self, where: str) -> None:
        if self.source == "hub" and not (self.hub_id or self.path):
            raise ReflectEvoError(f"{where}.hub_id: a hub preset needs hub_id (or a local path)")
        if self.source == "gguf-package" and not (self.package and self.file):
            raise ReflectEvoError(f"{where}: a gguf-package preset needs package and file")
        if self.source == "api" and self.backend != "openai":
            raise ReflectEvoError(f"{where}.backend: a source: api preset runs only through backend: openai")
        if self.source == "api" and not (self.api_model or self.hub_id):
            raise ReflectEvoError(f"{where}.api_model: a source: api preset needs the endpoint's model name")
        if self.source == "api" and self.api_mode == "completions":
            raise ReflectEvoError(f"{where}.api_mode: completions needs the model's chat template (a tokenizer), "
                                  "which a source: api preset has not; use chat")
        if (self.source == "scripted") != (self.backend == "scripted"):
            raise ReflectEvoError(f"{where}: a scripted preset needs both source: scripted and backend: scripted")


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
        raise ReflectEvoError(f"model: required key is missing. Valid presets: {', '.join(sorted(map(str, models)))}")
    if not isinstance(name, str):  # `model: [a]`, or a key such as `1:` under models
        key = f"models.{name}" if isinstance(name, (int, float)) and name in models else where
        raise ReflectEvoError(f"{key}: expected a preset name (a string), got {name!r}")
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
