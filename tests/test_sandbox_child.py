"""The sandbox's child program (reflectevo/resources/sandbox_child.py) as a module: its encoder and runner
without a sandbox around them, and that it ships as package data and is what the child runs."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from reflectevo import sandbox

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def child():
    spec = importlib.util.spec_from_file_location("sandbox_child", sandbox.CHILD_PROGRAM)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # importing runs nothing: main() only under __main__
    return mod


VALUES = [None, True, 0, -7, 10**40, 1.5, float("inf"), 2 - 3j, "tëxt", b"\x00\xff", bytearray(b"ab"),
          Decimal("1.10"), Fraction(3, 4), range(1, 9, 2), [1, [2, (3,)]], (None, "a"), {1, 2}, frozenset({"x"}),
          {"k": [1], 2: None}]


@pytest.mark.parametrize("value", VALUES, ids=[type(v).__name__ for v in VALUES])
def test_encoded_values_decode_to_equal_plain_data(child, value):
    enc = child.make_encoder()
    wire = json.loads(json.dumps(enc(value)))
    got = sandbox.decode(wire)
    assert got == value and type(got) is (bytes if isinstance(value, bytearray) else type(value))


def test_encoder_views_iterators_and_refusals(child):
    enc = child.make_encoder()
    d = {"a": 1, "b": 2}
    assert sandbox.decode(enc(d.keys())) == d.keys() and sandbox.decode(enc(d.items())) == d.items()
    assert list(sandbox.decode(enc(map(str, [1, 2])))) == ["1", "2"]
    assert enc(True) == ["b", True] and enc(1) == ["i", "1"]  # bool is not encoded as int
    with pytest.raises(TypeError, match="unsupported result type object"):
        enc(object())

    class Sneaky(int):
        def __repr__(self):
            return "999"

    assert enc(Sneaky(5)) == ["i", "5"]  # int.__repr__, not the subclass's
    small = child.make_encoder(budget=3)
    with pytest.raises(ValueError, match="too large"):
        small([1, 2, 3])
    nested: list = []
    for _ in range(5):
        nested = [nested]
    with pytest.raises(ValueError, match="too deep"):
        child.make_encoder(max_depth=3)(nested)


def test_run_emits_leaves_errors_and_crashes(child):
    records: list[dict] = []
    enc = child.make_encoder()
    cfg = {"code": "def f(x):\n    return x * 2\n", "setup": "y = f(2)",
           "tests": [{"kind": "assert", "leaves": ["f(3)", "y"]}, {"kind": "exec", "src": "assert f(1) == 2"},
                     {"kind": "assert", "leaves": ["1 / 0"]}, {"kind": "assert", "leaves": ["f(0)"]}]}
    child.run(cfg, records.append, enc, __builtins__)
    assert records == [{"kind": "leaf", "test": 0, "leaf": 0, "value": ["i", "6"]},
                       {"kind": "leaf", "test": 0, "leaf": 1, "value": ["i", "4"]},
                       {"kind": "ran", "test": 1},
                       {"kind": "error", "test": 2, "error": "ZeroDivisionError: division by zero"},
                       {"kind": "done"}]
    records.clear()
    child.run({**cfg, "code": "raise SystemExit(3)"}, records.append, enc, __builtins__)
    assert records == [{"kind": "crash", "stage": "code", "error": "SystemExit: 3"}]
    records.clear()
    child.run({**cfg, "setup": "nope"}, records.append, enc, __builtins__)
    assert records == [{"kind": "crash", "stage": "test setup", "error": "NameError: name 'nope' is not defined"}]


def test_error_text_survives_a_hostile_exception(child):
    class Bad(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert child.error_text(Bad()) == "exception"
    assert child.error_text(ValueError("x" * 900)) == ("ValueError: " + "x" * 900)[:500]


def test_emit_frames_records_with_the_nonce(child):
    r, w = os.pipe()
    child.make_emitter("n0nce", w)({"kind": "done"})
    os.close(w)
    assert json.loads(child.read_all(r)) == {"kind": "done", "nonce": "n0nce"}
    os.close(r)


def test_the_child_runs_its_file_text_and_nothing_else():
    assert sandbox.child_program() == sandbox.CHILD_PROGRAM.read_text(encoding="utf-8")
    # standalone: stdlib only, importable with no site-packages (as the child runs it)
    res = subprocess.run([sys.executable, "-I", "-S", "-B", "-c",
                          f"import runpy; m = runpy.run_path({str(sandbox.CHILD_PROGRAM)!r}, run_name='probe'); "
                          "print(sorted(k for k in ('main', 'run', 'lock_down') if k in m))"],
                         capture_output=True, text=True, env={}, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "['lock_down', 'main', 'run']", res.stderr
    r = sandbox.run_tests("def f():\n    return 1\n", ["assert f() == 1"])
    assert r.passed and set(r.isolation) == {"netns", "mountns", "uid", "nproc_binds"}


def test_package_data_ships_the_child_program():
    pats = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["reflectevo"]
    rel = str(sandbox.CHILD_PROGRAM.relative_to(ROOT / "reflectevo"))
    assert any(fnmatch.fnmatch(rel, p) for p in pats), pats
