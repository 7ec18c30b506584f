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
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from reflectevo.config import ModelPreset, TrainConfig, to_dict
from reflectevo.jsonio import write_json, write_text
from reflectevo.modelcard import base_model_info, model_card_text
from reflectevo.prompts import (
    answer_target,
    one_stage_messages,
    one_stage_target,
    reflection_messages,
    trial_messages,
)
from reflectevo.tasks import Item, get_task

SETTINGS = ("one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa")
ADAPTERS = {"one_stage": ("one_stage",), "two_stage": ("reflector", "corrector"), "dpo_pm": ("reflector",),
            "dpo_pref": ("reflector",), "sft_qa": ("answerer",)}


def row_item(row: dict[str, Any]) -> Item:
    return Item(id=row["item_id"], task=row["task"], question=row["question"], answer=row["answer"],
                choices=tuple(row["choices"]) if row.get("choices") else None)


class _Tasks(dict):
    def __missing__(self, name: str):
        self[name] = get_task(name)
        return self[name]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def examples(setting: str, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Training examples per adapter role for a setting (rows: D+, D±/Dpref, or source items)."""
    tasks = _Tasks()
    if setting == "one_stage":
        return {"one_stage": [{"prompt": one_stage_messages(tasks[r["task"]], row_item(r), r["trial1"]),
                               "completion": _assistant(one_stage_target(r["reflection"], r["trial2"]))}
                              for r in rows]}
    if setting == "two_stage":
        return {
            "reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                           "completion": _assistant(r["reflection"].strip())} for r in rows],
            "corrector": [{"prompt": trial_messages(tasks[r["task"]], row_item(r), reflection=r["reflection"],
                                                    previous=r["trial1"] if r.get("retry_previous", True) else None,
                                                    retry=True, rejected=r.get("retry_rejected")),
                           "completion": _assistant(r["trial2"].strip())} for r in rows],
        }
    if setting in ("dpo_pm", "dpo_pref"):
        return {"reflector": [{"prompt": reflection_messages(row_item(r), r["trial1"], None),
                               "chosen": _assistant(r["chosen"]["reflection"].strip()),
                               "rejected": _assistant(r["rejected"]["reflection"].strip())} for r in rows]}
    if setting == "sft_qa":
        out = []
        for r in rows:  # unified-schema items
            item = Item.from_dict(r)
            task = tasks[item.task]
            out.append({"prompt": trial_messages(task, item), "completion": _assistant(answer_target(task, item))})
        return {"answerer": out}
    raise ValueError(f"unknown setting {setting!r}")


_ROW_FIELDS = {"sft": ("item_id", "task", "question", "answer", "trial1", "reflection", "trial2"),
               "dpo": ("item_id", "task", "question", "answer", "trial1", "chosen", "rejected"),
               "sft_qa": ("id", "task", "question", "answer")}


def row_problem(setting: str, row: dict[str, Any]) -> str | None:
    """What makes `row` unusable as a training row of `setting` (D+, D±/Dpref or a source item), or None."""
    kind = "sft_qa" if setting == "sft_qa" else "dpo" if setting.startswith("dpo") else "sft"
    for key in _ROW_FIELDS[kind]:
        if key not in row:
            return f"missing field {key!r}"
    if kind == "dpo":
        for side in ("chosen", "rejected"):
            if not isinstance(row[side], dict) or not isinstance(row[side].get("reflection"), str):
                return f"{side}.reflection: expected a string"
    if kind == "sft":
        for key in ("trial1", "reflection", "trial2"):
            if not isinstance(row[key], str):
                return f"{key}: expected a string, got {type(row[key]).__name__}"
    return None


def data_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()[:16]


def is_main_process() -> bool:
    """True on the main process (always, outside `accelerate launch` / torchrun)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _barrier() -> None:
    """Wait for every process (a no-op in one process): main-process file work is seen by all ranks after it."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """model_card.json, and README.md cards with Hub metadata: the setting's, and one per role folder."""
    if not is_main_process():
        return
    write_json(out_dir / "model_card.json", card)
    write_text(out_dir / "README.md", model_card_text(card))
    for role, sub in card.get("adapters", {}).items():
        if sub != "." and (out_dir / sub).is_dir():
            write_text(out_dir / sub / "README.md", model_card_text(card, role=role))


_LOGGED = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy",
           "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "eval_rewards/accuracies")


def _log_to_live(live, prefix: str, step: int, logs: dict[str, Any]) -> None:
    live.step = step
    for key in _LOGGED:
        if isinstance(logs.get(key), (int, float)):
            live.log_metric(f"{prefix}/{key}", float(logs[key]))


def replay_history(live, prefix: str, history: list[dict[str, Any]]) -> None:
    """Write an earlier run's log history (a resumed checkpoint's, or a reused adapter's) to dvclive, so the
    curves cover every global step once."""
    if live is None or not history:
        return
    for entry in history:
        if isinstance(entry.get("step"), int):
            _log_to_live(live, prefix, entry["step"], entry)
    live.make_summary()


def step_logger(live, prefix: str):
    """A TrainerCallback logging to dvclive against the *global step* (dvclive's own HF callback counts
    log events instead, and `report_to="dvclive"` rewrites dvc.yaml). Only the main process logs. On a
    resumed run it first replays the checkpoint's history (the steps before the kill)."""
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if live is not None and state.is_world_process_zero:
                replay_history(live, prefix, state.log_history)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is None or not state.is_world_process_zero or not logs:
                return
            _log_to_live(live, prefix, state.global_step, logs)
            live.make_summary()

    return StepLogger()


# --------------------------------------------------------------------------------------------------
# Checkpoints (resume after a kill)

CHECKPOINT_ONLY = ("save_steps", "save_total_limit")  # hyper-parameters that do not change the result
KEY_FILE = "key.json"
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


def checkpoint_key(setting: str, role: str, model_fp: dict[str, str], preset: ModelPreset, hp, seed: int,
                   train_examples: list[dict[str, Any]], eval_examples: list[dict[str, Any]]) -> tuple[str, dict]:
    """(key, what it hashes): a checkpoint is resumed only by a run whose key is the same."""
    import peft
    import torch
    import transformers
    import trl
    from accelerate import PartialState

    what = {"setting": setting, "role": role, "base": model_fp,
            "preset": {"dtype": preset.dtype, "quantization": preset.quantization, "lora": to_dict(preset.lora),
                       "lr": preset.lr_dpo if setting.startswith("dpo") else preset.lr_sft},
            "train": {k: v for k, v in to_dict(hp).items() if k not in CHECKPOINT_ONLY}, "seed": seed,
            "data": {"train": data_hash(train_examples), "eval": data_hash(eval_examples)},
            "num_processes": PartialState().num_processes,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                         "peft": peft.__version__}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16], what


