"""What identifies a preset's base weights in episode records and model cards (never an absolute path)."""

from __future__ import annotations

from reflectevo.config.presets import ModelPreset

TINY_RECIPE = "tiny-llama-v1"     # the tiny random Llama's build recipe (reflectevo.models.build)
SCRIPT_VERSION = "scripted-v1"    # the scripted backend's drawing rules (reflectevo.backends.scripted)


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
        r = preset.script
        return {"preset": name, "source": f"scripted(t1={r.trial1_correct},retry={r.retry_correct},"
                f"words={r.trial_words}/{r.retry_words}/{r.reflection_words},sd={r.length_sd},seed={r.seed})",
                "revision": SCRIPT_VERSION}
    return {"preset": name, "source": f"{TINY_RECIPE}(seed={preset.seed})", "revision": TINY_RECIPE}
