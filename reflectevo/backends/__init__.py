"""Generation backends behind one interface.

A backend renders chat messages with the model's own chat template (`render`) and generates
completions for already-rendered prompts (`generate`), so records store prompts exactly as sent.

Sampled generation takes one seed per prompt (`seeds`): a sample depends on its prompt, its seed and
the sampling parameters only, never on which other prompts share its batch, how many devices there
are, or where a resumed run restarted. Greedy generation ignores seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reflectevo.registry import Registry


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0       # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


@dataclass(frozen=True)
class Generation:
    text: str
    n_prompt_tokens: int
    n_new_tokens: int


def prompt_seeds(prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int] | None) -> list[int]:
    """The seed of each prompt: the given ones, or by default `sampling.seed + position in the call`."""
    if seeds is None:
        return [sampling.seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return [int(x) for x in seeds]


class Backend(Protocol):
    name: str

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def generate(self, prompts: list[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generation]: ...


BACKENDS: Registry[Any] = Registry("backend")
BACKENDS.register("transformers", "reflectevo.backends.hf:TransformersBackend")
BACKENDS.register("vllm", "reflectevo.backends.vllm_backend:VLLMBackend")        # GPU extra: pip install '.[vllm]'
BACKENDS.register("openai", "reflectevo.backends.openai_backend:OpenAIBackend")  # any OpenAI-compatible endpoint


def make_backend(preset_name: str, preset: Any, adapter: Any = None) -> Any:
    """Build the backend `preset.backend` names (transformers | vllm | openai) for a model preset.

    Each backend class takes `(preset_name, preset, adapter=None)`; vllm and openai import their
    client libraries only here, so a CPU install never needs them."""
    cls = BACKENDS.get(preset.backend, where=f"models.{preset_name}.backend")
    return cls(preset_name, preset, adapter=adapter)