def latest_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest *complete* trainer checkpoint in `run_dir`, with its global step. The trainer writes
    `trainer_state.json` last, so a checkpoint whose state parses and names its own step is whole; one cut
    off while saving (killed mid-write) is skipped for the one before it."""
    if not run_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in run_dir.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT_RE.fullmatch(p.name))), reverse=True)
    for step, path in found:
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("global_step") == step:
            return path, step
    return None


class RoleCheckpoints:
    """`<root>/<role>-<key>/`: `key.json`, the trainer's `checkpoint-<step>/` folders, and once the role has
    finished `final/` (the saved adapter + `result.json` + `log_history.json`)."""

    def __init__(self, root: Path, role: str, key: str, what: dict[str, Any]) -> None:
        self.root, self.role, self.key, self.what = root, role, key, what
        self.dir = root / f"{role}-{key}"

    def finished(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        final = self.dir / "final"
        try:
            return (json.loads((final / "result.json").read_text()),
                    json.loads((final / "log_history.json").read_text()))
        except (OSError, ValueError):
            return None

    def prepare(self) -> tuple[Path, int] | None:
        """Latest valid checkpoint to resume from (all ranks read it), after the main process dropped
        half-written ones."""
        found = latest_checkpoint(self.dir)
        _barrier()
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / KEY_FILE, {"key": self.key, **self.what})
            for p in self.dir.iterdir():  # newer than the resumed one = cut off by the kill
                m = _CHECKPOINT_RE.fullmatch(p.name)
                if m and p.is_dir() and (found is None or int(m.group(1)) > found[1]):
                    shutil.rmtree(p, ignore_errors=True)
        _barrier()
        return found

    def finish(self, adapter_dir: Path, result: dict[str, Any], history: list[dict[str, Any]], keep: bool) -> None:
        """Keep the finished adapter (atomically: `final.tmp` renamed) so a later rerun reuses it."""
        if is_main_process():
            tmp, final = self.dir / "final.tmp", self.dir / "final"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(adapter_dir, tmp, ignore=shutil.ignore_patterns(*_ROLE_DIRS, "model_card.json",
                                                                                 "README.md"))
            write_json(tmp / "result.json", result)
            write_json(tmp / "log_history.json", history)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if not keep:
                for p in self.dir.iterdir():
                    if _CHECKPOINT_RE.fullmatch(p.name):
                        shutil.rmtree(p, ignore_errors=True)
        _barrier()

    def reuse(self, adapter_dir: Path) -> None:
        if is_main_process():
            shutil.copytree(self.dir / "final", adapter_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("result.json", "log_history.json"))
        _barrier()


_ROLE_DIRS = ("reflector", "corrector")


def remove_checkpoints(root: Path) -> None:
    """Remove every keyed run folder under `root` (this setting's, stale keys included), then `root` if empty."""
    if not is_main_process() or not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (p / KEY_FILE).exists():
            shutil.rmtree(p, ignore_errors=True)
    try:
        root.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# vLLM LoRA compatibility (static)

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks (0.3x)
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_LORA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                           "GemmaForCausalLM", "Gemma2ForCausalLM")
_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama-family decoder, from its HF config."""
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return {}
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def check_vllm_lora_compat(adapter_dir: Path | str, max_lora_rank: int = 16,
                           base_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a saved PEFT adapter against what vLLM's LoRA loader (0.3x: `PEFTHelper`, `LoRAModel.
    from_local_checkpoint`) accepts: `r` <= `max_lora_rank` (one of vLLM's allowed values), `lora_alpha`,
    `target_modules` a list of projections vLLM can wrap for Llama-family models; no `modules_to_save`,
    DoRA, bias, LoRA bias or per-module rank/alpha patterns (vLLM ignores those: wrong scaling); tensors all
    `base_model.model.<module>.lora_A|B.weight` with A [r, in] and B [out, r] (and, given the base's HF
    `config.json` dict, `in`/`out`/layer indices that fit it and an architecture in
    `VLLM_LORA_ARCHITECTURES`). Static only: loading in vLLM is verified by `bench/gpu_check_vllm_lora.py`.

    Returns `{"compatible", "reasons", "r", "max_lora_rank", "min_max_lora_rank", "target_modules",
    "architecture"}`; `min_max_lora_rank` is the smallest `max_lora_rank` vLLM would need."""
    adapter_dir = Path(adapter_dir)
    reasons: list[str] = []
    out: dict[str, Any] = {"compatible": False, "reasons": reasons, "r": None, "max_lora_rank": max_lora_rank,
                           "min_max_lora_rank": None, "target_modules": [], "architecture": None}
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        reasons.append(f"max_lora_rank={max_lora_rank} is not a value vLLM accepts {VLLM_MAX_LORA_RANKS}")
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        reasons.append(f"adapter_config.json unreadable ({e.__class__.__name__})")
        return out
    if cfg.get("peft_type", "LORA") != "LORA":
        reasons.append(f"peft_type {cfg.get('peft_type')!r}: vLLM loads LoRA adapters only")
    for k in ("r", "lora_alpha", "target_modules"):
        if k not in cfg:
            reasons.append(f"adapter_config.json lacks {k!r} (vLLM requires it)")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        reasons.append(f"r={r!r} is not a positive integer")
        r = None
    else:
        out["r"] = r
        out["min_max_lora_rank"] = next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None)
        if r > max_lora_rank:
            need = out["min_max_lora_rank"]
            reasons.append(f"rank {r} > max_lora_rank {max_lora_rank}"
                           + (f" (start vLLM with max_lora_rank={need})" if need else " (above vLLM's largest, 512)"))
    if "lora_alpha" in cfg and not isinstance(cfg["lora_alpha"], (int, float)):
        reasons.append(f"lora_alpha={cfg['lora_alpha']!r} is not a number")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        reasons.append("target_modules is a regex string; write it as a list of module names")
        targets = []
    elif isinstance(targets, list):
        bad = sorted(t for t in targets if str(t).rsplit(".", 1)[-1] not in VLLM_LORA_MODULES)
        if bad:
            reasons.append(f"target_modules {bad}: vLLM's LoRA wraps only {', '.join(VLLM_LORA_MODULES)} "
                           "(no embeddings / lm_head)")
    else:
        targets = []
    if cfg.get("modules_to_save"):
        reasons.append(f"modules_to_save={cfg['modules_to_save']}: vLLM supports only none")
    if cfg.get("use_dora"):
        reasons.append("use_dora: vLLM does not support DoRA")
    if cfg.get("bias", "none") != "none":
        reasons.append(f"bias={cfg['bias']!r}: vLLM needs 'none'")
    if cfg.get("lora_bias"):
        reasons.append("lora_bias: vLLM loads no LoRA bias")
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            reasons.append(f"{k} is ignored by vLLM (per-module ranks/scales would be wrong)")
    for k in ("layer_replication", "target_parameters", "trainable_token_indices"):
        if cfg.get(k):
            reasons.append(f"{k}: not supported by vLLM's LoRA loader")

    arch = None
    expected: dict[str, tuple[int, int]] = {}
    n_layers = None
    if base_config:
        arch = (base_config.get("architectures") or [None])[0]
        out["architecture"] = arch
        if arch not in VLLM_LORA_ARCHITECTURES:
            reasons.append(f"architecture {arch}: not one this check knows vLLM's LoRA module names for "
                           f"({', '.join(VLLM_LORA_ARCHITECTURES)}); try bench/gpu_check_vllm_lora.py")
        expected = _expected_shapes(base_config)
        n_layers = base_config.get("num_hidden_layers")

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        reasons.append("no adapter_model.safetensors")
        return {**out, "compatible": False}
    from safetensors import safe_open

    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            m = _LORA_TENSOR.fullmatch(name)
            if not m:
                reasons.append(f"tensor {name}: not base_model.model.<module>.lora_A|B.weight (vLLM cannot parse it)")
                continue
            modules.setdefault(m["module"], {})[m["ab"]] = tuple(f.get_slice(name).get_shape())
    if not modules and not any(x.startswith("tensor ") for x in reasons):
        reasons.append("adapter_model.safetensors holds no LoRA tensors")
    leaves = set()
    for module, ab in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        leaves.add(leaf)
        if leaf not in VLLM_LORA_MODULES:
            reasons.append(f"{module}: vLLM has no LoRA for module {leaf!r}")
            continue
        if set(ab) != {"A", "B"}:
            reasons.append(f"{module}: lora_A and lora_B must both be present")
            continue
        a, b = ab["A"], ab["B"]
        if len(a) != 2 or len(b) != 2 or (r is not None and (a[0] != r or b[1] != r)) or a[0] != b[1]:
            reasons.append(f"{module}: shapes A{list(a)} B{list(b)} are not A[r, in], B[out, r] with r={r}")
            continue
        if leaf in expected and (a[1], b[0]) != expected[leaf]:
            reasons.append(f"{module}: in/out {a[1]}/{b[0]} do not match the base ({expected[leaf][0]}/"
                           f"{expected[leaf][1]})")
        layer = _LAYER.search(module)
        if n_layers is not None and layer and int(layer.group(1)) >= int(n_layers):
            reasons.append(f"{module}: layer {layer.group(1)} beyond the base's {n_layers} layers")
    if targets and leaves - {str(t).rsplit(".", 1)[-1] for t in targets}:
        reasons.append(f"tensors for {sorted(leaves - set(targets))} not listed in target_modules")
    out["target_modules"] = sorted(leaves)
    if len(reasons) > 12:
        reasons[12:] = [f"... and {len(reasons) - 12} more"]
    return {**out, "compatible": not reasons}


