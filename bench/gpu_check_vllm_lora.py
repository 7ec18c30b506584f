"""GPU only: load a base model + our LoRA adapters with vLLM's LoRA support and generate.

The training stage checks every adapter *statically* (`check_vllm_lora_compat`: config fields, tensor
names and shapes). Whether vLLM really loads and applies it can only be seen on a CUDA machine with vLLM
installed (`pip install '.[vllm]'`; vLLM 0.32/0.33 pin their own CUDA torch and transformers<5.20/<5.21):

    python bench/gpu_check_vllm_lora.py                                 # a fresh random LoRA on the preset's base
    python bench/gpu_check_vllm_lora.py --adapter models/one_stage --adapter models/two_stage/reflector
    python bench/gpu_check_vllm_lora.py --model qwen2_5-0_5b-instruct --out /tmp/vllm_lora.json

For each adapter: (1) the static check; (2) greedy generation on a few chat prompts with
transformers + PEFT (the reference); (3) `LLM(model=base, enable_lora=True, max_lora_rank=...)` and the
same prompts (as token ids) with `LoRARequest(name, id, path)` and without it. It passes when vLLM loads
and applies every adapter (the output with the adapter differs from the base's for at least one prompt
where PEFT's does too) and the greedy first tokens agree with PEFT's on most prompts; it writes a JSON
report (default bench/results/gpu_vllm_lora.json). Without an --adapter it makes one on the preset's
base with non-zero LoRA B weights (init_lora_weights=False), so the adapter visibly changes the output.
Exit status 0 = passed, 1 = failed, 2 = not runnable here (no CUDA or no vllm).
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


def make_adapter(base_path: str, preset, preset_name: str, out: Path) -> Path:
    """A LoRA with our preset's config and random (non-zero) A and B, saved like training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reflectevo.training import _portable_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    cfg = LoraConfig(r=preset.lora.r, lora_alpha=preset.lora.alpha, lora_dropout=0.0,
                     target_modules=list(preset.lora.targets), task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    _portable_adapter(out, preset_name)
    del model
    return out


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                          return_dict=False) for p in PROMPTS]


def peft_greedy(base_path: str, adapter: Path | None, ids: list[list[int]], max_tokens: int, dtype) -> list[list[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to("cuda")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--model", default=None, help="preset name (default: params.yaml `model:`)")
    ap.add_argument("--adapter", action="append", default=[], help="adapter folder (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_vllm_lora.json"))
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("needs a CUDA GPU and vllm (pip install '.[vllm]'); nothing checked", file=sys.stderr)
        return 2
    import vllm
    from transformers import AutoConfig, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from reflectevo.config import load_preset, read_params
    from reflectevo.models import resolve_model
    from reflectevo.training import check_vllm_lora_compat

    name, preset = load_preset(read_params(args.params), args.model)
    base = resolve_model(name, preset)  # a local folder (tiny-random, the converted GGUF) or a hub id
    base_config = AutoConfig.from_pretrained(base).to_dict()
    tmp = tempfile.TemporaryDirectory()
    adapters = [Path(a) for a in args.adapter] or [make_adapter(base, preset, name, Path(tmp.name) / "random_lora")]
    tok = AutoTokenizer.from_pretrained(base)
    ids = prompt_ids(tok)
    eos = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    dtype = getattr(torch, args.dtype)

    report = {"vllm": vllm.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
              "preset": name, "base": base, "dtype": args.dtype, "prompts": PROMPTS, "adapters": {}}
    static = {str(a): check_vllm_lora_compat(a, 512, base_config) for a in adapters}
    rank = max((s["min_max_lora_rank"] or 8) for s in static.values())
    t0 = time.perf_counter()
    reference = {"base": peft_greedy(base, None, ids, args.max_tokens, dtype)}
    for a in adapters:
        reference[str(a)] = peft_greedy(base, a, ids, args.max_tokens, dtype)
    report["peft_seconds"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    llm = LLM(model=base, tokenizer=base, enable_lora=True, max_lora_rank=rank, max_loras=1, dtype=args.dtype,
              seed=0, gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=2048, enforce_eager=True)
    report["vllm_init_seconds"] = round(time.perf_counter() - t0, 1)
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    prompts = [{"prompt_token_ids": seq} for seq in ids]
    base_out = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
    ok = True
    for i, a in enumerate(adapters, start=1):
        entry: dict = {"static": static[str(a)]}
        try:
            outs = llm.generate(prompts, sp, lora_request=LoRARequest(f"adapter{i}", i, str(a.resolve())),
                                use_tqdm=False)
            got = [list(o.outputs[0].token_ids) for o in outs]
        except Exception as e:  # noqa: BLE001 - the report says why vLLM refused the adapter
            entry.update(loaded=False, error=f"{e.__class__.__name__}: {e}")
            report["adapters"][str(a)] = entry
            ok = False
            continue
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
    report["passed"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({a: {k: v for k, v in e.items() if k not in ("samples", "static")}
                      for a, e in report["adapters"].items()}, indent=2))
    print(f"{'PASSED' if ok else 'FAILED'}; report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM's engine starts worker processes with spawn
    sys.exit(main())
