"""The evaluation report (one self-contained HTML page) and the offline `dvc plots show` template.

    reflectevo report --metrics metrics/eval.json --stats data/curated/stats.json \
        --predictions data/eval/predictions.jsonl --plots plots/eval --out report/index.html

The page holds: a Table-2-style matrix (systems × tasks, Acc@t2 (Δ) [95% CI] with Acc@t1), the
accuracy-by-round chart (Vega-Lite, drawn by the vendored Vega builds inlined into the page), the
trial-1 → final transition matrix per system, the ReflectEvo-460K-style data statistics, and an
episode browser with the best and worst reflections of every system (prompts included). Nothing is
loaded from the network.

The HTML lives in Jinja2 templates (`resources/report/`: `page.html.jinja` and one partial per
section); this module reads and validates the inputs and computes what each section shows (the
`*_view` functions, listed in `SECTIONS`). Autoescaping is on: every value a template prints is
HTML-escaped (model text included); only the vendored Vega builds and the chart spec (made safe for
`<script>` here) go in unescaped.

Missing or empty inputs are reported on the page; malformed inputs raise ReflectEvoError naming the
file. The vendored Vega builds live in `resources/vega/` (see its README; `scripts/vendor_vega.sh`
re-fetches them); `write_plots_template()` builds `resources/plots_template.html` from them.
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError
from reflectevo.settings import label, system_names

RESOURCES = Path(__file__).parent / "resources"
VEGA_DIR = RESOURCES / "vega"
VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # load order: vega-lite and embed need vega
PLOTS_TEMPLATE = RESOURCES / "plots_template.html"
TEMPLATES = RESOURCES / "report"  # Jinja2 templates of the page and of PLOTS_TEMPLATE

OUTCOMES = ("correct", "incorrect")
EPISODE_KEYS = ("reflection", "t2", "output", "rounds")  # a prediction row with any of these is an episode
MAX_TEXT = 6000  # characters shown per model text / prompt in the episode browser


# --------------------------------------------------------------------------------------------------
# Vendored Vega


def vega_manifest() -> dict[str, Any]:
    """resources/vega/manifest.json: name, version, tarball URL, integrity, sha256 of each vendored build."""
    path = VEGA_DIR / "manifest.json"
    if not path.exists():
        raise ReflectEvoError(f"{path}: missing; run scripts/vendor_vega.sh")
    return json.loads(path.read_text(encoding="utf-8"))


def vendored_scripts() -> list[dict[str, Any]]:
    """The vendored vega, vega-lite and vega-embed builds, in load order, each safe to inline in <script>."""
    from markupsafe import Markup

    versions = {p["file"]: p["version"] for p in vega_manifest()["packages"]}
    out = []
    for name in VEGA_FILES:
        path = VEGA_DIR / name
        if not path.exists():
            raise ReflectEvoError(f"{path}: vendored Vega build missing; run scripts/vendor_vega.sh")
        js = path.read_text(encoding="utf-8")
        # The source map is not vendored; drop the comment pointing at it.
        js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
        if "</script" in js.lower() or "<!--" in js:
            raise ReflectEvoError(f"{path}: contains '</script' or '<!--' and cannot be inlined")
        out.append({"name": name, "version": versions.get(name, "?"), "js": Markup(js)})
    return out


def plots_template_html() -> str:
    """The HTML template for `dvc plots show --html-template`: vendored Vega inlined, no {scripts}.

    DVC's renderer (dvc_render.html) fills the template by plain `str.replace` of `{plot_divs}` (and of
    `{scripts}` / `{refresh_tag}` if present). Leaving out `{scripts}` drops DVC's CDN <script> tags;
    each plot div calls the global `vegaEmbed`, which the inlined builds define.
    """
    pkgs = ", ".join(f'{p["name"]} {p["version"]}' for p in vega_manifest()["packages"])
    return _env().get_template("plots_template.html.jinja").render(packages=pkgs, scripts=vendored_scripts())


def write_plots_template(path: str | Path = PLOTS_TEMPLATE) -> Path:
    from reflectevo.jsonio import write_text

    path = Path(path)
    write_text(path, plots_template_html())
    path.chmod(0o644)
    return path


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class ReportInputs:
    """Everything the page shows; None = that input is missing (the reason is in `missing`)."""

    eval: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    accuracy_by_round: list[dict[str, Any]] | None = None
    transitions: list[dict[str, Any]] | None = None
    episodes: dict[str, Any] | None = None  # from predictions: see collect_episodes
    evolve: dict[str, Any] | None = None    # metrics/evolve.json (self-evolution by iteration)
    others: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (source, eval JSON) of other protocols
    sources: dict[str, str] = field(default_factory=dict)  # input kind -> path
    missing: dict[str, str] = field(default_factory=dict)  # path -> why it is not shown
    n_episodes: int = 3  # best and worst episodes shown per system


def _read_json(path: Path, missing: dict[str, str]) -> Any:
    """Parsed JSON, or None (recorded in `missing`) when the file is absent or empty."""
    if not path.exists():
        missing[str(path)] = "not found"
        return None
    from reflectevo.jsonio import read_input_bytes

    text = read_input_bytes(path, "JSON file").decode("utf-8", errors="replace")
    if not text.strip():
        missing[str(path)] = "empty file"
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReflectEvoError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_block(path: Path, where: str, block: Any) -> None:
    if not isinstance(block, dict):
        raise ReflectEvoError(f"{path}: {where} must be an object, got {type(block).__name__}")
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"):
        v = block.get(key)
        if v is not None and not _is_num(v):
            raise ReflectEvoError(f"{path}: {where}.{key} must be a number or null, got {v!r}")
    n = block.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ReflectEvoError(f"{path}: {where}.n must be a non-negative integer, got {n!r}")
    for key in ("acc_t1_ci", "acc_t2_ci"):
        ci = block.get(key)
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_num(c) for c in ci)):
            raise ReflectEvoError(f"{path}: {where}.{key} must be [lo, hi] or null, got {ci!r}")
    rounds = block.get("acc_by_round")
    if rounds is not None and not (isinstance(rounds, list) and all(r is None or _is_num(r) for r in rounds)):
        raise ReflectEvoError(f"{path}: {where}.acc_by_round must be a list of numbers, got {rounds!r}")


_COUNTS = ("items", "samples", "fixes", "repeats", "trial1_format_failures", "trial2_format_failures")
_RATES = ("fix_rate", "repeat_rate")
_DEMAND_KEYS = ("samples", "fixes", "trial2_format_failures")   # what the page shows per demand id


def _check_diag_block(path: Path, where: str, block: Any, required: Sequence[str] = ()) -> None:
    """One block of run diagnostics (reflectevo.diagnostics): counts, rates, answer steps, stop reasons and
    tokens per phase, each of the shape the page lays out."""
    if not isinstance(block, dict):
        raise ReflectEvoError(f"{path}: {where} must be an object, got {type(block).__name__}")
    for key in required:
        if key not in block:
            raise ReflectEvoError(f"{path}: {where}.{key} is missing")
    for key in _COUNTS:
        v = block.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ReflectEvoError(f"{path}: {where}.{key} must be a non-negative integer, got {v!r}")
    for key in _RATES:
        v = block.get(key)
        if v is not None and not _is_num(v):
            raise ReflectEvoError(f"{path}: {where}.{key} must be a number or null, got {v!r}")
    steps = block.get("answer_steps")
    if steps is not None and not (isinstance(steps, dict) and all(_is_num(v) or v is None for v in steps.values())):
        raise ReflectEvoError(f"{path}: {where}.answer_steps must map each phase to a count")
    for key in ("stop_reasons", "tokens"):
        phases = block.get(key)
        if phases is None:
            continue
        if not isinstance(phases, dict) or not all(isinstance(v, dict) for v in phases.values()):
            raise ReflectEvoError(f"{path}: {where}.{key} must map each phase to an object")
        for phase, counts in phases.items():
            if not all(_is_num(v) or v is None for v in counts.values()):
                raise ReflectEvoError(f"{path}: {where}.{key}.{phase} must hold numbers")


def validate_diagnostics(path: Path, data: Any, episodes: bool) -> dict[str, Any]:
    """The `diagnostics` of metrics/eval.json (system -> {overall, per_task}) or of curate's stats.json
    (`episodes`: {overall, per_task, per_demand})."""
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: 'diagnostics' must be an object, got {type(data).__name__}")
    groups = {"diagnostics": data} if episodes else {f"diagnostics.{k}": v for k, v in data.items()}
    for where, group in groups.items():
        if not isinstance(group, dict):
            raise ReflectEvoError(f"{path}: {where} must be an object, got {type(group).__name__}")
        if not episodes or "overall" in group:
            _check_diag_block(path, f"{where}.overall", group.get("overall"))
        for part, required in (("per_task", ()), ("per_demand", _DEMAND_KEYS)):
            blocks = group.get(part) or {}
            if not isinstance(blocks, dict):
                raise ReflectEvoError(f"{path}: {where}.{part} must be an object")
            for k, block in blocks.items():
                _check_diag_block(path, f"{where}.{part}.{k}", block, required)
    return data


def validate_eval(path: Path, data: Any) -> dict[str, Any]:
    """metrics/eval.json, normalised so that `systems` always exists (old files: the main system only)."""
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: expected a JSON object, got {type(data).__name__}")
    systems = data.get("systems")
    if systems is None and isinstance(data.get("overall"), dict):
        systems = {str(data.get("system") or "main"): {"overall": data["overall"],
                                                       "per_task": data.get("per_task") or {}}}
    systems = systems or {}
    if not isinstance(systems, dict):
        raise ReflectEvoError(f"{path}: 'systems' must be an object of system -> metrics")
    for name, entry in systems.items():
        if not isinstance(entry, dict):
            raise ReflectEvoError(f"{path}: systems.{name} must be an object")
        if entry.get("overall") is not None:
            _check_block(path, f"systems.{name}.overall", entry["overall"])
        per_task = entry.get("per_task") or {}
        if not isinstance(per_task, dict):
            raise ReflectEvoError(f"{path}: systems.{name}.per_task must be an object of task -> metrics")
        for task, block in per_task.items():
            _check_block(path, f"systems.{name}.per_task.{task}", block)
    skipped = data.get("skipped") or {}
    if not isinstance(skipped, dict):
        raise ReflectEvoError(f"{path}: 'skipped' must be an object of setting -> reason")
    if data.get("diagnostics") is not None:
        validate_diagnostics(path, data["diagnostics"], episodes=False)
    return {**data, "systems": systems, "skipped": {str(k): str(v) for k, v in skipped.items()}}


def validate_stats(path: Path, data: Any) -> dict[str, Any]:
    """data/curated/stats.json (table under `stats`) or a bare {per_task, total} table, or metrics/curate.json."""
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: expected a JSON object, got {type(data).__name__}")
    table = data.get("stats") if isinstance(data.get("stats"), dict) else data
    per_task = table.get("per_task") or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise ReflectEvoError(f"{path}: 'per_task' must be an object of task -> statistics")
    total = table.get("total")
    if total is not None and not isinstance(total, dict):
        raise ReflectEvoError(f"{path}: 'total' must be an object")
    for key in ("counts", "drops", "diagnostics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ReflectEvoError(f"{path}: {key!r} must be an object")
    if data.get("diagnostics"):
        validate_diagnostics(path, data["diagnostics"], episodes=True)
    return {"per_task": per_task, "total": total, "counts": data.get("counts") or {},
            "drops": data.get("drops") or {}, "generator": data.get("generator"), "notes": data.get("notes") or {},
            "pct_correct_after_reflection": data.get("pct_correct_after_reflection"),
            "diagnostics": data.get("diagnostics") or {}}


def _rows(path: Path, data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ReflectEvoError(f"{path}: expected a JSON list of {what} rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ReflectEvoError(f"{path}: row {i} must be an object, got {type(row).__name__}")
        if not isinstance(row.get("system"), str):
            raise ReflectEvoError(f"{path}: row {i}: 'system' must be a string")
    return data


def validate_accuracy_by_round(path: Path, data: Any) -> list[dict[str, Any]]:
    """plots/eval/accuracy_by_round.json: [{system, round (1 = trial 1), accuracy in [0, 1], n}]."""
    rows = _rows(path, data, "accuracy-by-round")
    for i, row in enumerate(rows):
        r, acc, n = row.get("round"), row.get("accuracy"), row.get("n")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ReflectEvoError(f"{path}: row {i}: 'round' must be an integer >= 1, got {r!r}")
        if not _is_num(acc) or not 0 <= acc <= 1:
            raise ReflectEvoError(f"{path}: row {i}: 'accuracy' must be a number in [0, 1], got {acc!r}")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ReflectEvoError(f"{path}: row {i}: 'n' must be a non-negative integer, got {n!r}")
    return rows


def validate_transitions(path: Path, data: Any) -> list[dict[str, Any]]:
    """plots/eval/transitions.json: [{system, trial1: correct|incorrect, final: correct|incorrect, count}]."""
    rows = _rows(path, data, "transition")
    for i, row in enumerate(rows):
        for key in ("trial1", "final"):
            if row.get(key) not in OUTCOMES:
                raise ReflectEvoError(f"{path}: row {i}: {key!r} must be 'correct' or 'incorrect', got {row.get(key)!r}")
        c = row.get("count")
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ReflectEvoError(f"{path}: row {i}: 'count' must be a non-negative integer, got {c!r}")
    return rows


def _final_correct(row: dict[str, Any]) -> bool:
    """The last answer's verdict: final_correct, else correct_by_round[-1], else the last round's, else t2_correct."""
    if isinstance(row.get("final_correct"), bool):
        return row["final_correct"]
    by_round = row.get("correct_by_round")
    if isinstance(by_round, list) and by_round and isinstance(by_round[-1], bool):
        return by_round[-1]
    rounds = row.get("rounds")
    if isinstance(rounds, list) and rounds and isinstance(rounds[-1], dict):
        for key in ("t2_correct", "correct"):
            if isinstance(rounds[-1].get(key), bool):
                return rounds[-1][key]
    if "t2_correct" in row:
        return bool(row["t2_correct"])
    return bool(row.get("t1_correct"))


def _category(t1: bool, final: bool) -> str:
    return {(False, True): "i→c", (True, False): "c→i", (False, False): "i→i", (True, True): "c→c"}[(t1, final)]


BEST = ("i→c", "c→c")   # best reflections: fixes first, then kept-right answers (intrinsic protocol)
WORST = ("c→i", "i→i")  # worst: broke a right answer first, then still wrong


def collect_episodes(path: Path, n_episodes: int = 3) -> dict[str, Any]:
    """Stream predictions.jsonl; keep per system the counts per outcome and the first few episodes of each.

    Returns {system: {"rows": n, "episodes": n with a reflection or retry, "counts": {cat: n},
    "transitions": {(t1, final): n}, "keep": {cat: {task: [rows]}}}} in file order of systems.
    """
    from reflectevo.jsonio import iter_jsonl

    out: dict[str, Any] = {}
    for line, row in enumerate(iter_jsonl(path), start=1):
        system = row.get("system")
        if not isinstance(system, str) or not system:
            raise ReflectEvoError(f"{path}:{line}: missing or non-string 'system' field")
        if not isinstance(row.get("t1_correct"), bool):
            raise ReflectEvoError(f"{path}:{line}: 't1_correct' must be true or false")
        s = out.setdefault(system, {"rows": 0, "episodes": 0, "counts": defaultdict(int),
                                    "transitions": defaultdict(int), "keep": defaultdict(dict)})
        s["rows"] += 1
        t1, final = row["t1_correct"], _final_correct(row)
        if any(row.get(k) not in (None, "", []) for k in EPISODE_KEYS):
            s["transitions"][(t1, final)] += 1
            cat = _category(t1, final)
            s["episodes"] += 1
            s["counts"][cat] += 1
            kept = s["keep"][cat].setdefault(str(row.get("task")), [])
            if len(kept) < n_episodes:  # up to n per task, so the browser can show several tasks
                kept.append(row)
        elif t1 and "t2_correct" in row:
            s["transitions"][(t1, final)] += 1  # oracle protocol: right at trial 1, no retry needed
    for s in out.values():
        if not s["episodes"]:  # answers only (sft_qa): no final answer, no transitions
            s["transitions"].clear()
    return out


def load_inputs(metrics_eval: str | Path | None, curate_stats: str | Path | None, predictions: str | Path | None,
                plots_dir: str | Path | None = None, n_episodes: int = 3,
                evolve: str | Path | None = None, others: Sequence[str | Path] = ()) -> ReportInputs:
    """Read and validate every input; missing/empty ones are noted, malformed ones raise ReflectEvoError.
    `others`: more metrics/eval.json files (e.g. the same systems under another protocol), shown beside."""
    inp = ReportInputs(n_episodes=n_episodes)
    for other in others:
        p = Path(other)
        inp.sources[f"other:{p}"] = str(p)
        data = _read_json(p, inp.missing)
        if data is not None:
            inp.others.append((str(p), validate_eval(p, data)))
    if evolve is not None:
        p = Path(evolve)
        inp.sources["evolve"] = str(p)
        data = _read_json(p, inp.missing)
        if data is not None and not (isinstance(data, dict) and isinstance(data.get("it1"), dict)):
            raise ReflectEvoError(f"{p}: expected metrics/evolve.json from stages/evolve.py (an 'it1' block)")
        inp.evolve = data
    if metrics_eval is not None:
        p = Path(metrics_eval)
        inp.sources["metrics"] = str(p)
        data = _read_json(p, inp.missing)
        inp.eval = None if data is None else validate_eval(p, data)
    if curate_stats is not None:
        p = Path(curate_stats)
        inp.sources["stats"] = str(p)
        data = _read_json(p, inp.missing)
        inp.stats = None if data is None else validate_stats(p, data)
    if plots_dir is not None:
        for name, check, attr in (("accuracy_by_round.json", validate_accuracy_by_round, "accuracy_by_round"),
                                  ("transitions.json", validate_transitions, "transitions")):
            p = Path(plots_dir) / name
            inp.sources[attr] = str(p)
            data = _read_json(p, inp.missing)
            setattr(inp, attr, None if data is None else check(p, data))
    if predictions is not None:
        p = Path(predictions)
        inp.sources["predictions"] = str(p)
        if not p.exists():
            inp.missing[str(p)] = "not found"
        elif p.stat().st_size < 4096 and not p.read_bytes().strip():
            inp.missing[str(p)] = "empty file"
        else:
            inp.episodes = collect_episodes(p, n_episodes)
    return inp


# --------------------------------------------------------------------------------------------------
# What each section shows (the templates only lay it out)


def _pct(x: Any) -> str:
    return "–" if not _is_num(x) else f"{100 * x:.1f}"


def _signed(x: Any) -> str:
    return "–" if not _is_num(x) else f"{100 * x:+.1f}"


def _ci(ci: Any) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"


def _order(systems: list[str]) -> list[str]:
    known = [s for s in system_names() if s in systems]   # the registry's order (the paper's Table 2 rows)
    return known + [s for s in systems if s not in known]


def _label(system: str) -> str:
    return label(system)


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no '</script>', '<!--' or '&' can appear literally."""
    return (json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _missing(inp: ReportInputs, kind: str, what: str) -> dict[str, Any]:
    """Why a section has nothing to show: no input given (path None), or the input's problem."""
    path = inp.sources.get(kind)
    return {"what": what, "path": path, "why": None if path is None else inp.missing.get(path, "no data")}


def _cell(block: dict[str, Any] | None, best: float | None) -> dict[str, Any]:
    """One matrix cell: Acc@t2 (Δ) [CI] over Acc@t1, Δi→c, Δc→i (in %), or Acc@t1 only (answers-only systems)."""
    if not block:
        return {"na": True}
    n, acc2 = block.get("n"), block.get("acc_t2")
    acc1, ci1 = _pct(block.get("acc_t1")), _ci(block.get("acc_t1_ci"))
    if acc2 is None:
        return {"na": False, "t1_only": True, "acc_t1": acc1, "acc_t1_ci": ci1, "title": f"n={n}; Acc@t1 only"}
    i2c, c2i = _signed(block.get("delta_i2c")), _signed(block.get("delta_c2i"))
    p_t = (block.get("mcnemar_t1_t2") or {}).get("p")
    vs = block.get("vs_base_reflect") or {}
    p_b = vs.get("p")
    title = f"n={n}; Δi→c {i2c}, Δc→i {c2i}; Acc@t1 {acc1} {ci1}"
    if _is_num(p_t):
        title += f"; McNemar Acc@t1 vs Acc@t2 p={p_t:.3g}"
    if _is_num(p_b):
        title += f"; vs base_reflect on Acc@t2: +{vs.get('b')} / -{vs.get('c')} items, p={p_b:.3g}"
    return {"na": False, "t1_only": False, "best": best is not None and _is_num(acc2) and abs(acc2 - best) < 1e-12,
            "acc_t2": _pct(acc2), "delta": _signed(block.get("delta")), "acc_t2_ci": _ci(block.get("acc_t2_ci")),
            "acc_t1": acc1, "i2c": i2c, "c2i": c2i, "title": title, "sig": _stars(p_t),
            "vs_base": (f"vs base_reflect +{vs.get('b')}/−{vs.get('c')}, p={p_b:.2g}" if _is_num(p_b) else ""),
            "sig_base": _stars(p_b)}


def _stars(p: Any) -> str:
    """Significance marks of an exact McNemar p-value: ** p < 0.01, * p < 0.05."""
    return "" if not _is_num(p) else "**" if p < 0.01 else "*" if p < 0.05 else ""


def matrix_view(inp: ReportInputs) -> dict[str, Any]:
    """Table 2: a row per system (paper order), a column per task plus overall; the best Acc@t2 per column."""
    if inp.eval is None:
        return {"missing": _missing(inp, "metrics", "evaluation metrics")}
    return _matrix(inp.eval, inp.sources.get("metrics"))


def _matrix(ev: dict[str, Any], source: str | None) -> dict[str, Any]:
    systems = _order(list(ev["systems"]))
    tasks = sorted({t for s in ev["systems"].values() for t in (s.get("per_task") or {})})
    best = {}
    for t in [*tasks, None]:
        vals = [(s.get("overall") if t is None else (s.get("per_task") or {}).get(t)) or {}
                for s in ev["systems"].values()]
        accs = [b.get("acc_t2") for b in vals if _is_num(b.get("acc_t2"))]
        best[t] = max(accs) if accs and max(accs) > min(accs) else None  # no mark when all tie
    rows = []
    for s in systems:
        entry = ev["systems"][s]
        cells = [_cell((entry.get("per_task") or {}).get(t), best[t]) for t in tasks]
        rows.append({"name": s, "label": _label(s), "main": s == ev.get("system"),
                     "cells": [*cells, _cell(entry.get("overall"), best[None])]})
    return {"missing": None, "protocol": ev.get("protocol", "?"), "source": source,
            "tasks": tasks, "systems": rows, "skipped": list(ev["skipped"].items())}


def others_view(inp: ReportInputs) -> dict[str, Any] | None:
    """The same matrix for every other evaluation given (None: the page has no such section)."""
    if not inp.others:
        return None
    return {"missing": None, "tables": [_matrix(ev, src) for src, ev in inp.others]}


def _round_rows(inp: ReportInputs) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if inp.accuracy_by_round is not None:
        return inp.accuracy_by_round, {"path": inp.sources.get("accuracy_by_round")}
    rows: list[dict[str, Any]] = []
    if inp.eval is not None:
        for s, entry in inp.eval["systems"].items():
            o = entry.get("overall") or {}
            accs = o.get("acc_by_round") or [o.get("acc_t1"), o.get("acc_t2")]
            for r, acc in enumerate(accs, start=1):
                if _is_num(acc):
                    rows.append({"system": s, "round": r, "accuracy": acc, "n": o.get("n")})
    return rows, {"derived_from": inp.sources.get("metrics"),
                  "instead_of": inp.sources.get("accuracy_by_round", "accuracy_by_round.json")}


def rounds_view(inp: ReportInputs) -> dict[str, Any]:
    """Accuracy after each round over all tasks: the Vega-Lite spec and the same numbers as a table."""
    rows, origin = _round_rows(inp)
    if not rows:
        return {"missing": _missing(inp, "accuracy_by_round", "accuracy-by-round data")}
    systems = _order(list(dict.fromkeys(r["system"] for r in rows)))
    rounds = sorted({r["round"] for r in rows})
    spec = {
        "width": 560, "height": 280, "background": "white",
        "data": {"values": [{"system": r["system"], "round": r["round"], "accuracy": r["accuracy"],
                             "n": r.get("n")} for r in rows]},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "round", "type": "ordinal", "title": "round (1 = trial 1)", "axis": {"labelAngle": 0}},
            "y": {"field": "accuracy", "type": "quantitative", "title": "accuracy",
                  "scale": {"domain": [0, 1]}, "axis": {"format": "%"}},
            "color": {"field": "system", "type": "nominal", "sort": systems, "title": "system"},
            "tooltip": [{"field": "system"}, {"field": "round"},
                        {"field": "accuracy", "format": ".1%"}, {"field": "n"}],
        },
    }
    by = {(r["system"], r["round"]): r["accuracy"] for r in rows}
    return {"missing": None, "origin": origin, "spec": spec, "rounds": rounds,
            "table": [{"system": s, "accuracy": [by.get((s, r)) for r in rounds]} for s in systems]}