def _base_config(preset_name: str, preset: ModelPreset) -> dict[str, Any] | None:
    """The base's HF config as a dict (local folder or the hub cache the training just used), or None."""
    try:
        from transformers import AutoConfig

        from reflectevo.models import hub_revision, resolve_model

        return AutoConfig.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset)).to_dict()
    except Exception:  # noqa: BLE001 - the check then skips the shape comparison and says nothing wrong
        return None


# --------------------------------------------------------------------------------------------------
# Training


def train_setting(setting: str, preset_name: str, preset: ModelPreset, model_fp: dict[str, str],
                  train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], cfg: TrainConfig,
                  out_dir: Path, curves_dir: Path | None = None, checkpoint_dir: Path | None = None
                  ) -> dict[str, Any]:
    """Train every adapter of `setting` into `out_dir` (fresh); returns the metrics for metrics/train/.

    With `curves_dir`, train/eval curves go there through dvclive (`plots/metrics/<role>/<name>.tsv`).
    With `checkpoint_dir` (and `save_steps` > 0), checkpoints go there and an interrupted run resumes
    (see the module docstring); without it nothing is saved until the end."""
    if is_main_process() and out_dir.exists():
        shutil.rmtree(out_dir)  # never mix files of an earlier run into this one
    out_dir.mkdir(parents=True, exist_ok=True)
    is_dpo = setting.startswith("dpo")
    hp = cfg.dpo if is_dpo else cfg.sft
    card: dict[str, Any] = {"setting": setting, "base": model_fp, "base_model": base_model_info(preset_name, preset),
                            "n_train": len(train_rows), "n_eval": len(eval_rows),
                            "data_hash": data_hash(train_rows + eval_rows), "adapters": {},
                            "params": {"train": to_dict(hp), "seed": cfg.seed, "lora": to_dict(preset.lora),
                                       "lr": preset.lr_dpo if is_dpo else preset.lr_sft}}
    result: dict[str, Any] = {"setting": setting, "n_train": len(train_rows), "n_eval": len(eval_rows)}
    if not train_rows:
        data = {"dpo_pm": "D±", "dpo_pref": "Dpref", "sft_qa": "the train split"}.get(setting, "D+")
        reason = f"{data} is empty" + (": no reflection fixed a trial-1 answer" if data == "D+" else "")
        card.update(status="no training data", reason=reason)
        write_card(out_dir, card)
        return {**result, "trained": False, "reason": reason}

    train_ex, eval_ex = examples(setting, train_rows), examples(setting, eval_rows)
    roles = ADAPTERS[setting]
    live = _live(curves_dir)
    checkpointing = checkpoint_dir is not None and hp.save_steps > 0
    base_config = _base_config(preset_name, preset)
    card.update(resumed_from_step={}, checkpoint_keys={}, vllm_lora={})
    for role in roles:
        sub = out_dir if len(roles) == 1 else out_dir / role
        ckpt = None
        if checkpointing:
            key, what = checkpoint_key(setting, role, model_fp, preset, hp, cfg.seed, train_ex[role], eval_ex[role])
            ckpt = RoleCheckpoints(checkpoint_dir, role, key, what)
            card["checkpoint_keys"][role] = key
            done = ckpt.finished()
            if done is not None:  # this role finished in an earlier (killed) run: reuse its adapter
                ckpt.reuse(sub)
                replay_history(live, role, done[1])
                result[role] = {**done[0], "resumed_from_step": done[0]["steps"], "reused": True}
                card["resumed_from_step"][role] = done[0]["steps"]
                card["adapters"][role] = "." if sub == out_dir else role
                if is_main_process():
                    card["vllm_lora"][role] = check_vllm_lora_compat(sub, VLLM_MAX_LORA_RANKS[-1], base_config)
                continue
        resume = ckpt.prepare() if ckpt is not None else None
        build = build_dpo_trainer if is_dpo else build_sft_trainer
        trainer = build(preset_name, preset, train_ex[role], eval_ex[role], cfg,
                        ckpt.dir if ckpt is not None else out_dir / "checkpoints", save_checkpoints=checkpointing)
        trainer.add_callback(step_logger(live, role))
        dropped = len(train_ex[role]) - len(trainer.train_dataset)  # TRL drops examples truncation emptied
        if len(trainer.train_dataset) == 0:
            reason = (f"all {len(train_ex[role])} {role} examples lose their target at max_length={hp.max_length}; "
                      f"raise train.{'dpo' if is_dpo else 'sft'}.max_length")
            card.update(status="no training data", reason=reason, dropped_by_truncation={role: dropped})
            write_card(out_dir, card)
            return {**result, "trained": False, "reason": reason}
        resumed = resume[1] if resume is not None else 0
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=str(resume[0]) if resume is not None else None)
        seconds = time.perf_counter() - t0
        trainer.save_model(str(sub))  # collective under FSDP/ZeRO-3: every rank calls it
        if is_main_process():
            _portable_adapter(sub, preset_name)
        if ckpt is None:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        logs = trainer.state.log_history
        losses = [h["loss"] for h in logs if "loss" in h]
        evals = [h["eval_loss"] for h in logs if "eval_loss" in h]
        # after a resume, TRL's training_loss averages this process's steps only: average the whole history
        train_loss = out.training_loss if not resumed or not losses else sum(losses) / len(losses)
        card["adapters"][role] = "." if sub == out_dir else role
        card["resumed_from_step"][role] = resumed
        result[role] = {"steps": trainer.state.global_step, "train_loss": round(train_loss, 4),
                        "first_loss": round(losses[0], 4) if losses else None,
                        "last_loss": round(losses[-1], 4) if losses else None,
                        "eval_loss": round(evals[-1], 4) if evals else None,
                        "dropped_by_truncation": dropped, "seconds": round(seconds, 2),
                        "train_tokens_per_s": _tokens_per_s(trainer, hp, seconds, trainer.state.global_step - resumed),
                        "resumed_from_step": resumed}
        if is_dpo:
            acc = [h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h]
            result[role]["reward_accuracy"] = round(acc[-1], 4) if acc else None
        if is_main_process():
            card["vllm_lora"][role] = check_vllm_lora_compat(sub, VLLM_MAX_LORA_RANKS[-1], base_config)
        if ckpt is not None:
            ckpt.finish(sub, result[role], logs, keep=cfg.keep_checkpoints)
    if live is not None:
        live.end()
    if card["vllm_lora"]:
        card["vllm_lora_compatible"] = all(v["compatible"] for v in card["vllm_lora"].values())
    card.update(status="trained")
    write_card(out_dir, card)
    if checkpointing and not cfg.keep_checkpoints:
        remove_checkpoints(checkpoint_dir)
        _barrier()
    return {**result, "trained": True}


