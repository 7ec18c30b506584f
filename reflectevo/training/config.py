"""The train section of params.yaml: hyper-parameters of the SFT, DPO and RL trainers (TRL pairs
`sft_trainer.py` with `sft_config.py`; these sit beside `offline.py` and `rl.py` the same way). The train
stage loads them with `load_section(params, "train", TrainConfig)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from reflectevo.config.loader import (Bool, Ge, Int, Named, NonNegFloat, NonNegInt, PosFloat, PosInt,
                                      Probability, Schema, Seed, choices)
from reflectevo.config.sections import Protocol
from reflectevo.errors import ReflectEvoError

LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt"]                 # transformers' lr_scheduler_type
Reward = Literal["correct", "format"]                 # reflectevo.training.rewards: the verifier, the answer form
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]   # trl.GRPOConfig.loss_type
Method = Literal["auto", "lora", "full"]
RetryBy = Literal["policy", "base"]
LR_SCHEDULERS, REWARDS, LOSS_TYPES, TRAIN_METHODS = choices(LrScheduler), choices(Reward), choices(LossType), choices(Method)


@dataclass(frozen=True)
class SFTHyper(Schema):
    epochs: PosFloat = 1.0
    max_steps: Annotated[Int, Ge(-1)] = -1      # > 0 overrides epochs
    batch_size: PosInt = 4
    grad_accum: PosInt = 1
    max_length: PosInt = 1024
    warmup_ratio: Probability = 0.0
    lr_scheduler: LrScheduler = "linear"        # paper DPO: cosine
    weight_decay: NonNegFloat = 0.0             # paper two-stage SFT: 0.01
    save_steps: NonNegInt = 50                  # checkpoint every N optimizer steps (resume after a kill); 0 = none
    save_total_limit: PosInt = 2                # checkpoints kept per adapter role (newest)

    def check(self, where: str) -> None:
        if self.max_steps == 0:   # transformers reads 0 as "no cap" (epochs), which a user writing 0 rarely means
            raise ReflectEvoError(f"{where}.max_steps: must be -1 (train for `epochs`) or >= 1, got 0")


@dataclass(frozen=True)
class DPOHyper(SFTHyper):
    beta: PosFloat = 0.1                        # paper: 0.01 (full-parameter DPO)


@dataclass(frozen=True)
class RLHyper(SFTHyper):
    """Online RL (grpo_one_stage, grpo_reflect_retry, rloo). TRL 1.16 defaults noted where ours differ."""

    enabled: Bool = False                       # false: the RL settings write a "disabled" card (seconds)
    protocol: Protocol = "oracle"               # oracle: failed trial-1 attempts + notice; intrinsic: every item
    limit: NonNegInt = 0                        # prompts drawn from data/raw (0 = all)
    num_generations: Annotated[Int, Ge(2)] = 4  # rollouts per prompt (TRL: 8); the group is the baseline
    beta: NonNegFloat = 0.0                     # KL to the reference (TRL GRPO: 0.0; RLOO: 0.05)
    loss_type: LossType = "dapo"                # TRL GRPO default
    max_completion_length: PosInt = 64          # TRL: 512 (one_stage: reflection + answer; reflect_retry: reflection)
    max_new_tokens_retry: PosInt = 64           # grpo_reflect_retry: the retry's budget
    temperature: PosFloat = 1.0                 # TRL default
    lr: PosFloat = 1.0e-5                       # TRL GRPO default 1e-6 (full FT); LoRA wants more
    reward_weights: dict[Annotated[Reward, Named("reward")], NonNegFloat] = field(
        default_factory=lambda: {"correct": 1.0, "format": 0.0})
    retry_by: RetryBy = "policy"                # grpo_reflect_retry: policy (the adapter) | base (adapter disabled)
    train_retry: Bool = False                   # grpo_reflect_retry: also train the retry tokens (env_mask 1)
    use_vllm: Bool = False                      # grpo_one_stage / rloo rollouts by TRL's vLLM (colocate; CUDA + vllm)

    def check(self, where: str) -> None:
        super().check(where)
        if self.batch_size % self.num_generations:
            raise ReflectEvoError(f"{where}.batch_size: {self.batch_size} completions per step must be a multiple of "
                                  f"num_generations ({self.num_generations})")
        if self.train_retry and self.retry_by != "policy":
            raise ReflectEvoError(f"{where}.train_retry: true needs retry_by: policy (the frozen base's retry tokens are "
                                  "not the policy's samples to train)")
        if not any(w > 0 for w in self.reward_weights.values()):
            raise ReflectEvoError(f"{where}.reward_weights: at least one weight must be > 0")


@dataclass(frozen=True)
class TrainConfig(Schema):
    """Hyper-parameters shared by the settings (dvc.yaml `vars.settings` lists which settings run)."""

    seed: Seed = 0
    method: Annotated[Method, Named("training method")] = "auto"  # auto: the preset's train_method
    gradient_checkpointing: Bool = False        # recompute activations in backward (full FT of big models)
    sft: SFTHyper = field(default_factory=SFTHyper)
    dpo: DPOHyper = field(default_factory=DPOHyper)
    rl: RLHyper = field(default_factory=RLHyper)
    keep_checkpoints: Bool = False              # keep checkpoints/<setting>/ after a successful run
