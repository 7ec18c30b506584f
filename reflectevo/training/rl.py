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


def check_vllm_rollouts(setting: str, hp: RLHyper) -> None:
    """`train.rl.use_vllm` needs CUDA and vllm, and applies to TRL's own rollouts (not grpo_reflect_retry's)."""
    import importlib.util

    import torch

    from reflectevo.errors import ReflectEvoError

    if not hp.use_vllm:
        return
    if setting == "grpo_reflect_retry":
        raise ReflectEvoError("train.rl.use_vllm: grpo_reflect_retry samples its two turns itself with transformers "
                              "(ReflectRetryRollout); set use_vllm: false for it")
    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        raise ReflectEvoError("train.rl.use_vllm: needs a CUDA GPU and vllm (pip install '.[vllm]'); set it to false "
                              "on this machine")


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
    check_vllm_rollouts(setting, hp)
    tok = load_tokenizer(preset_name, preset)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    kept = fit_prompts(tok, train_examples, hp.max_length)
    funcs, weights = reward_functions(registry().settings[setting].reward, dict(hp.reward_weights))
    torch.manual_seed(cfg.seed)
    model = _base_model(preset_name, preset)
    common = {"model": model, "reward_funcs": funcs, "processing_class": tok, "train_dataset": Dataset.from_list(kept),
              "peft_config": peft_config_for(preset, method)}
    if setting == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(**_rl_args(RLOOConfig, cfg, output_dir, preset, save_checkpoints, weights))
        trainer = RLOOTrainer(args=args, **common)
    else:
        import os

        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**_rl_args(GRPOConfig, cfg, output_dir, preset, save_checkpoints, weights),
                          loss_type=hp.loss_type)
        rollout = None
        if setting == "grpo_reflect_retry":
            base = None
            if hp.retry_by == "base" and method == "full":
                base = _base_model(preset_name, preset).eval().requires_grad_(False)
            rollout = ReflectRetryRollout(tok, kept, hp, base_model=base, seed=cfg.seed)
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
        trainer = GRPOTrainer(args=args, rollout_func=rollout, **common)
    trainer.dropped_prompts = len(train_examples) - len(kept)
    return _qlora_adapter_dtype(preset, trainer)
