"""Online RL settings with TRL: GRPO (`grpo_one_stage`, `grpo_reflect_retry`) and RLOO (`rloo`).

| setting            | trainer | prompt (data/raw trial-1 attempts) | completion | reward |
|--------------------|---------|-------------------------------------|------------|--------|
| grpo_one_stage     | GRPO    | one-stage prompt (oracle: failure notice) | reflection + "Answer:" + new attempt | verifier on the answer part |
| grpo_reflect_retry | GRPO + `rollout_func` | test reflection prompt | reflection; then the retry (policy, or the base with the adapter disabled) | verifier on the retry; only the reflection is trained (`env_mask`) |
| rloo               | RLOO    | as grpo_one_stage | as grpo_one_stage | as grpo_one_stage |

RLOO (REINFORCE leave-one-out) is the PPO-family member TRL 1.16 ships: PPO's clipped policy-gradient
objective with a KL penalty to the reference, but the value network replaced by the mean reward of the
other k-1 rollouts of the same prompt (no critic, no reward model: our verifiers are the reward). TRL 1.16
has no PPO trainer (`trl.experimental.ppo` is gone, and the earlier PPOTrainer needed a reward *model*
and a value model), so PPO itself is not offered.

Rollouts: `grpo_one_stage` and `rloo` sample through TRL's own generation (transformers on CPU; with a
GPU, `use_vllm` colocate is TRL's option); `grpo_reflect_retry` samples the two turns itself, batched with
the protocol round generate and evaluate run, on the live policy (`reflectevo.training.rollout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.training.config import RLHyper, TrainConfig
from reflectevo.settings import registry
from reflectevo.training.model import (
    _base_model,
    _common_args,
    _qlora_adapter_dtype,
    frozen_base,
    peft_config_for,
    train_method,
)
from reflectevo.training.rewards import reward_functions
from reflectevo.training.rollout import ReflectRetryRollout


def _rl_args(config_cls, cfg: TrainConfig, output_dir: Path, preset: ModelPreset, save_checkpoints: bool,
             weights: list[float]) -> dict[str, Any]:
    hp = cfg.rl
    args = _common_args(config_cls, hp, cfg.seed, hp.lr, output_dir, False, preset.dtype, save_checkpoints,
                        cfg.gradient_checkpointing)
    args.pop("max_length")  # TRL 1.16's GRPO/RLOO configs have none: prompts are filtered by length beforehand
    args.pop("per_device_eval_batch_size")
    if hp.use_vllm:  # TRL's colocated vLLM engine samples the rollouts (GPU machines)
        args.update(use_vllm=True, vllm_mode="colocate")
    return {**args, "num_generations": hp.num_generations, "beta": hp.beta,
            "max_completion_length": hp.max_completion_length, "temperature": hp.temperature,
            "reward_weights": weights, "log_completions": False}


def fit_prompts(tokenizer, examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """The examples whose rendered prompt fits `max_length` tokens (TRL 1.16's GRPO does not truncate)."""
    keep = []
    for ex in examples:
        text = tokenizer.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length:
            keep.append(ex)
    return keep


def trl_vllm_range() -> str:
    """The vLLM versions this TRL samples rollouts with: its `vllm` extra's specifier (TRL 1.16: ">=0.22.0,<=0.31.0",
    also checked in trl/import_utils.py `is_vllm_available`), read from TRL's installed metadata."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    for line in requires("trl") or []:
        req = Requirement(line)
        if req.name == "vllm" and req.marker is not None and req.marker.evaluate({"extra": "vllm"}):
            return str(req.specifier)
    return ""


def check_vllm_rollouts(setting: str, hp: RLHyper, preset: ModelPreset | None = None,
                        vllm_version: str | None = None) -> None:
    """`train.rl.use_vllm` needs CUDA and a vllm within TRL's range, and applies to TRL's own rollouts (not
    grpo_reflect_retry's). TRL drives vLLM's engine internals (trl/generation/vllm_generation.py: weights pushed
    through `llm_engine.model_executor`; a 4-bit policy makes it ask vLLM for `quantization="bitsandbytes"`),
    so a vllm outside its extra's range (the project's `vllm` extra for generation is newer) stops here, in
    one line, instead of failing inside the first training step."""
    import importlib.util

    import torch

    from reflectevo.errors import ReflectEvoError

    if not hp.use_vllm:
        return
    if setting == "grpo_reflect_retry":
        raise ReflectEvoError("train.rl.use_vllm: grpo_reflect_retry samples its two turns itself with transformers "
                              "(ReflectRetryRollout); set use_vllm: false for it")
    if vllm_version is None:
        if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
            raise ReflectEvoError("train.rl.use_vllm: needs a CUDA GPU and vllm (pip install '.[vllm]'); set it to false "
                                  "on this machine")
        from importlib.metadata import version

        vllm_version = version("vllm")
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    import trl

    supported = trl_vllm_range()
    if supported and Version(Version(vllm_version).base_version) not in SpecifierSet(supported):
        four_bit = " (and its 4-bit path needs vLLM's bitsandbytes method)" if preset and preset.quantization == "4bit" else ""
        raise ReflectEvoError(
            f"train.rl.use_vllm: TRL {trl.__version__} samples rollouts with vllm {supported}{four_bit}, this environment "
            f"has vllm {vllm_version} (the generation backend's extra); set train.rl.use_vllm: false (TRL then samples "
            f"with transformers), or train in an environment with pip install 'trl[vllm]=={trl.__version__}'")


def build_rl_trainer(setting: str, preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                     eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                     save_checkpoints: bool = False):
    """TRL GRPOTrainer (grpo_*) or RLOOTrainer (rloo) with our verifier rewards, a fresh LoRA (or every weight:
    `train.method: full`; TRL then loads a frozen copy of the base as the KL reference when beta > 0; with
    LoRA the reference is the base with the adapter disabled). `train_dataset` holds the prompts that fit."""
    import torch
    from datasets import Dataset

    from reflectevo.models.load import load_tokenizer

    hp = cfg.rl
    method = train_method(preset_name, preset, cfg.method)
    check_vllm_rollouts(setting, hp, preset)
    tok = load_tokenizer(preset_name, preset)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    kept = fit_prompts(tok, train_examples, hp.max_length)
    funcs, weights = reward_functions(registry().settings[setting].reward, dict(hp.reward_weights))
    retry_base = None
    if setting == "grpo_reflect_retry" and hp.retry_by == "base" and method == "full":
        retry_base = frozen_base(preset_name, preset)   # before the arguments: a whole replica, never partitioned
    common = {"reward_funcs": funcs, "processing_class": tok, "train_dataset": Dataset.from_list(kept),
              "peft_config": peft_config_for(preset, method)}
    # the arguments before the model, as the offline trainers do: under DeepSpeed ZeRO-3 they switch on the
    # partitioned loading of the `from_pretrained` that follows (transformers/training_args.py)
    if setting == "rloo":
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

        args = Config(**_rl_args(Config, cfg, output_dir, preset, save_checkpoints, weights))
    else:
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer

        args = Config(**_rl_args(Config, cfg, output_dir, preset, save_checkpoints, weights), loss_type=hp.loss_type)
    torch.manual_seed(cfg.seed)
    model = _base_model(preset_name, preset, method)
    if setting == "rloo":
        trainer = Trainer(model=model, args=args, **common)
    else:
        import os

        rollout = None
        if setting == "grpo_reflect_retry":
            rollout = ReflectRetryRollout(tok, kept, hp, base_model=retry_base, seed=cfg.seed)
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
        trainer = Trainer(model=model, args=args, rollout_func=rollout, **common)
    if retry_base is not None:
        retry_base.to(trainer.accelerator.device)   # in place: the rollout holds this module
    trainer.dropped_prompts = len(train_examples) - len(kept)
    return _qlora_adapter_dtype(preset, trainer)
