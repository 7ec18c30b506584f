"""Shared pieces of the fuzz tests: ways to damage an input file (drawn by hypothesis), a snapshot of the
outputs, and the contract every stage script and CLI command must keep on damaged input:

- exit 0, with complete outputs (the caller checks they are right), or
- exit 2 with ONE line on stderr, `error: ...`, naming the damaged file (file:line) or the params key,
  no traceback, and the outputs as they were before (absent or unchanged; no temporary file left).

Examples per test: `REFLECTEVO_FUZZ_EXAMPLES` (default small, for CI); the runs are derandomized (the same
examples on every machine), and the hypothesis database is off, so nothing is written beside the tests.
A longer search: `REFLECTEVO_FUZZ_EXAMPLES=300 REFLECTEVO_FUZZ_RANDOM=1 pytest tests/test_fuzz_*.py
--hypothesis-seed=N` (`REFLECTEVO_FUZZ_NOSHRINK=1` reports the first failing example unshrunk).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import traceback
from pathlib import Path
from typing import Any

# huggingface_hub binds its log handler to the sys.stderr of its first import: import it here, not inside a
# CliRunner call (whose captured stream is closed afterwards)
import huggingface_hub.repocard  # noqa: F401
import yaml
from helpers import tiny_params_dict
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

EXAMPLES = int(os.environ.get("REFLECTEVO_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int):
    """Derandomized, no database, no deadline; `examples` unless REFLECTEVO_FUZZ_EXAMPLES overrides it."""
    phases = [p for p in Phase if not (p == Phase.shrink and os.environ.get("REFLECTEVO_FUZZ_NOSHRINK"))]
    return settings(max_examples=EXAMPLES or examples, derandomize=not os.environ.get("REFLECTEVO_FUZZ_RANDOM"),
                    database=None, deadline=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large], print_blob=False)


# JSON values of every type, including what orjson refuses (NaN, integers beyond 64 bits).
SCALARS = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=4)


def _paths(obj: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Every path (keys and list indices) into a JSON value, the value itself first."""
    out = [prefix]
    if depth > 6:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _paths(v, (*prefix, i), depth + 1)
    return out


def mutate_value(data, obj: Any) -> tuple[Any, str]:
    """A copy of the JSON value `obj` with one field deleted, retyped or added (or the value replaced)."""
    obj = json.loads(json.dumps(obj))
    paths = _paths(obj)
    path = data.draw(st.sampled_from(paths), label="path")
    action = data.draw(st.sampled_from(["set", "delete", "add"]), label="action")
    if not path:
        if action == "add" and isinstance(obj, dict):
            key = data.draw(st.text(max_size=8), label="key")
            obj[key] = data.draw(JSON_VALUES, label="value")
            return obj, f"added key {key!r}"
        return data.draw(JSON_VALUES, label="value"), "whole value replaced"
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if action == "delete":
        del parent[last]
        return obj, f"deleted {'.'.join(map(str, path))}"
    if action == "add" and isinstance(parent[last], dict):
        key = data.draw(st.text(max_size=8), label="key")
        parent[last][key] = data.draw(JSON_VALUES, label="value")
        return obj, f"added {'.'.join(map(str, path))}.{key}"
    parent[last] = data.draw(JSON_VALUES, label="value")
    return obj, f"retyped {'.'.join(map(str, path))}"


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _structure_jsonl(data, raw: bytes) -> bytes:
    lines = raw.split(b"\n")
    rows = [i for i, line in enumerate(lines) if line.strip()]
    if not rows:
        return _dump(data.draw(JSON_VALUES)) + b"\n"
    i = data.draw(st.sampled_from(rows), label="line")
    op = data.draw(st.sampled_from(["field", "field", "field", "drop_line", "dup_line", "not_object", "blank"]), label="row op")
    if op == "drop_line":
        del lines[i]
    elif op == "dup_line":
        lines.insert(i, lines[i])
    elif op == "not_object":
        lines[i] = _dump(data.draw(SCALARS | st.lists(JSON_VALUES, max_size=3), label="not an object"))
    elif op == "blank":
        lines[i] = b"   "
    else:
        try:
            obj = json.loads(lines[i])
        except ValueError:
            return raw
        lines[i] = _dump(mutate_value(data, obj)[0])
    return b"\n".join(lines)


def _structure_json(data, raw: bytes) -> bytes:
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    return _dump(mutate_value(data, obj)[0])