def _transition_counts(inp: ReportInputs) -> tuple[dict[str, dict[tuple[str, str], int]], dict[str, Any]]:
    counts: dict[str, dict[tuple[str, str], int]] = {}
    if inp.transitions is not None:
        for r in inp.transitions:
            c = counts.setdefault(r["system"], defaultdict(int))
            c[(r["trial1"], r["final"])] += r["count"]
        return counts, {"path": inp.sources.get("transitions")}
    skip = set()
    if inp.eval is not None:  # answers-only systems have no final answer
        skip = {s for s, e in inp.eval["systems"].items() if (e.get("overall") or {}).get("acc_t2") is None
                and (e.get("overall") or {}).get("acc_t1") is not None}
    for s, info in (inp.episodes or {}).items():
        if s in skip or not info["transitions"]:
            continue
        c = counts.setdefault(s, defaultdict(int))
        for (t1, fin), n in info["transitions"].items():
            c[("correct" if t1 else "incorrect", "correct" if fin else "incorrect")] += n
    return counts, {"derived_from": inp.sources.get("predictions"),
                    "instead_of": inp.sources.get("transitions", "transitions.json")}


def transitions_view(inp: ReportInputs) -> dict[str, Any]:
    """Per system, item counts by (trial-1 verdict, final verdict)."""
    counts, origin = _transition_counts(inp)
    if not counts:
        return {"missing": _missing(inp, "transitions", "transition counts")}
    boxes = [{"system": s, "rows": [(a, [counts[s].get((a, b), 0) for b in OUTCOMES]) for a in OUTCOMES]}
             for s in _order(list(counts))]
    return {"missing": None, "origin": origin, "boxes": boxes}