def _live(curves_dir: Path | None):
    if curves_dir is None:
        return None
    from dvclive import Live

    if not is_main_process():
        return None
    if curves_dir.exists():
        shutil.rmtree(curves_dir)
    return Live(str(curves_dir), dvcyaml=False, save_dvc_exp=False, report=None)


def _tokens_per_s(trainer, hp, seconds: float, steps: int) -> float | None:
    """Training tokens per second over all processes: tokens per example x examples processed (steps x
    per-device batch x accumulation x processes; `TrainingArguments.world_size` is the process count)."""
    ds = trainer.train_dataset
    cols = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids") if c in ds.column_names]
    if not cols or not seconds or len(ds) == 0 or steps <= 0:
        return None
    per_example = sum(len(x) for c in cols for x in ds[c]) / len(ds)
    examples_seen = steps * hp.batch_size * hp.grad_accum * max(1, int(getattr(trainer.args, "world_size", 1) or 1))
    return round(per_example * examples_seen / seconds, 1)


def sharded_launcher(env: dict[str, str] | None = None) -> str:
    """"fsdp", "zero3" or "" (not sharded): how `accelerate launch` started this process, read from the
    environment it sets (accelerate/utils/launch.py: ACCELERATE_USE_FSDP with FSDP_VERSION;
    ACCELERATE_USE_DEEPSPEED with ACCELERATE_DEEPSPEED_ZERO_STAGE or a DeepSpeed config file)."""
    import os

    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is None and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") not in ("", "none"):
            try:
                stage = json.loads(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text()).get(
                    "zero_optimization", {}).get("stage")
            except (OSError, ValueError):
                stage = None
        return "zero3" if str(stage) == "3" else ""
    return ""


