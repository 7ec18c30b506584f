"""The `grpo_reflect_retry` rollout: TRL's `rollout_func`, one reflect -> retry round of the protocol
(`reflectevo.protocol.rounds`, the code generate and evaluate run) on the live policy.

Per prompt (the test reflection prompt on a failed trial-1 attempt), the policy samples a reflection (it ends
at EOS or where it starts a new block); the retry follows as the next turn of the same conversation (the
trial-2 prompt's text as the user turn, then the task's trial prefix) and is a trial: it ends at its first
answer, at a ramble guard or the budget, and one without an answer gets the answer step. It is greedy as in
evaluation (sampled at the RL temperature with `train_retry`, so its trained tokens are on-policy), by the
policy or by the frozen base (`retry_by: base`: the adapter disabled; with full fine-tuning a frozen copy).
The verdicts go to the rewards (the `retry` column); `env_mask` keeps the loss on the reflection
(`reflectevo.training.masking`). Texts are tokenized back into the ids TRL trains on (a few tokens may split
differently than when sampled).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

from reflectevo.protocol.rounds import Job, Reflection, RoundSpec, reflect, retry
from reflectevo.sampling import Sampling, stop_position
from reflectevo.tasks import Item, Task
from reflectevo.tasks.registry import TaskCache
from reflectevo.training.config import RLHyper
from reflectevo.training.masking import join_rollout, retry_turn_text


def rollout_seed(seed: int, call: int, row: int, phase: str) -> int:
    """The sampling seed of one rollout row: distinct per training seed, rollout call, row (the group's
    copies of a prompt differ) and phase (reflection, retry), stable across runs and resumes."""
    digest = hashlib.sha256(f"rl|{seed}|{call}|{row}|{phase}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def retry_pieces(text: str, task: Task, forced: bool) -> list[tuple[str, bool]]:
    """A retry's text as (piece, written by the environment?): with the answer step (`forced`), the policy's
    thought, the forced answer opening ("\\nAction: Finish["), then the answer the policy completed."""
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


def round_spec(hp: RLHyper, oracle: bool) -> RoundSpec:
    """The RL settings as a protocol round: the reflection sampled at the RL temperature within
    `max_completion_length`; the retry within `max_new_tokens_retry`, greedy unless `train_retry`; the retry
    prompt shows the attempt and (oracle) names the rejected answer."""
    return RoundSpec(oracle=oracle, max_new_tokens_trial=hp.max_new_tokens_retry,
                     max_new_tokens_reflection=hp.max_completion_length, temperature=hp.temperature,
                     retry_temperature=hp.temperature if hp.train_retry else 0.0, use_previous=True,
                     name_rejected=True)


class ReflectRetryRollout:
    """TRL `rollout_func` for grpo_reflect_retry (see the module docstring)."""

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
        from reflectevo.backends.hf import TransformersBackend, synced_forwards

        tok, hp = self.tok, self.hp
        model = trainer.accelerator.unwrap_model(trainer.model)
        eos_ids = list(getattr(trainer, "eos_token_ids", None) or [tok.eos_token_id])
        rows = [self._row(p) for p in prompts]
        oracle = bool(rows[0]["oracle"]) if rows else True
        spec = round_spec(hp, oracle)
        self.calls += 1
        call = self.calls
        jobs = []
        for i, r in enumerate(rows):
            item = Item.from_dict(json.loads(r["item"]))
            jobs.append(Job(item, self.tasks.of(item), latest=r["trial1"], rejected=r["rejected"] or None, key=i,
                            seed=lambda rnd, phase, i=i: rollout_seed(self.seed, call, i, phase)))
        texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [self._ids(t) for t in texts]
        # under FSDP / ZeRO-3 every forward is a collective: all ranks step until every rank is done
        with _eval_mode(model), synced_forwards(model, tok.pad_token_id) as sync:
            policy = TransformersBackend.around(model, tok, eos_ids, batch_size=len(prompts), sync=sync)
            refl = reflect(jobs, policy, spec)

        def retry_prompt(job: Job, r: Reflection | None, messages: list[dict[str, str]]) -> str:
            """The retry as the next turn of the reflection's conversation (what TRL trains on)."""
            assert r is not None
            turn = retry_turn_text(tok, prompts[job.key], r.text, messages, job.task.trial_prefix())
            return r.prompt + r.text + turn

        retry_model, guard = model, contextlib.nullcontext()
        if hp.retry_by == "base":
            if self.base_model is not None:
                retry_model = self.base_model
            elif hasattr(model, "disable_adapter"):
                guard = model.disable_adapter()
        with _eval_mode(retry_model), guard, synced_forwards(retry_model, tok.pad_token_id) as sync:
            retry_backend = TransformersBackend.around(retry_model, tok, eos_ids, batch_size=len(prompts), sync=sync)
            retries = retry(jobs, retry_backend, spec, refl, retry_prompt=retry_prompt)
        completion_ids, masks, repeats = [], [], []
        for job, r, a in zip(jobs, refl, retries):
            ended = r.gen.stop_reason == "eos"
            rid = self._ids(r.text) + ([eos_ids[0]] if ended else [])
            turn = a.prompt[len(r.prompt) + len(r.text):]
            head = join_rollout(rid, ended, self._ids(turn), [])
            tid, forced = [], []
            for piece, by_env in retry_pieces(a.gen.text, job.task, a.gen.forced):
                ids = self._ids(piece)
                tid += ids
                forced += [by_env] * len(ids)
            if stop_position(a.gen.text, Sampling(1, stop_regex=job.task.answer_stop())) is not None:
                tid.append(eos_ids[0])  # ended at its answer: an end token, so TRL does not count it truncated
                forced.append(False)
            n_refl, n_turn = head["n_reflection"], head["n_turn"]
            seq = join_rollout(head["completion_ids"][:n_refl], False, head["completion_ids"][n_refl:n_refl + n_turn],
                               tid, hp.train_retry, forced)
            completion_ids.append(seq["completion_ids"])
            masks.append(seq["env_mask"])
            extracted = a.verdict.extracted
            repeats.append(1.0 if job.rejected and extracted is not None and extracted.strip() == job.rejected.strip()
                           else 0.0)
        n = len(prompts)
        self.last = {"repeat_rate": sum(repeats) / n, "correct": sum(bool(a.verdict.correct) for a in retries) / n,
                     "answer_step": sum(a.gen.forced for a in retries) / n,
                     "reflection_truncated": sum(r.gen.stop_reason == "length" for r in refl) / n}
        metrics = getattr(trainer, "_log_metric", None)
        if metrics is not None:
            metrics("retry/repeat_rate", self.last["repeat_rate"])
            metrics("retry/correct", self.last["correct"])
            metrics("retry/answer_step", self.last["answer_step"])
            metrics("reflection/truncated", self.last["reflection_truncated"])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": masks,
                "retry": [a.text for a in retries], "retry_correct": [bool(a.verdict.correct) for a in retries]}
