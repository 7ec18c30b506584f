"""The report's HTML comes from Jinja2 templates (resources/report/), one partial per section, autoescaped."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import tomllib
from pathlib import Path

from test_report import EVIL, parse, render, text_of, write_inputs

from reflectevo import report

ROOT = Path(__file__).resolve().parents[1]


def test_report_module_holds_no_page_markup():
    src = (ROOT / "reflectevo/report.py").read_text(encoding="utf-8")
    tags = re.findall(r"<(?:td|tr|th|table|details|summary|div|span|h[1-4]|ul|li|nav|footer|style|body|head)\b", src)
    assert tags == []  # the page lives in the templates
    for s in report.SECTIONS:
        assert (report.TEMPLATES / s.template).is_file(), s.template


def test_templates_ship_as_package_data():
    pats = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["reflectevo"]
    files = [f for f in report.TEMPLATES.iterdir() if f.is_file()]
    assert {f.suffix for f in files} == {".jinja", ".css"}
    unshipped = [f.name for f in files if not any(fnmatch.fnmatch(str(f.relative_to(ROOT / "reflectevo")), p)
                                                   for p in pats)]
    assert unshipped == []


def test_autoescape_is_on_for_every_value(tmp_path):
    env = report._env()
    assert env.autoescape is True
    assert env.from_string("{{ x }}|{{ y }}").render(x=EVIL, y=None) == \
        "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;|"
    # a hostile system, task and skip reason reach the matrix, the stats and the nav only as text
    p = write_inputs(tmp_path)
    ev = json.loads(p["metrics"].read_text())
    ev["systems"][EVIL] = {"overall": ev["systems"]["base_reflect"]["overall"], "per_task": {EVIL: {"n": 1}}}
    ev["skipped"][EVIL] = EVIL
    p["metrics"].write_text(json.dumps(ev))
    page = report.render_report(p["metrics"], p["stats"], p["predictions"], tmp_path / "r.html",
                                plots_dir=p["plots"]).read_text()
    assert EVIL not in page and not [t for t, _ in parse(page).tags if t == "img"]
    assert page.count("&lt;script&gt;alert(&quot;pwned&quot;)") >= 4  # system, task, skipped name and reason


def test_a_section_is_one_registry_entry_and_one_partial(tmp_path, monkeypatch):
    extra_dir = tmp_path / "templates"
    extra_dir.mkdir()
    for f in report.TEMPLATES.iterdir():
        (extra_dir / f.name).write_bytes(f.read_bytes())
    (extra_dir / "section_extra.html.jinja").write_text(
        '{% if view.missing %}\n<p class="missing">none</p>\n{% else %}\n\n<p>{{ view.note }}</p>\n{% endif %}\n')
    extra = report.Section("extra", "extra things", "Extra section", "section_extra.html.jinja",
                           lambda inp: {"missing": None, "note": f"{len(inp.sources)} inputs <b>"})
    monkeypatch.setattr(report, "TEMPLATES", extra_dir)
    monkeypatch.setattr(report, "SECTIONS", (*report.SECTIONS, extra))
    report._env.cache_clear()
    try:
        _, page = render(tmp_path / "run")
    finally:
        report._env.cache_clear()
    assert '<a href="#extra">extra things</a></nav>' in page
    assert '<h2 id="extra">Extra section</h2>\n<p>5 inputs &lt;b&gt;</p>\n<footer>' in page
    assert "Data statistics" in text_of(page)  # the other sections are unchanged
    assert dataclasses.is_dataclass(extra)


def test_matrix_marks_mcnemar_significance_and_diagnostics_section(tmp_path):
    """The Table-2 matrix marks exact McNemar p-values (Acc@t1 vs Acc@t2, and a trained setting vs
    base_reflect); the diagnostics section shows format failures, repeat and fix rates per system."""
    from test_report import eval_fixture, stats_fixture

    ev = eval_fixture()
    main = ev["system"]
    block = ev["systems"][main]["overall"]
    block["mcnemar_t1_t2"] = {"n": 40, "b": 12, "c": 0, "p": 0.000488}
    block["vs_base_reflect"] = {"n": 40, "b": 9, "c": 1, "p": 0.0215}
    ev["diagnostics"] = {main: {"overall": {"items": 40, "trial1_format_failures": 2, "samples": 30, "fixes": 12,
                                            "fix_rate": 0.4, "repeats": 3, "repeat_rate": 0.1,
                                            "trial2_format_failures": 1, "answer_steps": {"trial1": 4, "trial2": 5},
                                            "stop_reasons": {"trial1": {"stop": 40}}, "tokens": {}}}}
    stats = stats_fixture()
    stats["diagnostics"] = {"overall": {"items": 9, "samples": 8, "fix_rate": 0.25, "repeat_rate": 0.5},
                            "per_task": {}, "per_demand": {"1-1-1": {"samples": 4, "fixes": 2, "fix_rate": 0.5,
                                                                      "repeats": 1, "repeat_rate": 0.25,
                                                                      "trial2_format_failures": 0}}}
    inp = report.ReportInputs(eval=report.validate_eval(tmp_path / "e.json", ev),
                              stats=report.validate_stats(tmp_path / "s.json", stats))
    page = report.build_report(inp)
    text = text_of(page)
    assert "vs base_reflect +9/−1, p=0.021 *" in text
    assert "McNemar Acc@t1 vs Acc@t2 p=0.000488" in page and '<sup class="sig">**</sup>' in page
    assert "Run diagnostics" in text and "4 / 5" in text and "40.0" in text and "1-1-1" in text
