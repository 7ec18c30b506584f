"""The data card's per-domain table next to ReflectEvo-460K's published statistics, the sources' licences and
citations, and a scripted preset's train stage (a dry run: nothing to train, said on the card)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectevo import paper
from reflectevo.datacard import domain_table, sources_section


def row(items: int, samples: int, qa: int, pct: float, q: float, t1: float, t2: float, refl: float) -> dict:
    return {"items": items, "trial1_correct": 0, "reflection_samples": samples, "qa_reflection_samples": qa,
            "pct_correct_after_reflection": pct, "avg_question_words": q, "avg_trial1_words": t1,
            "avg_trial2_words": t2, "avg_reflection_words": refl}


def test_domain_table_sums_tasks_into_the_papers_domains() -> None:
    per_task = {"logiqa": row(10, 40, 8, 25.0, 100, 50, 60, 200),
                "bigbench/strategyqa": row(10, 60, 6, 10.0, 20, 30, 40, 100),   # logical too
                "math": row(5, 20, 4, 5.0, 70, 200, 250, 180),
                "rg/family_relationships": row(3, 6, 2, 50.0, 30, 10, 10, 10)}
    lines = domain_table(per_task)
    logical = next(ln for ln in lines if ln.startswith("| Logical reasoning |"))
    # 100 samples, 10 + 6 = 16 right -> 16%; question (100*10 + 20*10) / 20 = 60; reflection (200*40 + 100*60) / 100 = 140
    assert "| 100 / 253,405 | 14 / 164,746 | 16 / 16.6 | 60 / 140 | 40 / 131 | 48 / 163 | 140 / 238 |" in logical
    assert any(ln.startswith("| Mathematics | 20 / 92,967 |") for ln in lines)
    assert any(ln.startswith("| other | 6 / - |") for ln in lines)
    total = next(ln for ln in lines if ln.startswith("| **total** |"))
    assert "| 126 / 461,799 | 20 / 344,944 | 15.87 / 13.93 |" in total   # (10 + 6 + 1 + 3) / 126 right
    assert "| 58.6 / 130 |" in total   # questions: (1000 + 200 + 350 + 90) / 28 items
    assert "lengths in words" in "\n".join(lines)


def test_sources_section_has_licence_and_citation() -> None:
    text = "\n".join(sources_section(["logiqa", "math", "mbpp", "bigbench/coqa", "bigbench/winowhy", "rg/x"]))
    for d in ("logiqa", "math", "mbpp", "coqa", "bigbench"):
        info = paper.facts()["datasets"][d]
        assert info["license"] in text and info["citation"] in text and info["hub"] in text
    assert "`rg/x`: outside ReflectEvo's sources" in text and "Stand-ins" in text and "`bigbench/winowhy`" in text


def test_every_task_of_the_papers_sources_has_a_domain_and_dataset() -> None:
    from reflectevo.tasks.registry import task_group

    for name in task_group("reflectevo-train"):
        assert paper.domain_of(name), name
        assert paper.task_info(name)["dataset"] in paper.facts()["datasets"]
    assert len(task_group("reflectevo-train")) == 17
    assert len(paper.stand_ins()) == 6
    assert sum(d["reflection_samples"] for d in paper.domains().values()) == paper.total()["reflection_samples"]


def test_scripted_preset_train_stage_writes_a_skipped_card(tmp_path: Path) -> None:
    from reflectevo.config.presets import ModelPreset
    from reflectevo.training.config import TrainConfig
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.training.run import train_setting

    preset = ModelPreset(source="scripted", backend="scripted")
    result = train_setting("one_stage", "scripted", preset, model_fingerprint("scripted", preset), [{"x": 1}], [],
                           TrainConfig(),
                           tmp_path / "one_stage")
    assert result["trained"] is False and result["status"] == "skipped" and "scripted" in result["reason"]
    import json

    card = json.loads((tmp_path / "one_stage" / "model_card.json").read_text())
    assert card["status"] == "skipped"
    from reflectevo.systems import trained_cards

    cards, skipped = trained_cards(tmp_path, "scripted")   # evaluation lists it as skipped, with the reason
    assert "one_stage" not in cards and "scripted" in skipped["one_stage"]


@pytest.mark.parametrize("task", ["logiqa", "bigbench/causal_judgment", "bigbench_free"])
def test_paper_task_info(task: str) -> None:
    assert paper.task_info(task)["test_set"] in ("logiqa", "bigbench")
