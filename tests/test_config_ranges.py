"""params.yaml's schema: every number declares its range and every choice its values, with the field; the
loader enforces each one and answers with one line naming the dotted key (`reflectevo params check` and every
stage, before any input is read or model loaded)."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import Strict
from typer.testing import CliRunner

from reflectevo.config.loader import bounds, describe_range, from_dict
from reflectevo.config.params import read_params
from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError
from reflectevo.paramsfile import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read_params(ROOT / "params.yaml")
PRESET = "tiny-random"
# (key prefix, class, the committed values it starts from, require_all)
ROOTS = [(f"models.{PRESET}", ModelPreset, PARAMS["models"][PRESET], False)] + [
    (name, cls, PARAMS[name], True) for name, cls in SECTIONS.items()]


def _bare(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _leaves(cls: type, data: Any, path: tuple = ()):
    """(path, annotation) of every scalar field under `cls` (nested params classes, list items and mapping
    values included; a list or mapping of params objects is entered through its first committed entry)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    data = data if isinstance(data, dict) else {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base, here = _bare(tp), (*path, f.name)
        origin, args = typing.get_origin(base), typing.get_args(base)
        if dataclasses.is_dataclass(base):
            yield from _leaves(base, data.get(f.name), here)
        elif origin is tuple and dataclasses.is_dataclass(_bare(args[0])):
            if data.get(f.name):
                yield from _leaves(_bare(args[0]), data[f.name][0], (*here, 0))
        elif origin is dict and dataclasses.is_dataclass(_bare(args[1])):
            if data.get(f.name):
                key = next(iter(data[f.name]))
                yield from _leaves(_bare(args[1]), data[f.name][key], (*here, key))
        elif origin is dict and _bare(args[1]) in (int, float):
            keys = typing.get_args(_bare(args[0]))   # a Literal's values, else any name
            yield (*here, keys[0] if keys else "x"), args[1]
        else:
            yield here, tp


LEAVES = [(root, cls, base, req, path, tp) for root, cls, base, req in ROOTS for path, tp in _leaves(cls, base)]


def key_of(root: str, path: tuple) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def with_value(base: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(base)
    node = data
    for p in path[:-1]:
        if isinstance(p, str) and not isinstance(node.get(p), dict) and not isinstance(node.get(p), list):
            node[p] = {}
        node = node[p]
    node[path[-1]] = value
    return data


def load(root, cls, base, require_all, path, value):
    return from_dict(cls, with_value(base, path, value), root, require_all=require_all)


def test_the_committed_values_load():
    for root, cls, base, req in ROOTS:
        from_dict(cls, base, root, require_all=req)


def test_every_number_declares_a_range_and_every_scalar_is_strict():
    unbounded, lax = [], []
    for root, _, _, _, path, tp in LEAVES:
        base = _bare(tp)
        if base in (int, float) and not bounds(tp):
            unbounded.append(key_of(root, path))
        if base in (int, float, bool, str) and not any(isinstance(m, Strict) for m in getattr(tp, "__metadata__", ())):
            lax.append(key_of(root, path))
    assert not unbounded, f"numbers without a declared range: {unbounded}"
    assert not lax, f"scalars not declared with the loader's strict types (Int, Float, Bool, Str): {lax}"
    assert len([1 for *_, tp in LEAVES if _bare(tp) in (int, float)]) >= 60   # the walk reaches every section


def _outside(tp: Any) -> list[tuple[str, Any]]:
    """One value just past each declared bound."""
    is_int = _bare(tp) is int
    step = 1 if is_int else 0.5
    out = []
    for key, bound in bounds(tp).items():
        bound = int(bound) if is_int else float(bound)
        out.append((key, {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[key]))
    return out


RANGE_CASES = [pytest.param(*leaf, value, id=f"{key_of(leaf[0], leaf[4])}-{bound}")
               for leaf in LEAVES for bound, value in _outside(leaf[5])]


@pytest.mark.parametrize("root, cls, base, require_all, path, tp, value", RANGE_CASES)
def test_every_declared_range_is_enforced(root, cls, base, require_all, path, tp, value):
    with pytest.raises(ReflectEvoError) as e:
        load(root, cls, base, require_all, path, value)
    msg = str(e.value)
    assert msg.startswith(f"{key_of(root, path)}: must be "), msg
    assert describe_range(bounds(tp)) in msg and msg.endswith(f"got {value!r}") and "\n" not in msg, msg


CHOICE_CASES = [pytest.param(*leaf, id=key_of(leaf[0], leaf[4])) for leaf in LEAVES
                if typing.get_origin(_bare(leaf[5])) is Literal]


@pytest.mark.parametrize("root, cls, base, require_all, path, tp", CHOICE_CASES)
def test_every_choice_is_enforced(root, cls, base, require_all, path, tp):
    choices = typing.get_args(_bare(tp))
    with pytest.raises(ReflectEvoError) as e:
        load(root, cls, base, require_all, path, choices[0] + "x")
    msg = str(e.value)
    assert msg.startswith(f"{key_of(root, path)}: unknown "), msg
    assert f"Did you mean {choices[0]!r}?" in msg and f"Valid: {', '.join(sorted(choices))}" in msg, msg


@pytest.mark.parametrize("root, cls, base, require_all, path, tp",
                         [pytest.param(*leaf, id=key_of(leaf[0], leaf[4])) for leaf in LEAVES])
def test_every_field_refuses_a_wrong_type_naming_its_key(root, cls, base, require_all, path, tp):
    wrong = [1] if typing.get_origin(_bare(tp)) is dict else {"nested": 1}
    with pytest.raises(ReflectEvoError) as e:
        load(root, cls, base, require_all, path, wrong)
    msg = str(e.value)
    assert msg.startswith(f"{key_of(root, path)}: ") and ("expected" in msg or "unknown" in msg), msg
    assert "\n" not in msg


def test_unknown_and_missing_keys_at_every_depth():
    for root, cls, base, require_all in ROOTS:
        with pytest.raises(ReflectEvoError, match=rf"^{re.escape(root)}\.sed: unknown key\..* Valid keys: "):
            from_dict(cls, {**base, "sed": 1}, root, require_all=require_all)
    with pytest.raises(ReflectEvoError, match=r"^models\.x\.lora\.rr: unknown key\. Did you mean 'r'\? Valid keys: r, alpha"):
        from_dict(ModelPreset, {"source": "tiny-random", "lora": {"rr": 4}}, "models.x")
    with pytest.raises(ReflectEvoError, match=r"^train\.rl\.nun_generations: unknown key\. Did you mean 'num_generations'"):
        from_dict(SECTIONS["train"], with_value(PARAMS["train"], ("rl", "nun_generations"), 4), "train")
    with pytest.raises(ReflectEvoError, match=r"^models\.x\.source: required key is missing"):
        from_dict(ModelPreset, {}, "models.x")
    gen = {k: v for k, v in PARAMS["generate"].items() if k != "top_p"}
    with pytest.raises(ReflectEvoError, match=r"^generate\.top_p: required key is missing"):
        from_dict(SECTIONS["generate"], gen, "generate", require_all=True)


def test_keys_that_are_not_names_and_maps_that_are_not_maps():
    from reflectevo.paramsfile import validate_all

    with pytest.raises(ReflectEvoError, match=r"^models\.x\.lora\.1: unknown key\. Valid keys: r, alpha"):
        from_dict(ModelPreset, {"source": "tiny-random", "lora": {1: 2}}, "models.x")
    with pytest.raises(ReflectEvoError, match=r"^models\.x\.api_extra: key: expected a string, got 1"):
        from_dict(ModelPreset, {"source": "tiny-random", "api_extra": {1: 2}}, "models.x")
    for models in (3, [], {}):
        with pytest.raises(ReflectEvoError, match=r"^models: params\.yaml needs a non-empty `models:` map"):
            validate_all({**PARAMS, "models": models})
    with pytest.raises(ReflectEvoError, match=r"^models\.7: expected a preset name \(a string\), got 7"):
        validate_all({**PARAMS, "models": {**PARAMS["models"], 7: {"source": "tiny-random"}}})
    with pytest.raises(ReflectEvoError, match=r"^model: expected a preset name \(a string\), got \['a'\]"):
        validate_all({**PARAMS, "model": ["a"]})
    with pytest.raises(ReflectEvoError, match=r"^generate: expected a mapping, got 5"):
        validate_all({**PARAMS, "generate": 5})


def test_numbers_keep_yaml_forms_and_refuse_look_alikes():
    preset = {"source": "tiny-random"}
    assert from_dict(ModelPreset, {**preset, "lr_sft": "1e-05"}, "m").lr_sft == 1e-05   # PyYAML's form
    assert from_dict(ModelPreset, {**preset, "lr_sft": 1}, "m").lr_sft == 1.0
    for key, value, msg in [("lr_sft", True, "expected a number, got True"),
                            ("lr_sft", float("nan"), "expected a finite number"), ("lr_sft", "inf", "expected a finite number"),
                            ("gen_batch_size", 2.0, "expected an integer, got 2.0"),
                            ("gen_batch_size", "2", "expected an integer, got '2'"),
                            ("gen_batch_size", True, "expected an integer, got True"),
                            ("dtype", 16, "unknown dtype 16")]:
        with pytest.raises(ReflectEvoError, match=rf"^m\.{key}: {msg}"):
            from_dict(ModelPreset, {**preset, key: value}, "m")
    with pytest.raises(ReflectEvoError, match=r"^m\.script\.seed: must be in \[0, 4294967295\], got 4294967296"):
        from_dict(ModelPreset, {**preset, "script": {"seed": 2**32}}, "m")


# --------------------------------------------------------------------------------------------------
# reflectevo params check: one line, exit 2


def _set(p: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for k in parents:
        p = p.setdefault(k, {})
    if value is _DELETE:
        del p[last]
    else:
        p[last] = value


_DELETE = object()
P = f"models.{PRESET}"
CHECK_CASES = [
    (f"{P}.lora.r", 0, f"{P}.lora.r: must be >= 1, got 0"),
    (f"{P}.lora.dropout", 1.0, f"{P}.lora.dropout: must be in [0, 1), got 1.0"),
    (f"{P}.lr_sft", -1e-4, f"{P}.lr_sft: must be a number > 0, got -0.0001"),
    ("generate.top_p", 0, "generate.top_p: must be in (0, 1], got 0"),
    ("generate.top_p", 1.5, "generate.top_p: must be in (0, 1], got 1.5"),
    ("generate.temperature", -0.1, "generate.temperature: must be in [0, 5], got -0.1"),
    ("train.sft.batch_size", 0, "train.sft.batch_size: must be >= 1, got 0"),
    ("train.rl.lr", 0, "train.rl.lr: must be a number > 0, got 0"),
    ("curate.eval_fraction", 1.0, "curate.eval_fraction: must be in [0, 1), got 1.0"),
    ("generate.protocol", "oracel", "generate.protocol: unknown protocol 'oracel'. Did you mean 'oracle'? Valid: intrinsic, oracle"),
    ("train.sft.lr_scheduler", "cosin", "train.sft.lr_scheduler: unknown lr_scheduler 'cosin'. Did you mean 'cosine'?"),
    ("generate.k", "two", "generate.k: expected an integer, got 'two'"),
    ("evaluate.name_rejected", "yes", "evaluate.name_rejected: expected true/false, got 'yes'"),
    ("curate.eval_fracton", 0.1, "curate.eval_fracton: unknown key. Did you mean 'eval_fraction'?"),
    ("generate.k", _DELETE, "generate.k: required key is missing"),
    ("curate.max_reflection_words", 2, "curate.max_reflection_words: 2 is below min_reflection_words (3)"),
    ("train.rl.batch_size", 6, "train.rl.batch_size: 6 completions per step must be a multiple of num_generations (4)"),
    ("curate.judge", "tiny-randm", "curate.judge: unknown model preset 'tiny-randm'. Did you mean 'tiny-random'?"),
]


@pytest.mark.parametrize("key, value, message", CHECK_CASES, ids=[f"{k}={v!r}" for k, v, _ in CHECK_CASES])
def test_params_check_names_the_key_in_one_line(tmp_path, key, value, message):
    from reflectevo.cli import app

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    _set(p, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = CliRunner().invoke(app, ["params", "check", str(tmp_path / "params.yaml")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), r.output


def test_params_check_process_exits_2_with_one_stderr_line(tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["models"][PRESET]["lora"] = {"r": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "reflectevo.cli", "params", "check", str(tmp_path / "params.yaml")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr == f"error: models.{PRESET}.lora.r: must be >= 1, got 0\n"


@pytest.mark.parametrize("text, message", [
    ("model: x\nmodels:\n  a: {source: hub\n  b: 1\n", r":4: invalid YAML \(expected ',' or '}', but got ':'\)"),
    ("model: x\nmodel: y\n", r":2: invalid YAML \(found duplicate key \"model\""),
])
def test_invalid_yaml_names_the_line(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ReflectEvoError, match=rf"^{tmp_path / 'params.yaml'}{message}"):
        read_params(tmp_path / "params.yaml")
    with pytest.raises(ReflectEvoError, match=rf"^{tmp_path}: not a file"):
        read_params(tmp_path)


# --------------------------------------------------------------------------------------------------
# every stage checks its params first: the key is named although its inputs do not even exist


def _stage_cases():
    missing = "no-such-input"
    return [
        ("prepare", ["--out", "{d}/sources"], ("prepare.seed", -1), "prepare.seed: must be in [0, 4294967295]", "sources"),
        ("generate", ["--sources", missing, "--out", "{d}/raw", "--summary", "{d}/g.json", "--no-progress"],
         (f"{P}.lora.r", 0), f"{P}.lora.r: must be >= 1", "raw"),
        ("generate", ["--sources", missing, "--out", "{d}/raw", "--summary", "{d}/g.json", "--no-progress"],
         ("generate.top_p", 1.5), "generate.top_p: must be in (0, 1]", "raw"),
        ("curate", ["--raw", missing, "--out", "{d}/curated", "--metrics", "{d}/c.json"],
         ("curate.eval_fraction", 1.0), "curate.eval_fraction: must be in [0, 1)", "curated"),
        ("train", ["--setting", "one_stage", "--train-data", missing, "--out", "{d}/models/one_stage",
                   "--metrics", "{d}/t.json"], (f"{P}.lr_sft", 0), f"{P}.lr_sft: must be a number > 0", "models"),
        ("train", ["--setting", "one_stage", "--train-data", missing, "--out", "{d}/models/one_stage",
                   "--metrics", "{d}/t.json"], ("train.sft.grad_accum", 0), "train.sft.grad_accum: must be >= 1", "models"),
        ("evaluate", ["--sources", missing, "--models", missing, "--metrics", "{d}/e.json",
                      "--predictions", "{d}/p.jsonl", "--plots", "{d}/plots"],
         (f"{P}.gen_batch_size", 0), f"{P}.gen_batch_size: must be >= 1", "e.json"),
    ]


@pytest.mark.parametrize("name, args, change, message, output", _stage_cases(),
                         ids=[f"{c[0]}-{c[2][0]}" for c in _stage_cases()])
def test_stages_check_params_before_reading_inputs(tmp_path, name, args, change, message, output):
    from helpers import tiny_params_dict
    from test_stages import run

    p = tiny_params_dict(ROOT / "params.yaml")
    _set(p, *change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = run(name, "--params", tmp_path / "params.yaml", *[a.format(d=tmp_path) for a in args])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), r.output
    assert not (tmp_path / output).exists()


def test_config_imports_nothing_above_it():
    """reflectevo.config sits under prompts, backends, generation and training: not even a function-level
    import or a "reflectevo.x:Name" registry string may reach up (the train section's class is passed in)."""
    import ast

    allowed = ("reflectevo.config", "reflectevo.errors", "reflectevo.tasks", "reflectevo.demands",
               "reflectevo.settings")
    found = []
    for path in sorted((ROOT / "reflectevo" / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [node.value.split(":")[0]] if isinstance(node, ast.Constant) and isinstance(node.value, str)
                     and re.fullmatch(r"reflectevo(\.\w+)+:\w+", node.value) else [])
            found += [f"{path.name}: {n}" for n in names
                      if n.startswith("reflectevo") and not n.startswith(allowed)]
    assert not found, found
