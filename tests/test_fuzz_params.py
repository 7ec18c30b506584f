"""Fuzz test of params.yaml: a value retyped or pushed out of range, an unknown key, a missing key or
section, wrong nesting, or the file itself damaged — `reflectevo params check`, `reflectevo presets` and
every stage that reads params exit 0 (and then write their outputs), or exit 2 with one line naming the
params key or file, writing nothing (tests/fuzzing.py for the contract).

The ranges of every numeric and enum field (LoRA rank >= 1, learning rates > 0, top_p in (0, 1], ...)
are listed in RANGES; `params check` must refuse a value outside them, naming the key (the schema's
ranges: reflectevo/config/sections.py, reflectevo/training/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fuzzing import (
    JSON_VALUES,
    check_contract,
    copy_tree,
    damage,
    fuzz_settings,
    invoke,
    snapshot,
    stage,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def base(scripted_pipeline):
    return scripted_pipeline


def _leaves(obj, prefix=()):
    """(path, value) of every key of the params tree (mappings and list entries), the mappings too."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(((*prefix, k), v))
            out += _leaves(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(((*prefix, i), v))
            out += _leaves(v, (*prefix, i))
    return out


YAML_VALUES = JSON_VALUES | st.sampled_from([-1, 0, -0.5, 1e9, 2**63, float("nan"), float("inf"), "", "1e-05"])


def mutate_params(data, params: dict) -> tuple[dict, tuple, str]:
    """One mutation of the params tree: (new tree, the path it touched, what was done)."""
    p = json.loads(json.dumps(params))
    path, _ = data.draw(st.sampled_from(_leaves(p)), label="key")
    parent = p
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    op = data.draw(st.sampled_from(["retype", "retype", "delete", "unknown_key", "nest", "flatten"]), label="params op")
    if op == "retype":
        parent[last] = data.draw(YAML_VALUES, label="value")
    elif op == "delete":
        del parent[last]
    elif op == "unknown_key" and isinstance(parent[last], dict):
        parent[last][data.draw(st.text(min_size=1, max_size=10), label="new key")] = data.draw(YAML_VALUES, label="value")
    elif op == "nest":      # the value one level too deep
        parent[last] = {data.draw(st.sampled_from(["value", str(last), "x"]), label="inner"): parent[last]}
    elif op == "flatten" and isinstance(parent[last], dict) and parent[last]:   # a sub-section's keys one level up
        inner = parent.pop(last) if isinstance(parent, dict) else parent[last]
        if isinstance(parent, dict):
            parent.update({str(k): v for k, v in inner.items()})
    else:
        op = "retype"
        parent[last] = data.draw(YAML_VALUES, label="value")
    return p, path, op


def _names(params_file: Path, path: tuple) -> list[str]:
    """What an error about `path` may name: the params file, the section, or a key on the path."""
    if not path:
        from reflectevo.config.params import TOP_LEVEL

        return [str(params_file), *(f"{k}:" for k in TOP_LEVEL), *(f"{k}." for k in TOP_LEVEL)]
    keys = [str(k) for k in path]
    names = [str(params_file), keys[0], *[".".join(keys[: i + 1]) for i in range(len(keys))]]
    if keys[0] == "models":
        names.append("model")
    return names


def command(cmd: str, d: Path, params: Path) -> tuple[object, list, list[Path]]:
    """(app, arguments, outputs) of one command on the pipeline copy `d`."""
    from reflectevo.cli import app as cli

    if cmd == "params check":
        return cli, ["params", "check", params], []
    if cmd == "presets":
        return cli, ["presets", params], []
    if cmd == "prepare":
        return stage("prepare"), ["--params", params, "--out", d / "sources2"], [d / "sources2"]
    if cmd == "generate":
        outs = [d / "raw", d / "metrics/generate.json"]
        return stage("generate"), ["--params", params, "--sources", d / "sources/train.jsonl", "--out", outs[0],
                                   "--summary", outs[1], "--no-progress"], outs
    if cmd == "curate":
        outs = [d / "curated", d / "metrics/curate.json"]
        return stage("curate"), ["--params", params, "--raw", d / "raw", "--out", outs[0], "--metrics", outs[1]], outs
    if cmd == "train":   # an RL setting: every train key is read and checked; disabled, it trains nothing
        outs = [d / "models/rloo", d / "metrics/train.json"]
        return stage("train"), ["--setting", "rloo", "--params", params, "--train-data", d / "raw", "--out", outs[0],
                                "--metrics", outs[1], "--checkpoints", "none"], outs
    if cmd == "evaluate":
        outs = [d / "metrics/eval.json", d / "eval", d / "plots"]
        return stage("evaluate"), ["--params", params, "--sources", d / "sources/test.jsonl", "--models", d / "models",
                                   "--predictions", d / "eval/predictions.jsonl", "--metrics", outs[0],
                                   "--plots", outs[2]], outs
    if cmd == "evolve chain":   # rewrites the params file itself
        return stage("evolve"), ["chain", "3", "--params", params], [params]
    if cmd == "evolve summary":
        outs = [d / "metrics/evolve.json", d / "plots/evolve.json"]
        return stage("evolve"), ["summary", "--params", params, "--metrics-dir", d / "metrics", "--eval-dir",
                                 d / "eval", "--evolve-dir", d / "evolve", "--out", outs[0], "--plots", outs[1]], outs
    return stage("demo"), ["prepare", "--params", params, "--exclude", d / "sources", "--out", d / "demo/sources"], \
        [d / "demo/sources"]


COMMANDS = ("params check", "presets", "prepare", "generate", "curate", "train", "evaluate", "evolve chain",
            "evolve summary", "demo prepare")


@fuzz_settings(25)
@given(data=st.data())
def test_params_mutations_one_line_or_success(base, tmp_path_factory, data):
    d = copy_tree(base, tmp_path_factory.mktemp("p") / "ex")
    params = d / "params.yaml"
    tree = yaml.safe_load(params.read_text())
    if data.draw(st.integers(0, 9), label="file damage") == 0:    # the file itself: cut, garbled, a folder ...
        path, op = (), damage(data, params, "bytes")              # (any key may then be named)
    else:
        tree, path, op = mutate_params(data, tree)
        params.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    cmd = data.draw(st.sampled_from(COMMANDS), label="command")
    app, args, outputs = command(cmd, d, params)
    before = snapshot(*outputs)
    r = invoke(app, *args)
    if check_contract(r, outputs, before, _names(params, path), f"{cmd} ({op} {'.'.join(map(str, path)) or 'file'})"):
        assert all(o.exists() for o in outputs), f"{cmd}: exit 0 without its outputs"


# -- ranges ----------------------------------------------------------------------------------------------
# dotted key (`*`: every preset) -> (a value outside the range, what the range is)

RANGES = {
    "models.*.lora.r": (0, ">= 1"), "models.*.lora.alpha": (0, "> 0"), "models.*.lora.dropout": (1.0, "in [0, 1)"),
    "models.*.lr_sft": (0.0, "> 0"), "models.*.lr_dpo": (-1e-5, "> 0"), "models.*.gen_batch_size": (0, ">= 1"),
    "models.*.max_length": (0, ">= 1"),
    "generate.k": (0, ">= 1"), "generate.temperature": (-0.1, ">= 0"), "generate.top_p": (0.0, "in (0, 1]"),
    "generate.top_p=1.5": (1.5, "in (0, 1]"), "generate.max_new_tokens_trial": (0, ">= 1"),
    "generate.max_new_tokens_reflection": (0, ">= 1"), "generate.retry_temperature": (-1.0, ">= 0"),
    "generate.limit": (-1, ">= 0"), "generate.shard_size": (0, ">= 1"), "generate.workers": (0, ">= 1"),
    "generate.rounds": (0, "in [1, 10]"),
    "curate.eval_fraction": (1.0, "in [0, 1)"), "curate.min_reflection_words": (-1, ">= 0"),
    "curate.max_reflection_words": (0, ">= 1"), "curate.max_pairs_per_item": (-1, ">= 0"),
    "curate.dedup_threshold": (0.0, "in (0, 1]"),
    "train.sft.epochs": (0.0, "> 0"), "train.sft.batch_size": (0, ">= 1"), "train.sft.grad_accum": (0, ">= 1"),
    "train.sft.max_length": (0, ">= 1"), "train.sft.warmup_ratio": (1.5, "in [0, 1)"),
    "train.sft.weight_decay": (-0.1, ">= 0"), "train.sft.max_steps": (0, "-1 or >= 1"),
    "train.sft.save_steps": (-1, ">= 0"), "train.sft.save_total_limit": (0, ">= 1"),
    "train.dpo.beta": (0.0, "> 0"), "train.dpo.batch_size": (0, ">= 1"), "train.dpo.epochs": (-1.0, "> 0"),
    "train.rl.lr": (0.0, "> 0"), "train.rl.num_generations": (1, ">= 2"), "train.rl.temperature": (0.0, "> 0"),
    "train.rl.max_completion_length": (0, ">= 1"), "train.rl.limit": (-1, ">= 0"),
    "evaluate.max_new_tokens_trial": (0, ">= 1"), "evaluate.max_new_tokens_reflection": (0, ">= 1"),
    "evaluate.limit": (-1, ">= 0"), "evaluate.rounds": (11, "in [1, 10]"),
    "prepare.tasks.0.n_train": (-1, ">= 0"), "demo.items": (0, ">= 1"),
}
# Accepted by `params check` today: they need the schema's ranges (params validation), not another fix here.
def _set(tree: dict, dotted: str, value) -> str:
    """Set `dotted` (models.* = the selected preset) in `tree`; returns the key as the error must name it."""
    keys = [tree["model"] if k == "*" else (int(k) if k.isdigit() else k) for k in dotted.split("=")[0].split(".")]
    node = tree
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return ".".join(str(k) for k in keys if not isinstance(k, int))


@pytest.mark.parametrize("key", list(RANGES))
def test_params_check_refuses_a_value_out_of_range(tmp_path, key):
    from fuzzing import ROOT

    from reflectevo.cli import app as cli

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    value, rule = RANGES[key]
    named = _set(tree, key, value)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    r = invoke(cli, "params", "check", params)
    assert r.exit_code == 2, f"{key}: {value!r} accepted (must be {rule})"
    line = r.stderr.strip()
    assert line.count("\n") == 0 and named.split(".")[-1] in line, line


@settings(fuzz_settings(20))
@given(data=st.data())
def test_params_check_refuses_any_value_out_of_range(data):
    """As above with drawn keys and values: an out-of-range number anywhere in RANGES is refused."""
    from fuzzing import ROOT

    from reflectevo.cli import app as cli

    key = data.draw(st.sampled_from(sorted(RANGES)), label="key")
    value, rule = RANGES[key]
    bad = data.draw(st.sampled_from([value, -2, -1e-9, -(2**40), float("-inf"), float("nan")]), label="value")
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    _set(tree, key, bad)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(tree, sort_keys=False))
        r = invoke(cli, "params", "check", params)
    assert r.exit_code == 2, f"{key}: {bad!r} accepted (must be {rule})"
