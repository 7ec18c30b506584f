"""GPU only: the first script to run on a GPU machine. Loads a base model + our LoRA adapters through the
project's own vLLM backend (one engine for the base and every adapter, as the evaluate stage runs it),
checks the adapters against transformers + PEFT, then runs the evaluate stage's trial-1 -> reflect ->
retry flow for the base + one adapter through that engine.

The training stage checks every adapter *statically* (`check_vllm_lora_compat`: config fields, tensor
names and shapes). Whether vLLM really loads and applies it can only be seen on a CUDA machine with vLLM
installed (`pip install '.[vllm]'`; vLLM 0.32/0.33 pin their own CUDA torch and transformers<5.20/<5.21):

    python bench/gpu_check_vllm_lora.py                                 # a fresh random LoRA on the preset's base
    python bench/gpu_check_vllm_lora.py --adapter models/one_stage --adapter models/two_stage/reflector
    python bench/gpu_check_vllm_lora.py --model qwen2_5-0_5b-instruct --out /tmp/vllm_lora.json

Steps: (1) the static check of each adapter; (2) greedy generation on a few chat prompts with
transformers + PEFT (the reference, freed before vLLM starts), loading the preset's pinned revision;
(3) `VLLMBackend` for the base
and for each adapter (`reflectevo.backends.vllm_backend`: LoRA enabled, `max_lora_rank` for all adapters,
`max_loras=2`, `max_model_len` = the preset's `max_length`); all of them must share ONE `vllm.LLM`; the same
prompts as token ids with and without each adapter's `LoRARequest`; (4) `evaluation.trial1` with the base
and `evaluation.reflect_then_retry` with the first adapter reflecting and the base retrying, on
`--items` test items (intrinsic protocol: every item reflects), through that same engine.

It passes when there is one engine, vLLM loads and applies every adapter (the output with the adapter
differs from the base's for at least one prompt where PEFT's does too), the greedy first tokens agree
with PEFT's on most prompts, and the evaluate flow completes; it writes a JSON report (default
bench/results/gpu_vllm_lora.json). Without an --adapter it makes one on the preset's base with non-zero
LoRA B weights (init_lora_weights=False), so the adapter visibly changes the output. Engine memory:
`--gpu-memory-utilization` (default 0.5), or `REFLECTEVO_VLLM_GPU_MEMORY` / `REFLECTEVO_VLLM_ARGS` as for
the pipeline. Exit status 0 = passed, 1 = failed, 2 = not runnable here (no CUDA or no vllm).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is 7 + 5? Answer with the number only.",
    ("Consider these statements:\n1. All cats are animals\n2. Some animals are black\n\nDoes it logically follow "
     "that some cats are black?\n(Answer Yes or No)"),
    "Your previous answer was judged incorrect. In two sentences, reflect on what went wrong and plan a fix.",
    "Name three primary colours.",
]


def make_adapter(base_path: str, revision: str | None, preset, preset_name: str, out: Path) -> Path:
    """A LoRA with our preset's config and random (non-zero) A and B, saved like training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reflectevo.training.model import _portable_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path, revision=revision, dtype=torch.float32)
    cfg = LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=0.0,
                     target_modules=list(preset.lora.targets), task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    _portable_adapter(out, preset_name)
    del model
    return out