def qlora_config(dtype: Any, sharding: str = "") -> dict[str, Any]:
    """`BitsAndBytesConfig` keyword arguments for QLoRA (NF4, double quantization).

    - `bnb_4bit_compute_dtype` is the preset's resolved dtype (`models.resolve_dtype`: bf16 only where the
      GPU has it natively, fp16 on pre-Ampere GPUs, or what the preset names).
    - Under FSDP or ZeRO-3 the 4-bit weights are stored in that same float dtype
      (`bnb_4bit_quant_storage`, bitsandbytes' FSDP-QLoRA recipe): both shard float tensors of one dtype
      only, and accelerate 1.15's FSDP2 leaves uint8-stored 4-bit weights unsharded
      (accelerate/utils/fsdp_utils.py `fsdp2_prepare_model`: "non-floating frozen Params4bit")."""
    kw: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                          "bnb_4bit_compute_dtype": dtype}
    if sharding:
        kw["bnb_4bit_quant_storage"] = dtype
    return kw


def refuse_unshardable_4bit(model, sharding: str, preset_name: str) -> None:
    """Under FSDP / ZeRO-3, stop with one error if a 4-bit weight is stored in an integer dtype (accelerate
    would leave it out of sharding with only a warning; it identifies them the same way: class name
    `Params4bit`, frozen, not floating point)."""
    from reflectevo.errors import ReflectEvoError

    if not sharding:
        return
    bad = [n for n, p in model.named_parameters()
           if p.__class__.__name__ == "Params4bit" and not p.requires_grad and not p.is_floating_point()]
    if bad:
        raise ReflectEvoError(
            f"models.{preset_name}.quantization: 4bit under {sharding}: {len(bad)} 4-bit weights (e.g. {bad[0]}) are "
            "stored as integers, which FSDP / ZeRO-3 cannot shard; they need bnb_4bit_quant_storage set to the "
            "model's float dtype (bitsandbytes >= 0.43); upgrade bitsandbytes or train without the sharded launcher")


