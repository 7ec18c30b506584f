"""Self-evolution pieces without DVC: params validation, the chain writer, the union data policy, the
warm start from the previous adapter (evolve.init: previous) and the by-iteration summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reflectevo.config.loader import from_dict
from reflectevo.config.params import read_params
from reflectevo.config.sections import EvolveConfig, evolve_chain
from reflectevo.training.config import DPOHyper, SFTHyper, TrainConfig
from reflectevo.errors import ReflectEvoError
from reflectevo.evolve import headline, iteration_row, summary, union_rows, versus_first

ROOT = Path(__file__).resolve().parents[1]


def evolve_params(**kw):
    base = {"iterations": 1, "setting": "one_stage", "data": "new", "init": "base", "chain": {}}
    return {**base, **kw}


def test_default_params_add_no_iteration():
    cfg = from_dict(EvolveConfig, read_params(ROOT / "params.yaml")["evolve"], "evolve", require_all=True)
    assert cfg.iterations == 1 and cfg.chain == {}


@pytest.mark.parametrize("kw, msg", [
    ({"iterations": 0}, r"evolve\.iterations: must be >= 1"),
    ({"setting": "sft_qa"}, r"evolve\.setting: unknown reflection setting 'sft_qa'\. .*Valid: dpo_pm, dpo_pref, one_stage, two_stage"),
    ({"setting": "one_stag"}, r"Did you mean 'one_stage'"),
    ({"data": "all"}, r"evolve\.data: unknown data policy 'all'"),
    ({"init": "last"}, r"evolve\.init: unknown init 'last'"),
    ({"iterations": 3, "chain": evolve_chain(2)}, r"evolve\.chain: does not match evolve\.iterations: 3 .*stages/evolve\.py chain 3"),
    ({"chain": {"it2": {"models": "models"}}}, r"evolve\.chain\.it2\.data: required key is missing"),
])
def test_bad_evolve_params_are_one_clear_error(kw, msg):
    with pytest.raises(ReflectEvoError, match=msg):
        from_dict(EvolveConfig, evolve_params(**kw), "evolve", require_all=True)


def test_chain_names_the_previous_iterations_outputs():
    assert evolve_chain(1) == {}
    assert evolve_chain(3) == {"it2": {"models": "models", "data": "data/curated"},
                               "it3": {"models": "evolve/it2/models", "data": "evolve/it2/data"}}
    cfg = from_dict(EvolveConfig, evolve_params(iterations=3, chain=evolve_chain(3)), "evolve", require_all=True)
    assert cfg.chain["it3"].models == "evolve/it2/models"


def test_chain_command_rewrites_params_keeping_comments(tmp_path):
    import runpy

    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    app = runpy.run_path(str(ROOT / "stages/evolve.py"), run_name="evolve_stage")["app"]
    res = CliRunner().invoke(app, ["chain", "3", "--params", str(p)])
    assert res.exit_code == 0, res.output
    text = p.read_text()
    assert "# whose adapters write the next round" in text and "  iterations: 3" in text
    assert read_params(p)["evolve"]["chain"] == evolve_chain(3)
    # every line outside the evolve section is as written (no reflowed long lines, no requoting)
    def outside(lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("evolve:"))
        end = next((i for i in range(start + 1, len(lines)) if lines[i][:1].isalpha()), len(lines))
        return lines[:start], lines[end:]

    assert outside(text.splitlines()) == outside((ROOT / "params.yaml").read_text().splitlines())
    res = CliRunner().invoke(app, ["chain", "0", "--params", str(p)])
    assert res.exit_code == 2 and "evolve.iterations: must be >= 1" in res.output
    assert read_params(p)["evolve"]["iterations"] == 3        # nothing half-written


def row(rid, item, text):
    return {"id": rid, "item_id": item, "reflection": text}


def test_union_drops_repeats_and_near_duplicates_per_item():
    prev = [row("a", "i1", "I added the tens wrongly; recompute the sum of the tens first."),
            row("b", "i2", "The syllogism's second premise was misread.")]
    new = [row("a", "i1", "I added the tens wrongly; recompute the sum of the tens first."),        # same id
           row("c", "i1", "I added the tens wrongly; recompute the sum of the tens first!"),       # near-duplicate
           row("d", "i1", "Count the items one by one and write each partial total."),
           row("e", "i2", "I added the tens wrongly; recompute the sum of the tens first.")]       # other item: kept
    rows, counts = union_rows(prev, new, threshold=0.9)
    assert [r["id"] for r in rows] == ["a", "b", "d", "e"]
    assert counts == {"previous": 2, "new": 4, "same_id": 1, "near_duplicate": 1, "rows": 4}
    dpo = [{"id": "x", "item_id": "i", "chosen": {"reflection": "add"}, "rejected": {"reflection": "colour"}},
           {"id": "y", "item_id": "i", "chosen": {"reflection": "add"}, "rejected": {"reflection": "colour"}}]
    assert [r["id"] for r in union_rows(dpo, [], 0.9)[0]] == ["x"]


def test_summary_by_iteration_with_mcnemar_against_iteration_1():
    gen = {"diagnostics": {"overall": {"fix_rate": 0.3, "repeat_rate": 0.1}}}
    cur = {"counts": {"dplus_train": 4, "dplus_eval": 1, "dpm_train": 6, "dpm_eval": 0}}
    ev = {"systems": {"one_stage": {"overall": {"n": 4, "acc_t1": 0.25, "acc_t2": 0.5, "delta": 0.25}}}}
    r1 = iteration_row(1, gen, cur, ev, "one_stage", {"trained": True, "n_train": 4})
    assert r1 == {"iteration": 1, "train_fix_rate": 0.3, "repeat_rate": 0.1, "dplus": 5, "dpm": 6, "trained": True,
                  "n_train": 4, "acc_t1": 0.25, "acc_t2": 0.5, "delta": 0.25, "n_test": 4}
    first = [{"item_id": f"q{i}", "t2_correct": ok} for i, ok in enumerate([True, False, False, False])]
    later = [{"item_id": f"q{i}", "t2_correct": ok} for i, ok in enumerate([True, True, True, False])]
    assert versus_first(first, later) == {"n": 4, "b": 2, "c": 0, "p": 0.5}
    assert versus_first(first, []) is None
    r3 = iteration_row(3, {"iteration": 3, "stopped": "iteration 2's one_stage adapter ... not trained"}, None, None,
                       "one_stage")
    out = summary([r1, {**r1, "iteration": 2}, r3], "one_stage", "union", "previous")
    assert out["iterations"] == 3 and out["it2"]["acc_t2"] == 0.5 and out["stopped_at"] == 3
    assert out["it3"]["stopped"].startswith("iteration 2's")
    out["it2"]["vs_it1"] = versus_first(first, later)
    assert headline(out) == {"it1": {"train_fix_rate": 0.3, "dplus": 5, "acc_t2": 0.5, "delta": 0.25},
                             "it2": {"train_fix_rate": 0.3, "dplus": 5, "acc_t2": 0.5, "delta": 0.25, "p_vs_it1": 0.5}}


# ------------------------------------------------------------------------------------------------------
# evolve.init: previous


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_init_continues_from_the_previous_adapter(tiny_preset, tmp_path):
    """With lr 0 the trained adapter is its starting point: the previous adapter with `init`, the fresh
    LoRA (B = 0) without."""
    from dataclasses import replace

    from safetensors.torch import load_file
    from test_generation_adapters import FP, dplus_rows

    from reflectevo.training.run import train_setting

    hp = SFTHyper(epochs=1.0, max_steps=1, batch_size=2, max_length=1024, save_steps=0)
    cfg = TrainConfig(seed=0, sft=hp, dpo=DPOHyper(**dataclasses.asdict(hp), beta=0.1))
    prev = tmp_path / "prev"
    assert train_setting("one_stage", "tiny-random", tiny_preset, FP, dplus_rows(), [], cfg, prev)["trained"]
    frozen = replace(tiny_preset, lr_sft=0.0)
    warm = train_setting("one_stage", "tiny-random", frozen, FP, dplus_rows(), [], cfg, tmp_path / "warm",
                         init={"one_stage": prev})
    assert warm["trained"] and warm["init"]["one_stage"] > 0
    assert train_setting("one_stage", "tiny-random", frozen, FP, dplus_rows(), [], cfg, tmp_path / "fresh")["trained"]
    a, w, f = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("prev", "warm", "fresh"))
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(bool((a[k] == w[k]).all()) for k in a)
    assert all(float(f[k].abs().sum()) == 0.0 for k in lora_b) and any(float(a[k].abs().sum()) > 0 for k in lora_b)


def test_summary_names_an_untrained_setting(tmp_path):
    import runpy

    p = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text().replace("  setting: one_stage ", "  setting: dpo_pref  ")
    p.write_text(text)
    (tmp_path / "metrics/train").mkdir(parents=True)
    app = runpy.run_path(str(ROOT / "stages/evolve.py"), run_name="evolve_stage")["app"]
    res = CliRunner().invoke(app, ["summary", "--params", str(p), "--metrics-dir", str(tmp_path / "metrics"),
                                   "--out", str(tmp_path / "e.json"), "--plots", str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "evolve.setting: 'dpo_pref' is not trained by this pipeline" in res.output
    assert not (tmp_path / "e.json").exists()


def test_report_has_the_by_iteration_section(tmp_path):
    from reflectevo.report import build_report, load_inputs

    evo = {"setting": "one_stage", "data": "new", "init": "base", "iterations": 3, "stopped_at": 3,
           "it1": {"train_fix_rate": 0.3, "repeat_rate": 0.07, "dplus": 45, "dpm": 56, "acc_t1": 0.22, "acc_t2": 0.49,
                   "delta": 0.27},
           "it2": {"train_fix_rate": 0.35, "repeat_rate": 0.05, "dplus": 50, "dpm": 60, "acc_t1": 0.22, "acc_t2": 0.55,
                   "delta": 0.33, "vs_it1": {"n": 100, "b": 9, "c": 3, "p": 0.146}},
           "it3": {"stopped": "iteration 2's one_stage adapter is not trained (no training data)"}}
    path = tmp_path / "evolve.json"
    path.write_text(json.dumps(evo))
    page = build_report(load_inputs(None, None, None, evolve=path))
    section = page[page.index('id="evolve"'):]
    assert "Self-evolution by iteration" in page
    assert "<td>35.0</td><td>50</td><td>60</td><td>5.0</td><td>22.0</td><td>55.0</td><td>+33.0</td><td>0.146 (b=9, c=3)</td>" in section
    assert "stopped: iteration 2&#x27;s one_stage adapter is not trained (no training data)" in section
    assert "No self-evolution metrics" in build_report(load_inputs(None, None, None, evolve=tmp_path / "none.json"))
    path.write_text("[1, 2]")
    with pytest.raises(ReflectEvoError, match="expected metrics/evolve.json"):
        load_inputs(None, None, None, evolve=path)