STAT_COLUMNS = (
    ("items", "items"), ("trial1_correct", "trial-1 correct"), ("reflection_samples", "reflections"),
    ("qa_reflection_samples", "Q&A with reflection"), ("pct_correct_after_reflection", "% correct after reflection"),
    ("avg_question_words", "avg words: question"), ("avg_trial1_words", "trial 1"), ("avg_trial2_words", "trial 2"),
    ("avg_reflection_words", "reflection"),
)


def stats_view(inp: ReportInputs) -> dict[str, Any]:
    """The per-task statistics table (tasks sorted, then the total), curated counts, drops and notes."""
    st = inp.stats
    if st is None:
        return {"missing": _missing(inp, "stats", "data statistics")}
    tasks = sorted(st["per_task"].items())
    if st.get("total"):
        tasks.append(("total", st["total"]))
    gen = st.get("generator")
    return {"missing": None, "source": inp.sources.get("stats"), "generator": gen if isinstance(gen, dict) else None,
            "columns": STAT_COLUMNS, "tasks": tasks, "counts": list(st["counts"].items()),
            "drops": list(st["drops"].items()), "notes": list(st["notes"].items())}


ROUND_LABELS = {"reflection_prompt": "reflection prompt", "t2_prompt": "retry prompt", "t2": "retry",
                "t2_answer": "retry answer", "prompt": "one-stage prompt", "output": "output (reflection + answer)"}


