"""vLLM backend (GPU machines, optional extra: `pip install 'reflectevo[vllm]'`).

Offline `vllm.LLM` with prefix caching (the trial-1 prompt prefix is shared by reflections and retries),
LoRA adapters through `LoRARequest`, one `SamplingParams` per prompt so each sample has its own seed.
`vllm` is imported only when a backend is built, never at module import, so CPU installs and the test
suite never need it.

Prompts are the strings `render` returns (the preset's own tokenizer and chat template, the same text
the transformers backend renders); they are tokenized here without adding special tokens and passed as
token ids, so vLLM cannot add a second BOS: the model sees exactly the stored prompt.

Engines are shared per model (path, revision, dtype, quantization): the reflector and corrector adapters
of `two_stage` run on one engine, each with its own `LoRARequest`. An engine is built with LoRA support
when its first backend has an adapter; set `REFLECTEVO_VLLM_ENABLE_LORA=1` so a base-model backend's engine
also serves later adapters (otherwise a second engine is built, which needs GPU memory for both:
lower `REFLECTEVO_VLLM_GPU_MEMORY`, the fraction each engine takes, default vLLM's 0.9).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectevo.backends import Generation, Sampling, finish_text, prompt_seeds
from reflectevo.config import ModelPreset
from reflectevo.errors import ReflectEvoError

INSTALL_HINT = "backend vllm needs `pip install reflectevo[vllm]` on a GPU machine"
_ENGINES: dict[tuple, list[tuple[dict[str, Any], Any]]] = {}   # model key -> [(engine kwargs, LLM)]
_LORA_IDS: dict[str, int] = {}                                 # adapter path -> LoRARequest int id (>= 1)


def lora_rank_bound(adapter: str | Path | None, fallback: int) -> int:
    """max_lora_rank: the adapter's `r` (else `fallback`) rounded up to a power of two, at least 8 (values
    every vLLM version accepts)."""
    r = fallback
    cfg = Path(adapter) / "adapter_config.json" if adapter is not None else None
    if cfg is not None and cfg.exists():
        r = int(json.loads(cfg.read_text()).get("r", fallback))
    bound = 8
    while bound < r:
        bound *= 2
    return bound


def engine_kwargs(preset_name: str, preset: ModelPreset, adapter: str | Path | None) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for a preset (+ adapter)."""
    from reflectevo.models import hub_revision, resolve_model

    revision = hub_revision(preset)
    kw: dict[str, Any] = {"model": resolve_model(preset_name, preset), "revision": revision,
                          "tokenizer_revision": revision, "dtype": preset.dtype, "seed": 0,
                          "enable_prefix_caching": True,
                          "enable_lora": adapter is not None or os.environ.get("REFLECTEVO_VLLM_ENABLE_LORA") == "1"}
    if kw["enable_lora"]:
        kw["max_lora_rank"] = lora_rank_bound(adapter, preset.lora.r)
    if preset.quantization == "4bit":
        kw["quantization"] = "bitsandbytes"
    if os.environ.get("REFLECTEVO_VLLM_GPU_MEMORY"):
        kw["gpu_memory_utilization"] = float(os.environ["REFLECTEVO_VLLM_GPU_MEMORY"])
    return kw


def _engine(vllm: Any, kw: dict[str, Any]) -> Any:
    key = (kw["model"], kw["revision"], kw["dtype"], kw.get("quantization"))
    for have, llm in _ENGINES.get(key, []):
        if not kw["enable_lora"] or (have["enable_lora"] and have["max_lora_rank"] >= kw["max_lora_rank"]):
            return llm
    llm = vllm.LLM(**kw)
    _ENGINES.setdefault(key, []).append((kw, llm))
    return llm


class VLLMBackend:
    name = "vllm"

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None,
                 batch_size: int | None = None) -> None:
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as e:
            raise ReflectEvoError(f"{INSTALL_HINT} (import vllm failed: {e})") from None
        from reflectevo.models import load_tokenizer

        self.vllm = vllm
        self.tokenizer = load_tokenizer(preset_name, preset)
        self.dtype = preset.dtype
        self.engine_kwargs = engine_kwargs(preset_name, preset, adapter)
        self.llm = _engine(vllm, self.engine_kwargs)
        self.lora = None
        if adapter is not None:
            path = str(Path(adapter).resolve())
            lora_id = _LORA_IDS.setdefault(path, len(_LORA_IDS) + 1)
            self.lora = LoRARequest(lora_name=f"{preset_name}-lora{lora_id}", lora_int_id=lora_id, lora_path=path)

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sampling_params(self, sampling: Sampling, seeds: Sequence[int]) -> list[Any]:
        """One SamplingParams per prompt: sampled rows carry their own seed; greedy rows none."""
        sampled = sampling.temperature > 0
        return [self.vllm.SamplingParams(n=1, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                         top_p=sampling.top_p if sampled else 1.0,
                                         seed=int(s) if sampled else None, stop=list(sampling.stop) or None)
                for s in seeds]

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        seeds = prompt_seeds(prompts, sampling, seeds)
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        outs = self.llm.generate([{"prompt_token_ids": list(x)} for x in ids], self.sampling_params(sampling, seeds),
                                 use_tqdm=False, lora_request=self.lora)
        return [_generation(o, sampling) for o in outs]


def _generation(out: Any, sampling: Sampling) -> Generation:
    """vLLM's RequestOutput -> Generation. `finish_reason` is "length" or "stop" (EOS, or a stop string
    when `stop_reason` holds it); the answer pattern (`stop_regex`) is applied to the text here."""
    o = out.outputs[0]
    natural = "length" if o.finish_reason == "length" else ("stop" if isinstance(o.stop_reason, str) else "eos")
    text, reason = finish_text(o.text, sampling, natural)
    return Generation(text, len(out.prompt_token_ids), len(o.token_ids), reason)