def _adapter_params_to(model, dtype) -> None:
    """Cast the trainable (LoRA) weights to `dtype`: TRL puts them in bf16 on quantized models, which a GPU
    without native bf16 (pre-Ampere) cannot run fast; there they stay float32."""
    for _, param in model.named_parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _base_model(preset_name: str, preset: ModelPreset):
    """fp32 base for LoRA, or with `quantization: 4bit` an NF4 base prepared for QLoRA (GPU only)."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from reflectevo.errors import ReflectEvoError
    from reflectevo.models import hub_revision, resolve_model

    if preset.quantization == "4bit":
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ReflectEvoError(f"models.{preset_name}.quantization: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes "
                                  "(pip install '.[qlora]'); set it to none on this machine")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        from reflectevo.models import resolve_dtype

        dtype, sharding = resolve_dtype(preset.dtype), sharded_launcher()
        model = AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                     quantization_config=BitsAndBytesConfig(**qlora_config(dtype, sharding)),
                                                     dtype=dtype)
        if sharding:  # one float dtype throughout (no fp32 upcast of norms), as FSDP / ZeRO-3 need
            refuse_unshardable_4bit(model, sharding, preset_name)
            for param in model.parameters():
                param.requires_grad = False
            return model
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return AutoModelForCausalLM.from_pretrained(resolve_model(preset_name, preset), revision=hub_revision(preset),
                                                dtype=torch.float32)


def _qlora_adapter_dtype(preset: ModelPreset, trainer):
    """QLoRA on a GPU without native bf16: TRL's bf16 LoRA weights back to float32 (see `_adapter_params_to`)."""
    import torch

    from reflectevo.models import resolve_dtype

    if preset.quantization == "4bit" and resolve_dtype(preset.dtype) != torch.bfloat16:
        _adapter_params_to(trainer.model, torch.float32)
    return trainer