def _pick(keep: dict[str, dict[str, list]], cats: tuple[str, ...], n: int) -> list[tuple[str, dict]]:
    """Up to n episodes: categories in order; within one, round-robin over tasks (sorted), file order per task."""
    out: list[tuple[str, dict]] = []
    for cat in cats:
        by_task = [keep.get(cat, {})[t] for t in sorted(keep.get(cat, {}))]
        for i in range(max((len(v) for v in by_task), default=0)):
            out += [(cat, rows[i]) for rows in by_task if i < len(rows)]
    return out[:n]


def _episode(row: dict[str, Any], cat: str, opened: bool = False) -> dict[str, Any]:
    """One episode as shown: its category, verdicts, the by-round path and the later rounds' fields."""
    by_round = row.get("correct_by_round")
    path = ""
    if isinstance(by_round, list) and len(by_round) > 2:
        path = " · by round " + "".join("✓" if x else "✗" for x in by_round)
    rounds = []
    for i, rd in enumerate(row.get("rounds") or [], start=2):  # rounds 2..R (round 1 is the top-level fields)
        if isinstance(rd, dict):
            rounds.append({"number": rd.get("round", i), "correct": rd.get("t2_correct", rd.get("correct")),
                           "fields": [(k, v) for k, v in rd.items()
                                      if k not in ("round", "t2_correct", "correct") and not isinstance(v, bool)]})
        else:
            rounds.append({"number": i, "value": rd, "fields": None})
    return {"row": row, "cat": cat, "good": cat in BEST, "t1": bool(row.get("t1_correct")),
            "final": _final_correct(row), "path": path, "opened": opened,
            "rounds": rounds if isinstance(row.get("rounds"), list) else []}