def _structure_parquet(data, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    op = data.draw(st.sampled_from(["episode", "episode", "episode", "not_json", "drop_column", "retype_column",
                                    "null"]), label="parquet op")
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    n = table.num_rows
    if op in ("episode", "not_json", "null") and n:
        i = data.draw(st.integers(0, n - 1), label="row")
        if op == "episode":
            ep, _ = mutate_value(data, json.loads(cols["episode"][i]))
            cols["episode"][i] = json.dumps(ep)
        elif op == "not_json":
            cols["episode"][i] = data.draw(st.text(max_size=20), label="text")
        else:
            col = data.draw(st.sampled_from(sorted(cols)), label="column")
            cols[col][i] = None
        out = pa.table(cols, schema=table.schema)
    elif op == "drop_column":
        col = data.draw(st.sampled_from(sorted(cols)), label="column")
        out = table.drop_columns([col])
    else:
        col = data.draw(st.sampled_from(sorted(cols)), label="column")
        out = table.set_column(table.column_names.index(col), col,
                               pa.array([len(str(v)) for v in cols[col]], pa.int64()))
    pq.write_table(out, path)


OPS = ("truncate", "garble", "empty", "directory", "unreadable", "binary", "structure", "structure", "structure")
DENIED: set[Path] = set()   # files made unreadable; as root (who reads them anyway) `invoke` denies Python's opens


def damage(data, path: Path, kind: str) -> str:
    """Damage the input `path` in one way drawn from `data` (kind: jsonl | json | parquet | bytes):
    cut short, bytes overwritten, emptied, a folder in its place, random bytes, or (structure) one field
    deleted / retyped / added, a row dropped / doubled / replaced by a non-object, a Parquet column
    dropped or retyped, or the file made unreadable (chmod 000). Returns what was done."""
    DENIED.clear()
    op = data.draw(st.sampled_from(OPS if kind != "bytes" else OPS[:6]), label="op")
    raw = path.read_bytes()
    if op == "unreadable":
        path.chmod(0)
        DENIED.add(path.resolve())
        return op
    if op == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut")])
    elif op == "garble":
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)), label="pos")
        junk = data.draw(st.binary(min_size=1, max_size=12), label="junk")
        path.write_bytes(raw[:pos] + junk + raw[pos + len(junk):])
    elif op == "empty":
        path.write_bytes(b"")
    elif op == "directory":
        path.unlink()
        path.mkdir()
        (path / "inner.json").write_text("{}")
    elif op == "binary":
        path.write_bytes(data.draw(st.binary(max_size=48), label="bytes"))
    elif kind == "jsonl":
        path.write_bytes(_structure_jsonl(data, raw))
    elif kind == "json":
        path.write_bytes(_structure_json(data, raw))
    else:
        _structure_parquet(data, path)
    return op


def snapshot(*paths: Path) -> dict[str, str | None]:
    """path -> content hash (or 'dir', or None when absent) of every file under `paths`."""
    out: dict[str, str | None] = {}
    for p in paths:
        if not p.exists():
            out[str(p)] = None
        elif p.is_dir():
            out[str(p)] = "dir"
            for f in sorted(p.rglob("*")):
                out[str(f)] = "dir" if f.is_dir() else hashlib.sha256(f.read_bytes()).hexdigest()
        else:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(*paths: Path) -> list[str]:
    """Temporary files a writer left behind under `paths` (`.name.*.tmp`)."""
    found = []
    for p in paths:
        if p.is_dir():
            found += [str(f) for f in p.rglob(".*.tmp")]
        elif p.parent.is_dir():
            found += [str(f) for f in p.parent.glob(f".{p.name}.*.tmp")]
    return found


def check_contract(result, outputs: list[Path], before: dict, names: list[str], what: str = "") -> bool:
    """Assert the contract above for one CliRunner result; True when the command succeeded (exit 0)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"{what}: uncaught {type(result.exception).__name__} (exit {result.exit_code}):\n{tb}")
    assert result.exit_code in (0, 2), f"{what}: exit {result.exit_code}\n{result.output}"
    event(f"exit {result.exit_code}")
    assert "Traceback" not in result.output, f"{what}:\n{result.output}"
    assert not leftovers(*outputs), f"{what}: temporary files left: {leftovers(*outputs)}"
    if result.exit_code == 0:
        return True
    line = error_line(result.stderr, what)
    assert any(n in line for n in names), f"{what}: the error names none of {names}: {line}"
    assert snapshot(*outputs) == before, f"{what}: outputs changed on exit 2 ({line})"
    return False


# a stage's own first line (`curate: <what it does and its size>`), printed when its work starts
STAGE_LINE = re.compile(r"^(prepare|generate|curate|evaluate|train|report|evolve)[\w@ -]*: (?!.*\berror\b)")


def error_line(stderr: str, what: str = "") -> str:
    """The one error line of an exit-2 run: the last line of stderr, after at most the stage's own line."""
    *before, line = stderr.strip().splitlines() or [""]
    assert line.startswith("error: ") and len(before) <= 1 and all(STAGE_LINE.match(b) for b in before), \
        f"{what}: not one error line:\n{stderr}"
    return line


