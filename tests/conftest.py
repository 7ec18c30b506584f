"""Shared fixtures. The tiny model is synthetic (random weights, locally trained tokenizer): its output
is junk; it exercises the real code paths quickly. Tests that need ../shared/data skip without it,
and fail instead when REFLECTEVO_REQUIRE_SHARED=1 (CI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFLECTEVO_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


# Built models (tiny-random, the converted SmolLM2) go to the normal cache ($REFLECTEVO_CACHE or
# ~/.cache/reflectevo): they are deterministic and keyed by recipe / package version, so sharing is safe.


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        if os.environ.get("REFLECTEVO_REQUIRE_SHARED") == "1":
            pytest.fail(f"REFLECTEVO_REQUIRE_SHARED=1 but {data} is missing")
        pytest.skip(f"{data} not found (a fresh clone has no ../shared); set REFLECTEVO_SHARED to its path")
    return data


@pytest.fixture(scope="session")
def tiny_preset():
    from reflectevo.config.presets import LoraConfig, ModelPreset

    return ModelPreset(source="tiny-random", dtype="float32", gen_batch_size=16, max_length=2048,
                       lora=LoraConfig(r=4, alpha=8), lr_sft=1e-2)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from reflectevo.models.build import build_tiny_random

    return build_tiny_random(0)


@pytest.fixture(scope="session")
def scripted_pipeline(tmp_path_factory) -> Path:
    """The whole pipeline once on the scripted model (tests/fuzzing.py: `build_base`), for the fuzz, bad-input
    and kill tests, which work on copies of it."""
    from fuzzing import build_base

    return build_base(tmp_path_factory.mktemp("pipeline") / "base")