def episodes_view(inp: ReportInputs) -> dict[str, Any]:
    """Per system: outcome counts and the best (i→c, c→c) and worst (c→i, i→i) episodes kept."""
    if inp.episodes is None:
        return {"missing": _missing(inp, "predictions", "predictions")}
    if not inp.episodes:
        return {"missing": None, "empty": True, "source": inp.sources.get("predictions")}
    main = (inp.eval or {}).get("system")
    systems = []
    for s in _order(list(inp.episodes)):
        info, n = inp.episodes[s], inp.n_episodes
        best, worst = _pick(info["keep"], BEST, n), _pick(info["keep"], WORST, n)
        systems.append({
            "name": s, "label": _label(s), "rows": info["rows"], "episodes": info["episodes"],
            "counts": " · ".join(f"{c} {info['counts'].get(c, 0)}" for c in ("i→c", "c→i", "i→i", "c→c")),
            "best": [_episode(r, c, opened=(s == main and i == 0)) for i, (c, r) in enumerate(best)],
            "worst": [_episode(r, c) for c, r in worst]})
    return {"missing": None, "empty": False, "systems": systems}


@dataclass(frozen=True)
class Section:
    """One section of the page: its anchor, nav label, heading, partial template and what it shows."""

    id: str
    nav: str
    title: str
    template: str
    view: Callable[[ReportInputs], dict[str, Any] | None]   # None: the section is left out of this page


