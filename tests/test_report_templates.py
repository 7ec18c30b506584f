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