def copy_tree(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


# -- the pipeline the fuzz tests damage ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
_APPS: dict[str, object] = {}


def stage(name: str):
    if name not in _APPS:
        spec = importlib.util.spec_from_file_location(f"fuzz_stage_{name}", ROOT / "stages" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _APPS[name] = mod.app
    return _APPS[name]


def invoke(app, *args):
    """The command run in this process (typer's CliRunner). Files damaged as "unreadable" are unreadable to
    it: by their mode, and, when the tests run as root, by a PermissionError from Python's open()."""
    if not DENIED or os.geteuid() != 0:
        return runner.invoke(app, [str(a) for a in args])
    import builtins
    import io

    real_open = io.open

    def denying(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() in DENIED:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    builtins.open = io.open = denying
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        builtins.open = io.open = real_open


def scripted_params(path: Path, model: str = "scripted") -> Path:
    p = tiny_params_dict(ROOT / "params.yaml", n_train=5, n_test=3)
    p["model"] = model
    p["models"]["scripted"]["script"].update(retry_correct=0.7)   # several fixing reflections per item:
    p["generate"]["k"] = 3                                          # Dpref pairs, so the judge runs
    p["curate"]["judge"] = "likelihood"          # the scripted model scores too
    p["curate"]["eval_fraction"] = 0.2
    p["evolve"].update(iterations=2, chain={"it2": {"models": "models", "data": "data/curated"}})
    p["demo"] = {"items": 2, "protocols": {"oracle": {"systems": []}}}
    for hp in ("sft", "dpo"):
        p["train"][hp].update(max_steps=1, batch_size=1, save_steps=0)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def fake_adapter(folder: Path, setting: str, roles=("one_stage",), preset: str = "scripted") -> None:
    """A trained setting's folder for the scripted model (which loads no weights): a card, and per role a
    PEFT-shaped adapter_config.json and a small, well-formed adapter_model.safetensors."""
    import numpy as np
    from safetensors.numpy import save_file

    adapters = {}
    for role in roles:
        sub = folder if len(roles) == 1 else folder / role
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "target_modules": ["q_proj"]}))
        save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 8), np.float32)},
                  str(sub / "adapter_model.safetensors"))
        adapters[role] = "." if len(roles) == 1 else role
    (folder / "model_card.json").write_text(json.dumps({
        "setting": setting, "status": "trained", "base": {"preset": preset, "source": "scripted", "revision": "x"},
        "adapters": adapters, "method": "lora", "n_train": 1, "n_eval": 0}))


def build_base(d: Path) -> Path:
    """The whole pipeline once, on the scripted model: sources, raw, curated, one trained (fake) and one
    "no training data" setting, evaluation, report inputs, ReflectEvo-format copies, iteration 2's raw
    episodes."""
    d.mkdir(parents=True)
    params = scripted_params(d / "params.yaml")
    assert invoke(stage("prepare"), "--params", params, "--out", d / "sources").exit_code == 0
    r = invoke(stage("generate"), "--params", params, "--sources", d / "sources/train.jsonl", "--out", d / "raw",
               "--summary", d / "metrics/generate.json", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke(stage("curate"), "--params", params, "--raw", d / "raw", "--out", d / "curated",
               "--metrics", d / "metrics/curate.json")
    assert r.exit_code == 0, r.output
    fake_adapter(d / "models/one_stage", "one_stage")
    (d / "models/two_stage").mkdir(parents=True)
    (d / "models/two_stage/model_card.json").write_text(json.dumps(
        {"setting": "two_stage", "status": "no training data", "reason": "D+ is empty"}))
    r = invoke(stage("evaluate"), "--params", params, "--sources", d / "sources/test.jsonl", "--models", d / "models",
               "--predictions", d / "eval/predictions.jsonl", "--metrics", d / "metrics/eval.json",
               "--plots", d / "plots")
    assert r.exit_code == 0, r.output
    (d / "metrics/train").mkdir()
    (d / "metrics/train/one_stage.json").write_text(json.dumps({"model": "scripted", "setting": "one_stage",
                                                                "trained": True, "n_train": 1}))
    from reflectevo.cli import app as cli

    for kind in ("raw", "dplus", "dpm"):   # the same records in ReflectEvo's formats (reflectevo convert --to)
        src = d / "raw" if kind == "raw" else d / f"curated/{kind}_train.jsonl"
        r = invoke(cli, "convert", "--to", "reflectevo", "--kind", kind, src, d / f"theirs/{kind}.jsonl")
        assert r.exit_code == 0, r.output
    copy_tree(d / "raw", d / "evolve/it2/raw")
    (d / "evolve/it2/generate.json").write_text((d / "metrics/generate.json").read_text())
    return d