def diagnostics_view(inp: ReportInputs) -> dict[str, Any]:
    """What went wrong, per system (evaluation) and for the generated data: format failures, answer
    steps, repeat and fix rates, stop reasons and mean generated tokens per phase."""
    def row(name: str, d: dict[str, Any]) -> dict[str, Any]:
        toks = d.get("tokens") or {}
        return {"name": name, "items": d.get("items"), "samples": d.get("samples"),
                "t1_fmt": d.get("trial1_format_failures"), "t2_fmt": d.get("trial2_format_failures"),
                "steps": {"trial1": "–", "trial2": "–", **(d.get("answer_steps") or {})}, "repeat": _pct(d.get("repeat_rate")), "fix": _pct(d.get("fix_rate")),
                "stops": {p: ", ".join(f"{k} {v}" for k, v in c.items()) for p, c in (d.get("stop_reasons") or {}).items()},
                "new": {p: t.get("mean_new") for p, t in toks.items()}}

    ev = (inp.eval or {}).get("diagnostics") or {}
    gen = (inp.stats or {}).get("diagnostics") or {}
    systems = [row(s, ev[s]["overall"]) for s in _order(list(ev))]
    demands = sorted(((k, v) for k, v in (gen.get("per_demand") or {}).items()), key=lambda kv: -(kv[1].get("fix_rate") or 0))
    missing = None if (systems or gen) else _missing(inp, "metrics", "run diagnostics (evaluation metrics or data statistics)")
    return {"missing": missing,
            "systems": systems, "generated": row("generated (train split)", gen["overall"]) if gen.get("overall") else None,
            "per_task": [row(t, d) for t, d in (gen.get("per_task") or {}).items()],
            "demands": [{"id": k, **v, "fix": _pct(v.get("fix_rate")), "repeat": _pct(v.get("repeat_rate"))}
                        for k, v in demands]}


