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

import contextlib
import json
from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.training.config import RLHyper, TrainConfig
from reflectevo.settings import registry
from reflectevo.tasks import Item, Task, TaskCache
from reflectevo.training.masking import join_rollout, retry_turn_text
from reflectevo.training.model import (
    _base_model,
    _common_args,
    _qlora_adapter_dtype,
    peft_config_for,
    train_method,
)
from reflectevo.training.rewards import judge, reward_functions


def rollout_seed(seed: int, call: int, row: int, phase: str) -> int:
    """The sampling seed of one rollout row: distinct per training seed, rollout call, row (the group's
    copies of a prompt differ) and phase (reflection, retry), stable across runs and resumes."""
    import hashlib

    digest = hashlib.sha256(f"rl|{seed}|{call}|{row}|{phase}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def retry_pieces(text: str, task: Task, forced: bool) -> list[tuple[str, bool]]:
    """A retry's text as (piece, written by the environment?): with the answer step (`forced`), the policy's
    thought, the forced answer opening ("\nAction: Finish["), then the answer the policy completed."""
    opening = (task.answer_opening() or ("", ""))[0]
    cut = text.rfind(opening) if forced and opening else -1
    if cut < 0:
        return [(text, False)]
    return [(text[:cut], False), (opening, True), (text[cut + len(opening):], False)]


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ReflectRetryRollout:
    """TRL `rollout_func` for grpo_reflect_retry, with the trial mechanics generate and evaluate use
    (`reflectevo.mechanics`, through the transformers backend on the live model): per prompt, the policy
    samples a reflection (reflection stops: it ends at EOS or where it starts a new block); the retry turn
    (trial-2 prompt) follows; the retry is a trial (ends at its first answer, at a ramble guard or the budget;
    one that ended without an answer gets the answer step), greedy as in evaluation (sampled at the RL
    temperature when `train_retry`, so its trained tokens are on-policy), by the policy or by the frozen base
    (`retry_by: base`: the adapter disabled; with full fine-tuning a frozen copy). The `retry` texts go to the
    rewards; `env_mask` keeps the loss on the reflection (see `reflectevo.training.masking`). Texts are
    tokenized back into the ids TRL trains on (a few tokens may split differently than when sampled)."""

    def __init__(self, tokenizer, examples: list[dict[str, Any]], hp: RLHyper, base_model=None, seed: int = 0) -> None:
        self.tok, self.hp, self.base_model, self.seed = tokenizer, hp, base_model, seed
        self.rows = {json.dumps(ex["prompt"], sort_keys=True): ex for ex in examples}
        self.tasks = TaskCache()   # each item's task with its own options (multiple choice ...)
        self.calls = 0
        self.last: dict[str, Any] = {}

    def _row(self, prompt) -> dict[str, Any]:
        return self.rows[json.dumps(prompt, sort_keys=True)]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def __call__(self, prompts: list[Any], trainer) -> dict[str, Any]:
        from reflectevo.backends import Sampling, stop_position
        from reflectevo.backends.hf import TransformersBackend
        from reflectevo.mechanics import answer_step, attempt_text, generate_per_task, reflection_sampling, trial_sampling
        from reflectevo.prompts import trial_messages

        tok, hp = self.tok, self.hp
        model = trainer.accelerator.unwrap_model(trainer.model)
        eos_ids = list(getattr(trainer, "eos_token_ids", None) or [tok.eos_token_id])
        rows = [self._row(p) for p in prompts]
        items = [Item.from_dict(json.loads(r["item"])) for r in rows]
        row_tasks = [self.tasks.of(it) for it in items]
        texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [self._ids(t) for t in texts]
        self.calls += 1
        seeds = {phase: [rollout_seed(self.seed, self.calls, i, phase) for i in range(len(prompts))]
                 for phase in ("reflection", "retry")}
        policy = TransformersBackend.around(model, tok, eos_ids, batch_size=len(prompts))
        with _eval_mode(model):
            refl = policy.generate(texts, reflection_sampling(hp.max_completion_length, hp.temperature),
                                   seeds=seeds["reflection"])
        heads, contexts = [], []
        for p, r, it, task, text, g in zip(prompts, rows, items, row_tasks, texts, refl):
            ended = g.stop_reason == "eos"
            rid = self._ids(g.text) + ([eos_ids[0]] if ended else [])
            retry_msgs = trial_messages(task, it, reflection=g.text.strip(), previous=r["trial1"], retry=True,
                                        oracle=r["oracle"], rejected=(r["rejected"] or None) if r["oracle"] else None)
            turn = retry_turn_text(tok, p, g.text, retry_msgs, task.trial_prefix())
            heads.append(join_rollout(rid, ended, self._ids(turn), []))
            contexts.append(text + g.text + turn)
        retry_model, guard = model, contextlib.nullcontext()
        if hp.retry_by == "base":
            if self.base_model is not None:
                retry_model = self.base_model
            elif hasattr(model, "disable_adapter"):
                guard = model.disable_adapter()
        retry_backend = TransformersBackend.around(retry_model, tok, eos_ids, batch_size=len(prompts))
        temperature = hp.temperature if hp.train_retry else 0.0
        with _eval_mode(retry_model), guard:
            retries = generate_per_task(retry_backend, contexts, row_tasks,
                                        lambda t: trial_sampling(t, hp.max_new_tokens_retry, temperature),
                                        seeds=seeds["retry"])
            retries = answer_step(retry_backend, contexts, row_tasks, retries, seeds["retry"])
        completion_ids, masks, retry_texts, repeats = [], [], [], []
        for head, it, task, r, ctx, g in zip(heads, items, row_tasks, rows, contexts, retries):
            tid, forced = [], []
            for piece, by_env in retry_pieces(g.text, task, g.forced):
                ids = self._ids(piece)
                tid += ids
                forced += [by_env] * len(ids)
            if stop_position(g.text, Sampling(1, stop_regex=task.answer_stop())) is not None:
                tid.append(eos_ids[0])  # ended at its answer: an end token, so TRL does not count it truncated
                forced.append(False)
            n_refl, n_turn = head["n_reflection"], head["n_turn"]
            seq = join_rollout(head["completion_ids"][:n_refl], False, head["completion_ids"][n_refl:n_refl + n_turn],
                               tid, hp.train_retry, forced)
            completion_ids.append(seq["completion_ids"])
            masks.append(seq["env_mask"])
            attempt = attempt_text(ctx, g.text, task)
            retry_texts.append(attempt)
            extracted = task.extract(attempt)
            repeats.append(1.0 if r["rejected"] and extracted is not None and extracted.strip() == r["rejected"].strip()
                           else 0.0)
        correct = judge(retry_texts, items, self.tasks)
        n = len(prompts)
        self.last = {"repeat_rate": sum(repeats) / n, "correct": sum(correct) / n,
                     "answer_step": sum(g.forced for g in retries) / n,
                     "reflection_truncated": sum(g.stop_reason == "length" for g in refl) / n}
        metrics = getattr(trainer, "_log_metric", None)
        if metrics is not None:
            metrics("retry/repeat_rate", self.last["repeat_rate"])
            metrics("retry/correct", self.last["correct"])
            metrics("retry/answer_step", self.last["answer_step"])
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
