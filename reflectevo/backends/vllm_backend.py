"""vLLM backend (GPU machines, optional extra: `pip install 'reflectevo[vllm]'`).

Offline `vllm.LLM` with prefix caching (the trial-1 prompt prefix is shared by reflections and retries),
LoRA adapters through `LoRARequest`, one `SamplingParams` per prompt so each sample has its own seed.
`vllm` is imported only when a backend is built, never at module import, so CPU installs and the test
suite never need it.

Prompts are the strings `render` returns (the preset's own tokenizer and chat template, the same text
the transformers backend renders); they are tokenized here without adding special tokens and passed as
token ids, so vLLM cannot add a second BOS: the model sees exactly the stored prompt.

One engine per base model and process: a second `LLM` on the same GPU fails at start-up, since the first
already holds vLLM's `gpu_memory_utilization` share (0.92 by default). So every engine is built with LoRA
enabled, `max_lora_rank` covering the preset's `lora.r` and every adapter the process will load
(`serves`: the evaluate stage passes all of them before building the base model's backend), and
`max_loras=2`, so the reflector and corrector of `two_stage` stay loaded together. The base model and
every adapter then share that engine, each adapter with its own `LoRARequest`.

Engine settings (`engine_kwargs`): `generation_config="vllm"` (sampling defaults are vLLM's neutral
ones, never the checkpoint's; every request carries its own `SamplingParams` anyway), the preset's dtype
as transformers resolves it (`auto`: bf16 where the GPU has it natively, else fp16; vLLM's own `auto`
would take the checkpoint's), `max_model_len` = the preset's `max_length` (prompt + new tokens; without
it vLLM reserves KV cache for the model's whole context), and `quantization: 4bit` serves the base
unquantized in that dtype, like the transformers backend (4bit is a QLoRA *training* setting; vLLM
0.32/0.33 have no bitsandbytes method). Overrides from
the environment: `REFLECTEVO_VLLM_GPU_MEMORY` (the fraction of GPU memory the engine takes) and
`REFLECTEVO_VLLM_ARGS`, a JSON object of further `vllm.LLM` keyword arguments (e.g.
`{"enforce_eager": true, "max_model_len": -1}`; -1 = vLLM's own fit).

Records: `resolved_dtype` is the engine's model dtype; `n_new_tokens` leaves out the EOS / stop token
vLLM keeps at the end of `token_ids`, as the transformers backend does, and a text cut afterwards at the
answer pattern counts only the tokens up to the cut. Sampled tokens come from vLLM's per-request seeded
sampler, not our inverse-CDF draw, hence another `sampler` in the episode key.

Throughput: the generate stage hands this backend `chunk_items` items per chunk (a whole phase of them per
`generate` call), not the transformers backend's `gen_batch_size`; vLLM schedules the batches itself.
`score` (the likelihood judge of curate) reads vLLM's prompt log-probabilities.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reflectevo.sampling import Generation, Sampling, finish_text, prompt_seeds
from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError

INSTALL_HINT = "backend vllm needs `pip install reflectevo[vllm]` on a GPU machine"
SAMPLER = "vllm-request-seed-v1"   # vLLM's sampler with SamplingParams(seed=...) per request
MAX_LORAS = 2                      # LoRAs in one batch: a two-stage reflector/corrector pair stays loaded
ENV_GPU_MEMORY = "REFLECTEVO_VLLM_GPU_MEMORY"
ENV_ARGS = "REFLECTEVO_VLLM_ARGS"
PHASE_ITEMS = 4096                 # items per generate chunk with this backend (the journal's unit, too)
_ENGINES: dict[tuple, tuple[dict[str, Any], Any]] = {}   # (model, revision, dtype) -> (engine kwargs, LLM)
_LORA_IDS: dict[str, int] = {}                           # adapter path -> LoRARequest int id (>= 1)


def adapter_rank(adapter: str | Path | None) -> int | None:
    """The `r` in an adapter's adapter_config.json (None without an adapter or a readable config)."""
    cfg = Path(adapter) / "adapter_config.json" if adapter is not None else None
    if cfg is None or not cfg.exists():
        return None
    try:
        return int(json.loads(cfg.read_text()).get("r"))
    except (ValueError, TypeError):
        return None


def lora_rank_bound(adapters: Iterable[str | Path | None], preset_rank: int) -> int:
    """max_lora_rank: the largest of the preset's `lora.r` and the adapters' `r`, rounded up to a value
    vLLM accepts (vllm/config/lora.py `MaxLoRARanks`), at least 8."""
    from reflectevo.backends.vllm_lora import VLLM_MAX_LORA_RANKS

    r = max([preset_rank, *(x for x in map(adapter_rank, adapters) if x is not None)])
    for bound in VLLM_MAX_LORA_RANKS:
        if bound >= max(r, 8):
            return bound
    raise ReflectEvoError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {VLLM_MAX_LORA_RANKS[-1]}")