def evolve_view(inp: ReportInputs) -> dict[str, Any]:
    """Self-evolution by iteration: train fix rate, D+ / D± sizes, repeat rate, Acc@t1 / Acc@t2 / Δ of the
    setting and its McNemar test against iteration 1 (metrics/evolve.json)."""
    data = inp.evolve
    if data is None:
        return {"missing": _missing(inp, "evolve", "self-evolution metrics"), "rows": []}
    rows = []
    for n in range(1, int(data.get("iterations") or 1) + 1):
        r = data.get(f"it{n}") or {}
        vs = r.get("vs_it1") or {}
        rows.append({"iteration": n, "stopped": r.get("stopped"), "note": r.get("note"),
                     "fix": _pct(r.get("train_fix_rate")), "repeat": _pct(r.get("repeat_rate")),
                     "dplus": r.get("dplus"), "dpm": r.get("dpm"), "acc_t1": _pct(r.get("acc_t1")),
                     "acc_t2": _pct(r.get("acc_t2")), "delta": _signed(r.get("delta")),
                     "p": "–" if n == 1 or vs.get("p") is None else f"{vs['p']}{_stars(vs['p'])} (b={vs['b']}, c={vs['c']})"})
    return {"missing": None, "rows": rows, "setting": data.get("setting"), "data": data.get("data"),
            "init": data.get("init")}