def prompt_ids(tokenizer) -> list[list[int]]:
    """The prompts as the backends send them: rendered with the chat template (what `render` returns),
    tokenized without special tokens."""
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in PROMPTS]
    return [list(x) for x in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def peft_greedy(base_path: str, revision: str | None, adapter: Path | None, ids: list[list[int]], max_tokens: int,
                dtype) -> list[list[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, revision=revision, dtype=dtype).to("cuda")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    outs = []
    with torch.inference_mode():
        for seq in ids:
            x = torch.tensor([seq], device="cuda")
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                               do_sample=False)
            outs.append(y[0, len(seq):].tolist())
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return outs


def _strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    return [t for t in tokens if t not in eos]


def evaluate_flow(base, reflector, n_items: int, max_tokens: int) -> dict:
    """The evaluate stage's trial 1 (base) -> reflection (adapter) -> retry (base), on a few test items."""
    from reflectevo import evaluation as ev
    from reflectevo.config.sections import EvaluateConfig
    from reflectevo.tasks.registry import get_task

    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1})
    items, tasks = task.load("test", n_items), {task.name: task}
    cfg = EvaluateConfig(protocol="intrinsic", rounds=1, max_new_tokens_trial=max_tokens,
                         max_new_tokens_reflection=max_tokens)
    t1 = ev.trial1(items, tasks, base, cfg)
    rows = ev.reflect_then_retry(items, tasks, t1, reflector, base, cfg)
    overall = ev.summarize({"check": rows})["check"]["overall"]
    return {"items": len(rows), "acc_t1": overall["acc_t1"], "acc_t2": overall["acc_t2"],
            "reflected": sum(bool(r.get("reflection")) for r in rows),
            "sample": {"t1": t1[0]["t1"], "reflection": rows[0].get("reflection"), "t2": rows[0].get("t2")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--model", default=None, help="preset name (default: params.yaml `model:`)")
    ap.add_argument("--adapter", action="append", default=[], help="adapter folder (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--items", type=int, default=4, help="test items for the evaluate flow (0: skip it)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_vllm_lora.json"))
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("needs a CUDA GPU and vllm (pip install '.[vllm]'); nothing checked", file=sys.stderr)
        return 2
    import os
    from dataclasses import replace

    import vllm
    from transformers import AutoConfig

    from reflectevo.sampling import Sampling
    from reflectevo.backends import vllm_backend as vb
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import read_params
    from reflectevo.models.load import hub_revision, load_tokenizer, resolve_model
    from reflectevo.backends.vllm_lora import check_vllm_lora_compat

    name, preset = load_preset(read_params(args.params), args.model)
    preset = replace(preset, backend="vllm", dtype=args.dtype, quantization="none")
    base = resolve_model(name, preset)  # a local folder (tiny-random, the converted GGUF) or a hub id
    revision = hub_revision(preset)     # the preset's pinned commit (None for local folders)
    base_config = AutoConfig.from_pretrained(base, revision=revision).to_dict()
    tmp = tempfile.TemporaryDirectory()
    adapters = [Path(a) for a in args.adapter] or [make_adapter(base, revision, preset, name, Path(tmp.name) / "random_lora")]
    os.environ.setdefault(vb.ENV_GPU_MEMORY, str(args.gpu_memory_utilization))
    os.environ.setdefault(vb.ENV_ARGS, json.dumps({"enforce_eager": True}))   # no CUDA-graph capture: faster start
    dtype = getattr(torch, args.dtype)

    report = {"vllm": vllm.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
              "preset": name, "base": base, "revision": revision, "dtype": args.dtype, "prompts": PROMPTS,
              "adapters": {}}
    static = {str(a): check_vllm_lora_compat(a, 512, base_config) for a in adapters}
    tok = load_tokenizer(name, preset)
    ids = prompt_ids(tok)
    eos = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}

    t0 = time.perf_counter()   # the reference first: its GPU memory is freed before vLLM takes its share
    reference = {"base": peft_greedy(base, revision, None, ids, args.max_tokens, dtype)}
    for a in adapters:
        reference[str(a)] = peft_greedy(base, revision, a, ids, args.max_tokens, dtype)
    report["peft_seconds"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    base_backend = vb.VLLMBackend(name, preset, serves=adapters)        # the engine starts here, sized for all
    backends = {str(a): vb.VLLMBackend(name, preset, adapter=a, serves=adapters) for a in adapters}
    report["vllm_init_seconds"] = round(time.perf_counter() - t0, 1)
    report["engines"] = len({id(b.llm) for b in [base_backend, *backends.values()]})
    report["engine_kwargs"] = {k: v for k, v in base_backend.engine_kwargs.items() if k != "model"}
    report["resolved_dtype"] = base_backend.dtype

    def vllm_greedy(backend) -> list[list[int]]:   # the engine and LoRARequest the backend itself sends
        params = backend.sampling_params(Sampling(args.max_tokens), [0] * len(ids))
        outs = backend.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False,
                                    lora_request=backend.lora)
        return [list(o.outputs[0].token_ids) for o in outs]

    base_out = vllm_greedy(base_backend)
    got_all, errors = {}, {}
    for a in adapters:
        try:
            got_all[str(a)] = vllm_greedy(backends[str(a)])
        except Exception as e:  # noqa: BLE001 - the report says why vLLM refused the adapter
            errors[str(a)] = f"{e.__class__.__name__}: {e}"
    flow = None
    if args.items > 0 and not errors:
        try:
            flow = evaluate_flow(base_backend, backends[str(adapters[0])], args.items, args.max_tokens)
        except Exception as e:  # noqa: BLE001
            flow = {"error": f"{e.__class__.__name__}: {e}"}
    report["evaluate_flow"] = flow
    report["engines_after"] = len(vb._ENGINES)

    ok = report["engines"] == 1 and report["engines_after"] == 1
    for a in adapters:
        entry: dict = {"static": static[str(a)]}
        if str(a) in errors:
            entry.update(loaded=False, error=errors[str(a)])
            report["adapters"][str(a)] = entry
            ok = False
            continue
        got = got_all[str(a)]
        want, want_base = reference[str(a)], reference["base"]
        peft_changes = [w != b for w, b in zip(want, want_base, strict=True)]
        vllm_changes = [g != b for g, b in zip(got, base_out, strict=True)]
        first_agree = sum(bool(g) and bool(w) and g[0] == w[0] for g, w in zip(got, want, strict=True)) / len(got)
        exact = sum(_strip_eos(g, eos) == _strip_eos(w, eos) for g, w in zip(got, want, strict=True)) / len(got)
        applied = any(p and v for p, v in zip(peft_changes, vllm_changes, strict=True)) or not any(peft_changes)
        entry.update(loaded=True, applied=applied, first_token_agreement=first_agree, exact_match=exact,
                     changed_vs_base={"peft": sum(peft_changes), "vllm": sum(vllm_changes)},
                     samples=[{"prompt": p, "vllm": tok.decode(g), "peft": tok.decode(w)}
                              for p, g, w in zip(PROMPTS, got, want, strict=True)])
        entry["passed"] = bool(static[str(a)]["compatible"] and applied and first_agree >= 0.75)
        ok &= entry["passed"]
        report["adapters"][str(a)] = entry
    if args.items > 0:
        ok &= bool(flow) and "error" not in flow and flow["items"] == args.items
    report["passed"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"engines": report["engines"], "evaluate_flow": flow,
                      **{a: {k: v for k, v in e.items() if k not in ("samples", "static")}
                         for a, e in report["adapters"].items()}}, indent=2))
    print(f"{'PASSED' if ok else 'FAILED'}; report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM's engine starts worker processes with spawn
    sys.exit(main())
