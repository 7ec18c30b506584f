"""The report page rendered from real run outputs shows values, never Python reprs or undefined names.

Inputs: the committed default run's metrics (metrics/eval.json with its diagnostics, the demo's intrinsic
evaluation beside it, the self-evolution summary, plots/eval), and a data/curated/stats.json and
predictions file written by the real prepare → generate → curate → evaluate stage scripts with the
scripted model (data/ outputs are DVC outputs, not in git; the scripted model needs no weights and runs
in seconds). tests/test_pipeline.py checks the page the tiny-random pipeline writes the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
from fuzzing import fake_adapter
import yaml

from reflectevo import report

ROOT = Path(__file__).resolve().parents[1]

# What a value printed by mistake looks like: a Python repr, a Jinja undefined, a non-number.
REPR = re.compile(r"object at 0x|built-in method|bound method|<function |<class '|<generator |Undefined"
                  r"|\bNone\b|\bnan\b|\bNaN\b|\binf\b")


class _Visible(HTMLParser):
    """The page's text and attribute values, without scripts, styles and model text (<pre>)."""

    SKIP = frozenset({"script", "style", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth, self.parts, self.cells, self._cell = 0, [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1
        elif not self.depth:
            self.parts += [v for _, v in attrs if v]
        if tag == "td" and not self.depth:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.depth -= 1
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)
            if self._cell is not None:
                self._cell += data


def problems(page: str) -> list[str]:
    """Every repr-like string in the visible page, and every empty table cell (a None printed as nothing)."""
    v = _Visible()
    v.feed(page)
    text = "\n".join(v.parts)
    found = [text[max(0, m.start() - 60):m.end() + 20] for m in REPR.finditer(text)]
    found += [f"empty table cell #{i}" for i, c in enumerate(v.cells) if not c.strip()]
    return found


def sh(*args: str | Path, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, f"{args}: {res.stdout[-2000:]}\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory) -> Path:
    """stats.json, predictions and plots from the real stage scripts on the scripted model (seconds)."""
    from reflectevo.settings import registry

    work = tmp_path_factory.mktemp("scripted")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"] = "scripted"
    p["prepare"]["tasks"] = [{**p["prepare"]["tasks"][0], "n_train": 24, "n_test": 6}]
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    stages = ROOT / "stages"
    sh(stages / "prepare.py", "--params", "params.yaml", "--out", "data/sources", cwd=work)
    sh(stages / "generate.py", "--params", "params.yaml", "--sources", "data/sources/train.jsonl", "--out", "data/raw",
       "--summary", "metrics/generate.json", "--no-progress", cwd=work)
    sh(stages / "curate.py", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/curated",
       "--metrics", "metrics/curate.json", cwd=work)
    # the scripted model has no weights to train: every enabled setting gets a "trained" folder (a card naming
    # its adapter roles and small well-formed adapters, which the scripted backend ignores), the RL settings
    # their default "disabled" card
    for name, s in registry().settings.items():
        d = work / "models" / name
        if s.family == "rl":
            d.mkdir(parents=True)
            (d / "model_card.json").write_text(json.dumps({"status": "disabled",
                                                           "reason": "not enabled (train.rl.enabled: false)"}))
        else:
            fake_adapter(d, name, roles=tuple(s.roles))
    sh(stages / "evaluate.py", "--params", "params.yaml", "--sources", "data/sources/test.jsonl", "--models", "models",
       "--predictions", "data/eval/predictions.jsonl", "--metrics", "metrics/eval.json", "--plots", "plots/eval",
       cwd=work)
    return work


def test_every_section_renders_from_real_metrics_without_reprs(scripted_run):
    inp = report.load_inputs(ROOT / "metrics/eval.json", scripted_run / "data/curated/stats.json",
                             scripted_run / "data/eval/predictions.jsonl", ROOT / "plots/eval", 3,
                             evolve=ROOT / "metrics/evolve-3it/evolve.json",
                             others=[ROOT / "metrics/demo/eval-intrinsic.json"])
    for s in report.SECTIONS:   # every section has its input: none is left out or shown as missing
        view = s.view(inp)
        assert view is not None and not view.get("missing"), s.id
    page = report.build_report(inp)
    assert problems(page) == []
    # the diagnostics table's first column is the item count of each evaluated system (300 fresh items in
    # the demo, the committed run's test items here), not the name of a dict method
    n_test = json.loads((ROOT / "metrics/eval.json").read_text())["systems"]["base_reflect"]["overall"]["n"]
    diag = page[page.index('<h2 id="diagnostics"'):page.index('<h2 id="rounds"')]
    assert f"<th>base_reflect</th><td>{n_test}</td>" in diag and "<th>generated (train split)</th><td>24</td>" in diag


def test_the_scripted_run_alone_renders_without_reprs(scripted_run, tmp_path):
    """A whole page from one run's own outputs (as the report stage writes it), every system present."""
    out = report.render_report(scripted_run / "metrics/eval.json", scripted_run / "data/curated/stats.json",
                               scripted_run / "data/eval/predictions.jsonl", tmp_path / "index.html",
                               plots_dir=scripted_run / "plots/eval")
    page = out.read_text(encoding="utf-8")
    assert problems(page) == [] and "Missing inputs" not in page
    for system in ("base_noreflect", "base_reflect", "one_stage", "two_stage", "dpo_pm", "dpo_pref", "sft_qa"):
        assert f"<code>{system}</code>" in page


@pytest.mark.parametrize("page", ["report/demo.html", "report/evolve-3it.html"])
def test_committed_pages_hold_no_reprs(page):
    assert problems((ROOT / page).read_text(encoding="utf-8")) == []


def test_a_dict_key_wins_over_a_dict_method_of_the_same_name():
    env = report._env()
    assert env.undefined is jinja2.StrictUndefined   # an undefined name fails the render, it is never printed
    row = {"items": 64, "values": 3, "keys": "k"}
    assert env.from_string("{{ r.items }} {{ r.values }} {{ r.keys }}").render(r=row) == "64 3 k"
    # without such a key the method stays reachable, and a missing key still fails
    assert env.from_string("{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}").render(d={"a": 1}) == "a=1"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ d.nope }}").render(d={"a": 1})


def test_problems_finds_reprs_and_empty_cells():
    bad = ("<table><tr><td>&lt;built-in method items of dict object at 0x7f&gt;</td><td></td>"
           "<td title=\"n=None\">1</td></tr></table><pre>None is fine in model text</pre>"
           "<script>var x = undefined; // None</script>")
    found = problems(bad)
    assert "empty table cell #1" in found and any("n=None" in f for f in found)
    assert any(f.startswith("<built-in method items") for f in found)
    assert not [f for f in found if "model text" in f or "undefined" in f]   # <pre> and <script> are not looked at
    assert problems("<table><tr><td>–</td><td>12.5</td></tr></table>") == []