def engine_dtype(preset: ModelPreset) -> str:
    """The dtype name the transformers backend would load the preset in (`models.resolve_dtype`), found without
    starting CUDA in this process for `auto`: `resolve_dtype` asks torch for the GPU's compute capability, which
    creates a CUDA context here (memory on the GPU the engine sizes itself to; vLLM then also has to spawn
    its workers). vLLM's own platform reads the capability through NVML instead (vllm/platforms/cuda.py
    `NvmlCudaPlatform.has_device_capability`, "will not initialize CUDA"): bf16 from compute capability 8.0
    (native bf16), else fp16, as `resolve_dtype` decides."""
    from reflectevo.models.load import resolve_dtype

    if preset.dtype == "auto":
        try:
            from vllm.platforms import current_platform
        except ImportError:
            current_platform = None
        if current_platform is not None and current_platform.is_cuda():
            return "bfloat16" if current_platform.has_device_capability(80) else "float16"
    return str(resolve_dtype(preset.dtype)).replace("torch.", "")


def _env_args() -> dict[str, Any]:
    text = os.environ.get(ENV_ARGS, "").strip()
    if not text:
        return {}
    try:
        extra = json.loads(text)
    except ValueError as e:
        raise ReflectEvoError(f"${ENV_ARGS}: not JSON ({e}); expected an object like '{{\"enforce_eager\": true}}'") from None
    if not isinstance(extra, dict):
        raise ReflectEvoError(f"${ENV_ARGS}: expected a JSON object of vllm.LLM keyword arguments, got {text!r}")
    return extra


def engine_kwargs(preset_name: str, preset: ModelPreset, adapters: Iterable[str | Path | None] = ()) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for a preset whose engine will serve `adapters` (and the base)."""
    from reflectevo.models.load import hub_revision, resolve_model

    revision = hub_revision(preset)
    kw: dict[str, Any] = {"model": resolve_model(preset_name, preset), "revision": revision,
                          "tokenizer_revision": revision, "dtype": engine_dtype(preset), "seed": 0,
                          "enable_prefix_caching": True, "enable_lora": True,
                          "max_lora_rank": lora_rank_bound(adapters, preset.lora.r), "max_loras": MAX_LORAS,
                          "max_model_len": preset.max_length,
                          # vLLM's neutral sampling defaults, not the checkpoint's (its EOS ids still apply;
                          # vllm/config/model.py `get_diff_sampling_param`): we always pass SamplingParams anyway
                          "generation_config": "vllm"}
    if os.environ.get(ENV_GPU_MEMORY):
        kw["gpu_memory_utilization"] = float(os.environ[ENV_GPU_MEMORY])
    kw.update(_env_args())
    return kw


def _engine(vllm: Any, kw: dict[str, Any], preset_name: str) -> Any:
    """The process's engine for this model, built on first use."""
    key = (kw["model"], kw["revision"], kw["dtype"])
    if key in _ENGINES:
        have, llm = _ENGINES[key]
        if have["max_lora_rank"] < kw["max_lora_rank"]:
            raise ReflectEvoError(
                f"models.{preset_name}: an adapter needs max_lora_rank {kw['max_lora_rank']}, but this process's "
                f"vLLM engine started with {have['max_lora_rank']} and a second engine would not fit on the GPU; "
                "name every adapter when building the first backend (make_backend(..., serves=[...]))")
        return llm
    llm = vllm.LLM(**kw)
    _ENGINES[key] = (kw, llm)
    return llm


def new_tokens(completion: Any) -> int:
    """Generated tokens without the EOS / stop token that ended them: vLLM keeps that token at the end of
    `token_ids` (vllm/v1/core/sched/utils.py `check_stop`: finish_reason "stop", `stop_reason` None for
    EOS, the token id for a stop token, the string for a stop string)."""
    n = len(completion.token_ids)
    if n and completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
        n -= 1
    return n


