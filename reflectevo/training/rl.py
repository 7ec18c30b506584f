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
`generate` on the live policy (`ReflectRetryRollout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, RLHyper, TrainConfig
from reflectevo.tasks import Item
from reflectevo.training.masking import cut_at_eos, join_rollout, retry_turn_text
from reflectevo.training.model import (
    _base_model,
    _common_args,
    _qlora_adapter_dtype,
    peft_config_for,
    train_method,
)
from reflectevo.training.rewards import _Tasks, judge, reward_functions

REWARD_KIND = {"grpo_one_stage": "one_stage", "rloo": "one_stage", "grpo_reflect_retry": "reflect_retry"}

def _left_pad(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


def sample(model, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, eos_ids: list[int],
           pad_id: int) -> list[tuple[list[int], bool]]:
    """Batched generation from token ids (left-padded): per row (new ids up to the first end token, ended?).
    `temperature` 0 = greedy."""
    import torch

    ids, mask = _left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    kw: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=list(eos_ids), pad_token_id=pad_id, **kw)
    finally:
        model.train(was_training)
    return [cut_at_eos(row[ids.shape[1]:].tolist(), eos_ids, None if pad_id in eos_ids else pad_id) for row in out]


def first_answer_ids(tokenizer, ids: list[int], stop_regex: str | None) -> tuple[list[int], bool]:
    """(`ids` up to the token that completes the first answer, True) (a trial ends at its first answer, as
    in generation and evaluation), or (all of them, False) when no answer is complete."""
    import re

    if not stop_regex or not re.search(stop_regex, tokenizer.decode(ids, skip_special_tokens=True)):
        return ids, False
    pattern = re.compile(stop_regex)
    for n in range(1, len(ids) + 1):
        if pattern.search(tokenizer.decode(ids[:n], skip_special_tokens=True)):
            return ids[:n], True
    return ids, True


class ReflectRetryRollout:
    """TRL `rollout_func` for grpo_reflect_retry: per prompt, the policy samples a reflection; the retry turn
    (trial-2 prompt) follows; the retry is generated greedily (sampled at the RL temperature when
    `train_retry`, so its trained tokens are on-policy) by the policy, or by the frozen base (`retry_by: base`:
    the adapter disabled; with full fine-tuning a frozen copy). The `retry` texts go to the rewards; `env_mask`
    keeps the loss on the reflection (see `reflectevo.training.masking`)."""

    def __init__(self, tokenizer, examples: list[dict[str, Any]], hp: RLHyper, base_model=None) -> None:
        self.tok, self.hp, self.base_model = tokenizer, hp, base_model
        self.rows = {json.dumps(ex["prompt"], sort_keys=True): ex for ex in examples}
        self.tasks = _Tasks()
        self.last: dict[str, Any] = {}

    def _row(self, prompt) -> dict[str, Any]:
        return self.rows[json.dumps(prompt, sort_keys=True)]

    def __call__(self, prompts: list[Any], trainer) -> dict[str, Any]:
        import contextlib

        from reflectevo.prompts import trial_messages

        tok, hp = self.tok, self.hp
        model = trainer.accelerator.unwrap_model(trainer.model)
        eos_ids = list(getattr(trainer, "eos_token_ids", None) or [tok.eos_token_id])
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
        rows = [self._row(p) for p in prompts]
        items = [Item.from_dict(json.loads(r["item"])) for r in rows]
        prompt_ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)["input_ids"] for p in prompts]
        refl = sample(model, prompt_ids, hp.max_completion_length, hp.temperature, eos_ids, pad_id)
        heads, contexts = [], []
        for p, r, it, pid, (rid, ended) in zip(prompts, rows, items, prompt_ids, refl):
            task = self.tasks[it.task]
            text = tok.decode(rid, skip_special_tokens=True)
            retry_msgs = trial_messages(task, it, reflection=text.strip(), previous=r["trial1"], retry=True,
                                        oracle=r["oracle"], rejected=(r["rejected"] or None) if r["oracle"] else None)
            turn = retry_turn_text(tok, p, text, retry_msgs, task.trial_prefix())
            head = join_rollout(rid, ended, tok(turn, add_special_tokens=False)["input_ids"], [])
            heads.append(head)
            contexts.append(pid + head["completion_ids"])
        retry_model, guard = model, contextlib.nullcontext()
        if hp.retry_by == "base":
            if self.base_model is not None:
                retry_model = self.base_model
            elif hasattr(model, "disable_adapter"):
                guard = model.disable_adapter()
        with guard:
            retries = sample(retry_model, contexts, hp.max_new_tokens_retry, hp.temperature if hp.train_retry else 0.0,
                             eos_ids, pad_id)
        completion_ids, masks, retry_texts, repeats = [], [], [], []
        for head, it, r, (tid, _) in zip(heads, items, rows, retries):
            task = self.tasks[it.task]
            tid, answered = first_answer_ids(tok, tid, task.answer_stop())
            if answered and (not tid or tid[-1] not in eos_ids):
                tid = [*tid, eos_ids[0]]  # ended at its answer: an end token, so TRL does not count it truncated
            n_refl, n_turn = head["n_reflection"], head["n_turn"]
            seq = join_rollout(head["completion_ids"][:n_refl], False, head["completion_ids"][n_refl:n_refl + n_turn],
                               tid, hp.train_retry)
            completion_ids.append(seq["completion_ids"])
            masks.append(seq["env_mask"])
            text = task.trial_prefix() + " " + tok.decode(tid, skip_special_tokens=True)
            retry_texts.append(text)
            extracted = task.extract(text)
            repeats.append(1.0 if r["rejected"] and extracted is not None and extracted.strip() == r["rejected"].strip()
                           else 0.0)
        correct = judge(retry_texts, items, self.tasks)
        self.last = {"repeat_rate": sum(repeats) / len(repeats), "correct": sum(correct) / len(correct),
                     "reflection_truncated": sum(not e for _, e in refl) / len(refl)}
        metrics = getattr(trainer, "_log_metric", None)
        if metrics is not None:
            metrics("retry/repeat_rate", self.last["repeat_rate"])
            metrics("retry/correct", self.last["correct"])
            metrics("reflection/truncated", self.last["reflection_truncated"])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": masks,
                "retry": retry_texts}


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

    from reflectevo.models import load_tokenizer

    hp = cfg.rl
    method = train_method(preset_name, preset, cfg.method)
    check_vllm_rollouts(setting, hp)
    tok = load_tokenizer(preset_name, preset)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    kept = fit_prompts(tok, train_examples, hp.max_length)
    funcs, weights = reward_functions(REWARD_KIND[setting], dict(hp.reward_weights))
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
            rollout = ReflectRetryRollout(tok, kept, hp, base_model=base)
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
        trainer = GRPOTrainer(args=args, rollout_func=rollout, **common)
    trainer.dropped_prompts = len(train_examples) - len(kept)
    return _qlora_adapter_dtype(preset, trainer)
