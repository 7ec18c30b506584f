"""DVC deps that cannot drift: every stage of dvc.yaml (and of the demo's pipeline) lists, as a file or a folder
above it, every library module its script reaches through imports (imports inside functions and registry
strings included) and every resource file those modules read. Otherwise a change to that module leaves
`dvc repro` saying "up to date" over results the new code would not produce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from structure_graph import ROOT, modules, reach

# Modules that read package data at run time -> the files they read.
RESOURCES = {
    "reflectevo.settings": ("reflectevo/resources/settings.yaml",),
    "reflectevo.demands": ("reflectevo/resources/demands.yaml",),
    "reflectevo.tasks.fewshot": ("reflectevo/resources/fewshot",),
    "reflectevo.sandbox": ("reflectevo/resources/sandbox_child.py",),
    "reflectevo.report": ("reflectevo/resources/report", "reflectevo/resources/vega"),
    "reflectevo.paper": ("reflectevo/resources/paper.yaml",),
}
PIPELINES = (ROOT / "dvc.yaml", ROOT / "demo" / "dvc.yaml")


def stage_scripts() -> list[tuple[str, Path, list[str]]]:
    """(stage name, its script, its deps relative to the project root) for every stage that runs a script."""
    out = []
    for dvc_file in PIPELINES:
        spec = yaml.safe_load(dvc_file.read_text())
        for name, stage in spec["stages"].items():
            body = stage.get("do", stage)
            m = re.search(r"stages/(\w+)\.py", body["cmd"])
            if not m:
                continue
            wdir = (dvc_file.parent / body.get("wdir", ".")).resolve()
            deps = []
            for d in body.get("deps", []):
                if "${" not in d:
                    deps.append(str((wdir / d).resolve().relative_to(ROOT)))
            where = "" if dvc_file.parent == ROOT else f"{dvc_file.parent.name}/"
            out.append((f"{where}{name}", ROOT / "stages" / f"{m.group(1)}.py", deps))
    return out


def needed(script: Path) -> list[str]:
    mods = modules()
    files = {str(mods[m].relative_to(ROOT)) for m in reach(script)}
    files.add(str(script.relative_to(ROOT)))
    for m in reach(script):
        files.update(RESOURCES.get(m, ()))
    return sorted(files)


def uncovered(files: list[str], deps: list[str]) -> list[str]:
    return [f for f in files if not any(f == d.rstrip("/") or f.startswith(d.rstrip("/") + "/") for d in deps)]


@pytest.mark.parametrize("stage,script,deps", stage_scripts(), ids=[s for s, *_ in stage_scripts()])
def test_stage_deps_cover_every_module_it_reaches(stage, script, deps):
    missing = uncovered(needed(script), deps)
    assert missing == [], f"dvc stage {stage}: add to its deps: {missing}"


def test_every_resource_reader_is_known():
    """A module that opens package data is in RESOURCES (so the deps check above knows the files it reads)."""
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if re.search(r'joinpath\("|RESOURCES\s*=|resources\.files\(', text):
            assert name in RESOURCES, f"{name} reads package resources: list them in tests/test_dvc_deps.py RESOURCES"


def test_the_check_finds_a_missing_module():
    """Leaving reflectevo/protocol out of the generate stage's deps is caught."""
    generate = next((s, d) for name, s, d in stage_scripts() if name == "generate")
    files = needed(generate[0])
    assert "reflectevo/protocol/rounds.py" in files and "reflectevo/resources/demands.yaml" in files
    assert uncovered(files, [d for d in generate[1] if not d.startswith("reflectevo/protocol")]) != []
