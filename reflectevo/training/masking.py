"""Token layout of a reflect -> retry rollout, and which of its tokens are trained (`env_mask`).

One rollout is one token sequence, as TRL's GRPO loss needs it:

    prompt_ids      the reflection prompt (test reflection prompt on a trial-1 attempt), chat-rendered
    completion_ids  = reflection                      env_mask 1  (the policy's action)
                    + retry turn (end of turn, the trial-2 prompt as the next user turn, the assistant
                      header, the task's trial prefix "Thought:")
                                                      env_mask 0  (environment text)
                    + retry (the second attempt)      env_mask 0, or 1 with `train.rl.train_retry`
                      (a retry that ended without an answer gets the trial mechanics' answer step: the
                      forced "\nAction: Finish[" is environment text, env_mask 0 either way)

The retry is generated on exactly this sequence, so a trained retry is trained in the context it was
sampled in. The trial-2 user turn has the text evaluation's retry prompt has (`prompts.trial_messages`
with the reflection, the previous attempt and, oracle, the rejected answer); evaluation sends it as a fresh
single-turn prompt (a documented deviation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def retry_turn_text(tokenizer, prompt_messages: list[dict[str, str]], reflection: str,
                    retry_messages: list[dict[str, str]], trial_prefix: str) -> str:
    """The text between the reflection and the retry: what the chat template puts after the assistant's
    reflection when the retry prompt follows as the next user turn, up to the assistant header, then the
    trial prefix."""
    rendered_prompt = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*prompt_messages, {"role": "assistant", "content": reflection}, *retry_messages],
        add_generation_prompt=True, tokenize=False)
    if not full.startswith(rendered_prompt):
        raise ValueError("the chat template renders the prompt differently inside a conversation")
    core = reflection.strip()
    pos = full.find(core, len(rendered_prompt)) if core else len(rendered_prompt)
    if pos < 0:
        raise ValueError("the chat template changed the reflection's text")
    return full[pos + len(core):] + (trial_prefix or "")


def env_mask(n_reflection: int, n_turn: int, n_retry: int, train_retry: bool = False) -> list[int]:
    """1 on the reflection tokens, 0 on the retry turn, 0 (or 1 with `train_retry`) on the retry."""
    return [1] * n_reflection + [0] * n_turn + [1 if train_retry else 0] * n_retry


def cut_at_eos(ids: Sequence[int], eos_ids: Sequence[int], pad_id: int | None) -> tuple[list[int], bool]:
    """Generated ids up to and including the first end-of-sequence token (pads dropped); whether one was seen."""
    out: list[int] = []
    for t in ids:
        if t in eos_ids:
            out.append(int(t))
            return out, True
        if pad_id is not None and t == pad_id:
            break
        out.append(int(t))
    return out, False


def join_rollout(reflection_ids: list[int], reflection_ended: bool, turn_ids: list[int],
                 retry_ids: list[int], train_retry: bool = False,
                 retry_forced: Sequence[bool] | None = None) -> dict[str, Any]:
    """completion ids + env_mask of one rollout. A reflection that ended with the end-of-turn token keeps it
    (trained: stopping is the policy's choice); the retry turn's own copy of that token is then dropped.
    `retry_forced` (one flag per retry token): tokens the environment wrote into the retry (the answer
    step's opening), never trained."""
    if reflection_ended and turn_ids[:1] == reflection_ids[-1:]:
        turn_ids = turn_ids[1:]
    completion = [*reflection_ids, *turn_ids, *retry_ids]
    mask = env_mask(len(reflection_ids), len(turn_ids), len(retry_ids), train_retry)
    if retry_forced is not None:
        if len(retry_forced) != len(retry_ids):
            raise ValueError(f"{len(retry_forced)} forced flags for {len(retry_ids)} retry tokens")
        start = len(mask) - len(retry_ids)
        mask[start:] = [0 if f else m for f, m in zip(retry_forced, mask[start:])]
    return {"completion_ids": completion, "env_mask": mask, "n_reflection": len(reflection_ids),
            "n_turn": len(turn_ids), "n_retry": len(retry_ids)}
