"""Train the learning settings with TRL + PEFT (LoRA on the preset's base).

| setting    | data          | adapters                | objective |
|------------|---------------|-------------------------|-----------|
| one_stage  | D+            | `.`                     | SFT: one-stage prompt -> reflection + "Answer:" + trial-2 reasoning |
| two_stage  | D+            | `reflector`, `corrector`| SFT: test reflection prompt -> reflection; trial-2 prompt (with r and trial 1) -> trial 2 |
| dpo_pm     | D±            | `.`                     | DPO: test reflection prompt, chosen vs rejected reflection |
| dpo_pref   | Dpref         | `.`                     | same, on judge-ranked pairs |
| sft_qa     | train items   | `.`                     | SFT baseline: trial-1 prompt -> the gold answer in the answer form |

Every example is in prompt/completion (or prompt/chosen/rejected) form rendered by the model's own chat
template, so the loss covers only the target turn (tests check the labels). The prompts are the ones
evaluation uses. Empty data -> the setting records "no training data" and the pipeline goes on.

Resumable: with a checkpoint folder, each adapter role saves trainer checkpoints (adapter, optimizer,
scheduler, RNG, log history) every `save_steps` into `<checkpoints>/<role>-<key>/`, where the key hashes
everything that decides the result (base, LoRA, learning rate, hyper-parameters, seed, the rendered
examples, world size, library versions): a killed run resumes from its newest complete checkpoint, and a
checkpoint made for other data or params is never resumed. A finished role keeps its adapter under
`final/`, so a two-stage run killed in its corrector reuses the reflector as is. Success removes them.

Every saved adapter is checked statically for vLLM's LoRA loader (`check_vllm_lora_compat`); loading
in vLLM itself is verified only on a GPU machine (`bench/gpu_check_vllm_lora.py`).

Modules: `data` (examples, row checks), `model` (base, LoRA, shared TrainingArguments), `sft` / `dpo`
(one trainer each), `checkpoint` (resume), `card` (cards, dvclive curves), `vllm_compat`, `run`
(`train_setting`). Every public name stays importable from `reflectevo.training`.
"""

# ruff: noqa: F401 - re-exports (private helpers too: tests and bench/ scripts use them)
from __future__ import annotations

from reflectevo.training.card import _live, _log_to_live, replay_history, step_logger, write_card
from reflectevo.training.checkpoint import (
    CHECKPOINT_ONLY,
    KEY_FILE,
    RoleCheckpoints,
    checkpoint_key,
    latest_checkpoint,
    remove_checkpoints,
)
from reflectevo.training.data import (
    ADAPTERS,
    RL_SETTINGS,
    SETTINGS,
    data_hash,
    examples,
    family,
    rl_rows,
    row_item,
    row_problem,
)
from reflectevo.training.dist import _barrier, is_main_process
from reflectevo.training.dpo import build_dpo_trainer
from reflectevo.training.model import (
    _adapter_params_to,
    _base_model,
    _common_args,
    _lora,
    _portable_adapter,
    _portable_model,
    _qlora_adapter_dtype,
    _tokens_per_s,
    _warmup_kwargs,
    peft_config_for,
    qlora_config,
    refuse_unshardable_4bit,
    sharded_launcher,
    train_method,
)
from reflectevo.training.rl import build_rl_trainer
from reflectevo.training.run import train_setting
from reflectevo.training.sft import build_sft_trainer
from reflectevo.training.vllm_compat import (
    VLLM_LORA_ARCHITECTURES,
    VLLM_LORA_MODULES,
    VLLM_MAX_LORA_RANKS,
    _base_config,
    check_vllm_lora_compat,
)
