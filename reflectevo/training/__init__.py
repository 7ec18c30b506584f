"""Train the learning settings with TRL + PEFT (LoRA on the preset's base, or every weight).

| setting    | data          | adapters                | objective |
|------------|---------------|-------------------------|-----------|
| one_stage  | D+            | `.`                     | SFT: one-stage prompt -> reflection + "Answer:" + trial-2 reasoning |
| two_stage  | D+            | `reflector`, `corrector`| SFT: test reflection prompt -> reflection; trial-2 prompt (with r and trial 1) -> trial 2 |
| dpo_pm     | D±            | `.`                     | DPO: test reflection prompt, chosen vs rejected reflection |
| dpo_pref   | Dpref         | `.`                     | same, on judge-ranked pairs |
| sft_qa     | train items   | `.`                     | SFT baseline: trial-1 prompt -> the gold answer in the answer form |
| grpo_one_stage, rloo | data/raw | `.`              | online RL (GRPO, RLOO), verifier reward on the one-stage answer |
| grpo_reflect_retry | data/raw | `.`                 | GRPO, verifier reward on the retry after the reflection |

The settings themselves are listed once, in `reflectevo.settings`. Every example is in prompt/completion
(or prompt/chosen/rejected) form rendered by the model's own chat template, so the loss covers only the
target turn (tests check the labels). The prompts are the ones evaluation uses. Empty data -> the setting
records "no training data" and the pipeline goes on.

Resumable: with a checkpoint folder, each adapter role saves trainer checkpoints (adapter, optimizer,
scheduler, RNG, log history) every `save_steps` into `<checkpoints>/<role>-<key>/`, where the key hashes
everything that decides the result (base, LoRA, learning rate, hyper-parameters, seed, the rendered
examples, world size, library versions): a killed run resumes from its newest complete checkpoint, and a
checkpoint made for other data or params is never resumed. A finished role keeps its adapter under
`final/`, so a two-stage run killed in its corrector reuses the reflector as is. Success removes them.

Every saved adapter is checked statically for vLLM's LoRA loader (`check_vllm_lora_compat`); loading
in vLLM itself is verified only on a GPU machine (`bench/gpu_check_vllm_lora.py`).

Modules: `data` (examples, row checks), `model` (base, LoRA, shared TrainingArguments, the learning-rate
rule), `offline` (SFT and DPO trainers), `rl` (GRPO / RLOO trainers), `rollout` (the reflect -> retry
rollout), `rewards`, `masking`, `checkpoint` (resume), `card` (cards, dvclive curves),
`run` (`train_setting`), `stage` (the train stage's work), `config` (the train section: hyper-parameters of each
trainer family).
"""