def _lora(preset: ModelPreset):
    from peft import LoraConfig

    return LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=preset.lora.dropout,
                      target_modules=list(preset.lora.targets), task_type="CAUSAL_LM")


def _common_args(config_cls: type, hp, seed: int, lr: float, output_dir: Path, has_eval: bool,
                 dtype_name: str, save_checkpoints: bool = False) -> dict[str, Any]:
    import torch

    from reflectevo.models import resolve_dtype

    save = ({"save_strategy": "steps", "save_steps": hp.save_steps, "save_total_limit": hp.save_total_limit}
            if save_checkpoints and hp.save_steps > 0 else {"save_strategy": "no"})
    return dict(
        **_warmup_kwargs(config_cls, hp.warmup_ratio), **save,
        output_dir=str(output_dir), num_train_epochs=hp.epochs, max_steps=hp.max_steps,
        per_device_train_batch_size=hp.batch_size, per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum, learning_rate=lr, lr_scheduler_type=hp.lr_scheduler,
        weight_decay=hp.weight_decay, max_length=hp.max_length, logging_steps=1,
        eval_strategy="epoch" if has_eval else "no", report_to="none", seed=seed,
        use_cpu=not torch.cuda.is_available(), bf16=resolve_dtype(dtype_name) == torch.bfloat16,
        gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
    )


