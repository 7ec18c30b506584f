from pathlib import Path

import pytest

from reflectevo.config.loader import from_dict
from reflectevo.config.params import load_section, read_params
from reflectevo.config.presets import ModelPreset, load_preset
from reflectevo.config.sections import GenerateConfig
from reflectevo.paramsfile import validate_all
from reflectevo.errors import ReflectEvoError

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_validate():
    params = read_params(ROOT / "params.yaml")
    validate_all(params)
    assert params["model"] == "smollm2-135m"
    required = {"tiny-random", "smollm2-135m", "qwen2_5-0_5b-instruct", "qwen2_5-1_5b-instruct", "llama3-8b",
                "mistral-7b", "gemma2-9b"}
    assert required <= set(params["models"])
    for name in params["models"]:
        _, preset = load_preset(params, name)
        if preset.source == "hub":
            assert len(preset.revision) == 40, f"{name}: hub revision must be a pinned commit"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ReflectEvoError, match=r"generate\.temprature: unknown key\. Did you mean 'temperature'\?"):
        from_dict(GenerateConfig, {"temprature": 0.7}, "generate")


def test_wrong_type_names_the_key():
    with pytest.raises(ReflectEvoError, match=r"generate\.k: expected an integer"):
        from_dict(GenerateConfig, {"k": "two"}, "generate")


def test_float_strings_from_pyyaml_style_values_are_accepted():
    preset = from_dict(ModelPreset, {"source": "tiny-random", "lr_sft": "1e-05"}, "models.x")
    assert preset.lr_sft == pytest.approx(1e-5)


def test_unknown_preset_lists_valid_ones():
    params = read_params(ROOT / "params.yaml")
    with pytest.raises(ReflectEvoError) as e:
        load_preset(params, "llama3-8")
    msg = str(e.value)
    assert "Did you mean 'llama3-8b'" in msg and "tiny-random" in msg and "gemma2-9b" in msg


def test_unknown_demand_id():
    with pytest.raises(ReflectEvoError, match=r"unknown demand id '3-1-1'.*Valid: 1-1-1"):
        from_dict(GenerateConfig, {"demands": ["3-1-1"]}, "generate")


def test_unknown_task_suggests(tmp_path):
    params = read_params(ROOT / "params.yaml")
    params["prepare"] = {"seed": 0, "tasks": [{"name": "rg/chain_summ"}]}
    with pytest.raises(ReflectEvoError, match=r"prepare\.tasks\[0\]\.name: unknown task 'rg/chain_summ'\. Did you mean 'rg/chain_sum'"):
        load_section(params, "prepare")


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("model: tiny-random\nmodels: {}\ngenrate: {}\n")
    with pytest.raises(ReflectEvoError, match="unknown top-level key 'genrate'. Did you mean 'generate'"):
        read_params(p)


def test_missing_section():
    with pytest.raises(ReflectEvoError, match="curate: section missing"):
        load_section({"model": "x"}, "curate")


def test_preset_rejects_unknown_backend_and_source():
    with pytest.raises(ReflectEvoError, match="unknown backend 'vlm'. Did you mean 'vllm'"):
        from_dict(ModelPreset, {"source": "hub", "hub_id": "x/y", "backend": "vlm"}, "models.x")
    with pytest.raises(ReflectEvoError, match="unknown model source"):
        from_dict(ModelPreset, {"source": "hubb"}, "models.x")


def test_hub_presets_keep_their_real_path_and_pinned_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from reflectevo.models import hub
    from reflectevo.models.load import hub_revision, resolve_model
    from reflectevo.models.fingerprint import model_fingerprint

    params = read_params(ROOT / "params.yaml")
    name, preset = load_preset(params, "llama3-8b")
    # not in the (empty) local cache, and the hub answers for this id and revision: transformers gets the hub id
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    asked = []
    monkeypatch.setattr(hub, "probe_hub", lambda hub_id, revision: asked.append((hub_id, revision)) or "")
    assert resolve_model(name, preset) == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert asked == [("meta-llama/Meta-Llama-3-8B-Instruct", preset.revision)]
    assert hub_revision(preset) == preset.revision
    assert model_fingerprint(name, preset) == {"preset": "llama3-8b", "source": "meta-llama/Meta-Llama-3-8B-Instruct",
                                               "revision": preset.revision}
    # a local copy (offline machines) replaces the hub download
    local = from_dict(ModelPreset, {**params["models"]["llama3-8b"], "path": str(tmp_path)}, "models.x")
    assert resolve_model("x", local) == str(tmp_path) and hub_revision(local) is None
    missing = from_dict(ModelPreset, {**params["models"]["llama3-8b"], "path": str(tmp_path / "nope")}, "models.x")
    with pytest.raises(ReflectEvoError, match="models.x.path: .* does not exist"):
        resolve_model("x", missing)