class VLLMBackend:
    name = "vllm"
    sampler = SAMPLER
    shares_engine = True   # make_backend passes `serves`
    # items per generate chunk: vLLM schedules its own batches, so it gets a phase of this many items per call
    # (a few thousand prompts keep an H100 busy), where the transformers backend takes `gen_batch_size`
    chunk_items = PHASE_ITEMS

    @staticmethod
    def resolved_dtype(preset: ModelPreset) -> str:
        return engine_dtype(preset)

    def __init__(self, preset_name: str, preset: ModelPreset, adapter: str | Path | None = None,
                 batch_size: int | None = None, serves: Sequence[str | Path] = ()) -> None:
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as e:
            raise ReflectEvoError(f"{INSTALL_HINT} (import vllm failed: {e})") from None
        from reflectevo.models.load import load_tokenizer

        self.vllm = vllm
        self.preset_name = preset_name
        self.tokenizer = load_tokenizer(preset_name, preset)
        from reflectevo.models.load import is_full_model

        self.engine_kwargs = engine_kwargs(preset_name, preset, [a for a in (adapter, *serves) if not is_full_model(a)])
        if is_full_model(adapter):  # a full-parameter save: its own engine on that folder, no LoRA
            folder = str(Path(adapter).resolve())
            self.engine_kwargs.update(model=folder, revision=None, tokenizer_revision=None)
            adapter = None
            if _ENGINES and not any(k[0] == folder for k in _ENGINES) and not os.environ.get(ENV_GPU_MEMORY):
                raise ReflectEvoError(
                    f"{folder} is a full-parameter model: vLLM needs a second engine for it beside this process's "
                    f"other engine, which does not fit at vLLM's default memory share; set ${ENV_GPU_MEMORY} (each "
                    "engine's share, e.g. 0.45) or use backend: transformers")
        self.llm = _engine(vllm, self.engine_kwargs, preset_name)
        config = getattr(self.llm, "model_config", None)   # vllm/entrypoints/llm.py: LLM.model_config
        self.dtype = str(getattr(config, "dtype", self.engine_kwargs["dtype"])).replace("torch.", "")
        self.max_model_len = getattr(config, "max_model_len", None) or self.engine_kwargs.get("max_model_len")
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

    def _check_lengths(self, ids: list[list[int]], max_new_tokens: int) -> None:
        """vLLM caps a completion at max_model_len where transformers would go on: refuse instead."""
        limit = self.max_model_len
        if not limit or limit < 1:
            return
        longest = max(len(x) for x in ids)
        if longest + max_new_tokens > limit:
            raise ReflectEvoError(
                f"models.{self.preset_name}.max_length: a prompt of {longest} tokens + {max_new_tokens} new tokens "
                f"exceeds the vLLM engine's max_model_len {limit}; raise max_length")

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        seeds = prompt_seeds(prompts, sampling, seeds)
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        self._check_lengths(ids, sampling.max_new_tokens)
        outs = self.llm.generate([{"prompt_token_ids": list(x)} for x in ids], self.sampling_params(sampling, seeds),
                                 use_tqdm=False, lora_request=self.lora)
        return [_generation(o, sampling, self.tokenizer) for o in outs]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Log-probability of each continuation after its prompt (sum over its tokens), as the transformers
        backend's `score` computes it (prompt and continuation tokenized apart, then joined): from vLLM's prompt
        log-probabilities of the joined ids (`SamplingParams(prompt_logprobs=1)`: per position after the first a
        dict holding the actual token's `Logprob`, vllm/logprobs.py `create_prompt_logprobs` and
        `append_logprobs_for_next_position`), one token generated and ignored."""
        if not prompts:
            return []
        ps = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        cs = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        rows = [list(p) + list(c) for p, c in zip(ps, cs, strict=True)]
        self._check_lengths(rows, 1)
        params = [self.vllm.SamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=1) for _ in rows]
        outs = self.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False,
                                 lora_request=self.lora)
        scores = []
        for row, p, out in zip(rows, ps, outs):
            logprobs = out.prompt_logprobs
            scores.append(float(sum(logprobs[i][row[i]].logprob for i in range(max(len(p), 1), len(row)))))
        return scores


def _generation(out: Any, sampling: Sampling, tokenizer: Any = None) -> Generation:
    """vLLM's RequestOutput -> Generation. `finish_reason` is "length" or "stop" (EOS, or a stop string
    when `stop_reason` holds it); "abort" and "error" (vllm/v1/engine/__init__.py `FINISH_REASON_STRINGS`)
    stop the run with one line rather than be recorded as an ending. The answer pattern and the stop patterns
    (`stop_regex`, `stop_patterns`: vLLM knows only plain stop strings) are applied to the text here, and then
    `n_new_tokens` counts the tokens up to the one that completed the cut, as the transformers backend, which
    stops there, does (`tokens_to_cut`)."""
    o = out.outputs[0]
    if o.finish_reason not in ("stop", "length", "repetition"):
        raise ReflectEvoError(f"vLLM ended a request with finish_reason {o.finish_reason!r} (not an ending of the "
                              f"text: aborted or failed in the engine); nothing of it is recorded, rerun to resume")
    natural = "stop" if isinstance(o.stop_reason, str) else "eos" if o.finish_reason == "stop" else "length"
    text, reason = finish_text(o.text, sampling, natural)
    n = new_tokens(o)
    if reason == "stop" and natural != "stop" and tokenizer is not None:
        n = tokens_to_cut(list(o.token_ids)[:n], sampling, tokenizer)
    return Generation(text, len(out.prompt_token_ids), n, reason)


def tokens_to_cut(ids: list[int], sampling: Sampling, tokenizer: Any) -> int:
    """The fewest leading tokens of `ids` whose decoded text already reaches a stop of `sampling` (a stop
    found in a prefix stays in every longer one): where the transformers backend stops generating."""
    from reflectevo.sampling import stop_position

    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if stop_position(tokenizer.decode(ids[:mid], skip_special_tokens=True), sampling) is None:
            lo = mid + 1
        else:
            hi = mid
    return hi