def build_sft_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                      save_checkpoints: bool = False):
    """TRL SFTTrainer, fresh LoRA on the base; prompt/completion data -> completion-only loss.
    `save_checkpoints`: a checkpoint every `train.sft.save_steps` into `output_dir` (to resume from)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reflectevo.models import load_tokenizer

    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = SFTConfig(**_common_args(SFTConfig, cfg.sft, cfg.seed, preset.lr_sft, output_dir, eval_ds is not None,
                                    preset.dtype, save_checkpoints), completion_only_loss=True)
    return _qlora_adapter_dtype(preset, SFTTrainer(
        model=_base_model(preset_name, preset), processing_class=load_tokenizer(preset_name, preset),
        peft_config=_lora(preset), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args))


def build_dpo_trainer(preset_name: str, preset: ModelPreset, train_examples: list[dict[str, Any]],
                      eval_examples: list[dict[str, Any]], cfg: TrainConfig, output_dir: Path,
                      save_checkpoints: bool = False):
    """TRL DPOTrainer with a LoRA policy; the reference is the base (adapter off), as in the paper."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from reflectevo.models import load_tokenizer

    torch.manual_seed(cfg.seed)
    eval_ds = Dataset.from_list(eval_examples) if eval_examples else None
    args = DPOConfig(**_common_args(DPOConfig, cfg.dpo, cfg.seed, preset.lr_dpo, output_dir, eval_ds is not None,
                                    preset.dtype, save_checkpoints), beta=cfg.dpo.beta)
    return _qlora_adapter_dtype(preset, DPOTrainer(
        model=_base_model(preset_name, preset), ref_model=None, processing_class=load_tokenizer(preset_name, preset),
        peft_config=_lora(preset), train_dataset=Dataset.from_list(train_examples), eval_dataset=eval_ds, args=args))


def _warmup_kwargs(config_cls: type, ratio: float) -> dict[str, float]:
    """transformers >= 5.2x folds `warmup_ratio` into a float `warmup_steps`; older ones (vllm extra) have both."""
    import inspect

    if "warmup_ratio" in inspect.signature(config_cls.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _portable_adapter(out_dir: Path, preset_name: str) -> None:
    """Record the preset name, not the absolute base path; drop the pickled training args; list
    `target_modules` sorted (PEFT keeps them in a set, so their saved order follows PYTHONHASHSEED and
    the same training run would otherwise give a different adapter folder hash in each process)."""
    p = out_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = f"reflectevo-preset:{preset_name}"
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(p, cfg)
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's card names the absolute base path; ours replaces it