SECTIONS = (
    Section("results", "results", "Results (Table 2 style)", "section_matrix.html.jinja", matrix_view),
    Section("others", "other protocols", "Results under other protocols", "section_others.html.jinja",
            others_view),
    Section("diagnostics", "diagnostics", "Run diagnostics", "section_diagnostics.html.jinja", diagnostics_view),
    Section("rounds", "accuracy by round", "Accuracy by round", "section_rounds.html.jinja", rounds_view),
    Section("transitions", "transitions", "Trial 1 → final answer", "section_transitions.html.jinja", transitions_view),
    Section("data", "data statistics", "Data statistics", "section_stats.html.jinja", stats_view),
    Section("episodes", "episodes", "Episodes: best and worst reflections", "section_episodes.html.jinja",
            episodes_view),
    Section("evolve", "by iteration", "Self-evolution by iteration", "section_evolve.html.jinja", evolve_view),
)


# --------------------------------------------------------------------------------------------------
# Page


def _escape(value: Any):
    """Autoescape with the standard library's entities (&quot; &#x27;); None prints as nothing."""
    from markupsafe import Markup

    if isinstance(value, Markup):  # already safe: macro output, the vendored builds, the chart spec
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _clip(value: Any) -> tuple[str, int]:
    """Model text (or a JSON value) cut to MAX_TEXT characters, and how many were left out."""
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    return (s[:MAX_TEXT], len(s) - MAX_TEXT) if len(s) > MAX_TEXT else (s, 0)


@functools.cache
def _env():
    import jinja2
    from markupsafe import Markup

    class Environment(jinja2.Environment):
        """`row.items` means the key "items" of a dict, not the dict's method (Jinja prefers attributes,
        so `{{ r.items }}` would print `<built-in method items ...>`); a key that is absent still falls
        back to the attribute, so `d.items()` keeps working."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

    env = Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, finalize=_escape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(pct=_pct, clip=_clip, script_json=lambda obj: Markup(_json_for_script(obj)))
    env.globals.update(outcomes=OUTCOMES, round_labels=ROUND_LABELS)
    return env


def build_report(inp: ReportInputs, *, title: str = "ReflectEvo evaluation report") -> str:
    """The whole page as a string (pure: no I/O besides reading the templates and vendored Vega builds)."""
    sections = [{"id": s.id, "nav": s.nav, "title": s.title, "template": s.template, "view": v}
                for s in SECTIONS if (v := s.view(inp)) is not None]
    chart = any(s["id"] == "rounds" and not s["view"]["missing"] for s in sections)
    return _env().get_template("page.html.jinja").render(
        title=title, eval=inp.eval or {}, inputs=list(inp.sources.values()), missing=list(inp.missing.items()),
        sections=sections, chart=chart, scripts=vendored_scripts() if chart else [])


def render_report(metrics_eval: str | Path | None, curate_stats: str | Path | None, predictions: str | Path | None,
                  out_html: str | Path, *, plots_dir: str | Path | None = None, n_episodes: int = 3,
                  title: str = "ReflectEvo evaluation report", evolve: str | Path | None = None,
                  others: Sequence[str | Path] = ()) -> Path:
    """Read the inputs, build the page and write it atomically to `out_html`; returns the path."""
    from reflectevo.jsonio import write_text

    if n_episodes < 0:
        raise ReflectEvoError(f"episodes per kind must be >= 0, got {n_episodes}")
    inp = load_inputs(metrics_eval, curate_stats, predictions, plots_dir, n_episodes, evolve=evolve, others=others)
    out = Path(out_html)
    write_text(out, build_report(inp, title=title))
    out.chmod(0o644)
    return out
