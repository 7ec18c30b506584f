"""kill -9 anywhere, for curate, evaluate, report and the self-evolution stages (generate and train have
their own: tests/test_generate_scale.py, tests/test_training_resume.py, tests/test_rl_resume.py).

Each stage runs in a forked child on the scripted model (no weights: fast, no model threads) and kills
itself with SIGKILL at its n-th file event: opening a file for writing, fsync, rename (before and after),
unlink, rmtree. Then:

- whatever the kill left under the stage's outputs is whole: every JSON / JSONL / Parquet / HTML file that
  is not a hidden temporary parses completely (outputs are written atomically, or not at all);
- the same command run again completes, and its outputs equal an uninterrupted run's (timings aside),
  with no temporary file left behind.

Kill points: every event when a stage has few, else six evenly spread, first and last included
(`REFLECTEVO_KILL_POINTS=0`: every event)."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from fuzzing import copy_tree, fake_adapter, invoke, leftovers, stage

pytestmark = pytest.mark.slow

# timings, and `run` (what this run computed or reused: after a kill the rerun reuses the journaled episodes)
VOLATILE = {"seconds", "episodes_per_s", "new_tokens_per_s", "train_tokens_per_s", "steps_per_s", "run"}


@pytest.fixture(scope="module")
def base(scripted_pipeline, tmp_path_factory):
    d = copy_tree(scripted_pipeline, tmp_path_factory.mktemp("kill") / "base")
    fake_adapter(d / "evolve/it2/models/one_stage", "one_stage")
    return d


# -- the kill switch (installed in the forked child only) ------------------------------------------------

def _arm(n: int, log: list[str]) -> None:
    """Count file events in this process; SIGKILL it at the n-th (n = 0: count only)."""
    def hit(what: str) -> None:
        log.append(what)
        if len(log) == n:
            os.kill(os.getpid(), signal.SIGKILL)

    real_open, real_fdopen, real_replace = io.open, os.fdopen, os.replace
    real_unlink, real_fsync, real_rmtree = os.unlink, os.fsync, shutil.rmtree

    def writing(mode) -> bool:
        return any(c in str(mode) for c in "wax+")

    def opener(real):
        def wrapped(file, mode="r", *args, **kwargs):
            fh = real(file, mode, *args, **kwargs)
            if writing(mode):
                hit(f"open {file}")
            return fh
        return wrapped

    def replace(src, dst, *args, **kwargs):
        hit(f"replace {dst}")
        real_replace(src, dst, *args, **kwargs)
        hit(f"replaced {dst}")

    def unlink(path, *args, **kwargs):
        hit(f"unlink {path}")
        real_unlink(path, *args, **kwargs)

    def fsync(fd):
        hit("fsync")
        real_fsync(fd)

    def rmtree(path, *args, **kwargs):
        hit(f"rmtree {path}")
        real_rmtree(path, *args, **kwargs)

    builtins.open = io.open = opener(real_open)
    os.fdopen = opener(real_fdopen)
    os.replace, os.unlink, os.remove, os.fsync, shutil.rmtree = replace, unlink, unlink, fsync, rmtree


def run_killed(call, n: int, timeout: float = 120) -> tuple[bool, list[str]]:
    """Run `call()` in a forked child killed at its n-th file event (n = 0: never); returns (killed, events)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no cleanup of any kind may run (os._exit), as after a real kill -9
        os.close(r)
        code = 99
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            log: list[str] = []
            _arm(n, log)
            result = call()
            code = result.exit_code
            os.write(w, json.dumps(log).encode())
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child did not finish in {timeout} s")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as fh:
        events = json.loads(fh.read() or b"[]")
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True, events
    assert os.WEXITSTATUS(status) == 0, f"the child exited {os.WEXITSTATUS(status)}"
    return False, events


# -- what a kill may leave, and what a rerun must give ----------------------------------------------------

def whole(paths: list[Path]) -> None:
    """Every committed (not hidden) file under `paths` parses completely."""
    import pyarrow.parquet as pq

    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            if f.name.startswith("."):
                continue
            data = f.read_bytes()
            if f.suffix == ".json":
                json.loads(data)
            elif f.suffix == ".jsonl":
                assert not data or data.endswith(b"\n"), f"{f}: cut short"
                for line in data.splitlines():
                    json.loads(line)
            elif f.suffix == ".parquet":
                pq.read_table(f)
            elif f.suffix == ".html":
                assert data.rstrip().endswith(b"</html>"), f"{f}: cut short"


def _norm(obj, root: str):
    """Timings dropped, the run's own folder written as <root>."""
    if isinstance(obj, dict):
        return {k: _norm(v, root) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_norm(v, root) for v in obj]
    return obj.replace(root, "<root>") if isinstance(obj, str) else obj


def contents(paths: list[Path], root: Path) -> dict[str, object]:
    """Every file under `paths` (relative to `root`), JSON parsed without timings; Parquet as rows."""
    import pyarrow.parquet as pq

    out: dict[str, object] = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            rel = str(f.relative_to(root))
            if f.suffix == ".json":
                out[rel] = _norm(json.loads(f.read_bytes()), str(root))
            elif f.suffix == ".jsonl":
                out[rel] = [_norm(json.loads(x), str(root)) for x in f.read_bytes().splitlines()]
            elif f.suffix == ".parquet":
                out[rel] = _norm(pq.read_table(f).to_pylist(), str(root))
            else:   # (a Python object's repr on the page prints its address: not what this test is about)
                out[rel] = re.sub(rb" at 0x[0-9a-f]+", b" at 0x?", f.read_bytes().replace(str(root).encode(), b"<root>"))
    return out


# -- the stages -------------------------------------------------------------------------------------------

def _stage_case(name: str, d: Path) -> tuple[object, list, list[Path]]:
    """(app, arguments, outputs) of one stage command on the pipeline copy `d`."""
    p = d / "params.yaml"
    it2 = d / "evolve/it2"
    if name == "curate":
        return stage("curate"), ["--params", p, "--raw", d / "raw", "--out", d / "curated", "--metrics",
                                 d / "metrics/curate.json"], [d / "curated", d / "metrics/curate.json"]
    if name == "evaluate":
        return stage("evaluate"), ["--params", p, "--sources", d / "sources/test.jsonl", "--models", d / "models",
                                   "--predictions", d / "eval/predictions.jsonl", "--metrics", d / "metrics/eval.json",
                                   "--plots", d / "plots"], [d / "metrics/eval.json", d / "eval", d / "plots"]
    if name == "report":
        return stage("report"), ["--metrics", d / "metrics/eval.json", "--stats", d / "curated/stats.json",
                                 "--predictions", d / "eval/predictions.jsonl", "--plots", d / "plots",
                                 "--out", d / "report/index.html"], [d / "report"]
    if name == "evolve generate":
        return stage("evolve"), ["generate", "--iteration", "it2", "--previous", d / "models", "--out", it2,
                                 "--params", p, "--sources", d / "sources/train.jsonl"], [it2 / "raw", it2 / "generate.json"]
    if name == "evolve curate":
        return stage("evolve"), ["curate", "--iteration", "it2", "--previous-data", d / "curated", "--out", it2,
                                 "--params", p], [it2 / "curated", it2 / "curate.json", it2 / "data"]
    if name == "evolve evaluate":
        return stage("evolve"), ["evaluate", "--iteration", "it2", "--out", it2, "--params", p, "--sources",
                                 d / "sources/test.jsonl"], [it2 / "eval.json", it2 / "predictions.jsonl"]
    assert name == "evolve summary"
    return stage("evolve"), ["summary", "--params", p, "--metrics-dir", d / "metrics", "--eval-dir", d / "eval",
                             "--evolve-dir", d / "evolve", "--out", d / "metrics/evolve.json", "--plots",
                             d / "plots/evolve.json"], [d / "metrics/evolve.json", d / "plots/evolve.json"]


def _clear(outputs: list[Path]) -> None:
    """A stage's outputs removed, as `dvc repro` does before it runs the stage (data/raw: persist)."""
    for o in outputs:
        if o.is_dir() and o.name != "raw":
            shutil.rmtree(o)
        elif o.is_file():
            o.unlink()


def _kill_points(n_events: int) -> list[int]:
    most = int(os.environ.get("REFLECTEVO_KILL_POINTS", "6"))   # 0: every event
    if n_events <= most or most == 0:
        return list(range(1, n_events + 1))
    return sorted({1 + round(i * (n_events - 1) / (most - 1)) for i in range(most)})


@pytest.mark.parametrize("name", ["curate", "evaluate", "report", "evolve generate", "evolve curate",
                                  "evolve evaluate", "evolve summary"])
def test_kill_9_at_any_file_event_then_rerun_matches(base, tmp_path, name):
    ref = copy_tree(base, tmp_path / "ref")
    app, args, outputs = _stage_case(name, ref)
    _clear(outputs)
    killed, events = run_killed(lambda: invoke(app, *args), 0)
    assert not killed and events, f"{name}: an uninterrupted run makes no file event"
    want = contents(outputs, ref)
    for n in _kill_points(len(events)):
        d = copy_tree(base, tmp_path / f"k{n}")
        app, args, outputs = _stage_case(name, d)
        _clear(outputs)
        killed, seen = run_killed(lambda app=app, args=args: invoke(app, *args), n)
        assert killed or n > len(seen), f"{name}: not killed at event {n} of {len(events)}"
        whole(outputs)                       # nothing committed is half-written
        r = invoke(app, *args)               # the same command again
        assert r.exit_code == 0, f"{name} after a kill at {events[n - 1]!r}: {r.output}"
        assert contents(outputs, d) == want, f"{name}: the rerun after a kill at {events[n - 1]!r} differs"
        assert not leftovers(*outputs), f"{name}: temporary files left after the rerun: {leftovers(*outputs)}"
        shutil.rmtree(d)


def test_kill_9_in_evolve_train_then_rerun_matches(base, tmp_path):
    """evolve train on the tiny-random model (two steps, a checkpoint after each): killed at a spread of its
    file events (checkpoints, adapter, card, metrics), the rerun resumes or retrains and ends where an
    uninterrupted run ends (same steps, same adapter weights, same card)."""
    from fuzzing import scripted_params
    from safetensors.numpy import load_file

    def case(d: Path):
        params = scripted_params(d / "tiny.yaml", model="tiny-random")
        text = params.read_text().replace("save_steps: 0", "save_steps: 1")
        params.write_text(text.replace("max_steps: 1", "max_steps: 2"))
        it2 = d / "evolve/it2"
        for split in ("train", "eval"):
            (it2 / "data").mkdir(parents=True, exist_ok=True)
            shutil.copy(d / f"curated/dplus_{split}.jsonl", it2 / f"data/dplus_{split}.jsonl")
        shutil.rmtree(it2 / "models", ignore_errors=True)
        args = ["train", "--iteration", "it2", "--previous", d / "models", "--out", it2, "--params", params]
        return args, [it2 / "models", it2 / "train.json"]

    def weights(d: Path) -> dict:
        return {k: v.tolist() for k, v in load_file(d / "evolve/it2/models/one_stage/adapter_model.safetensors").items()}

    def card(d: Path) -> dict:
        c = json.loads((d / "evolve/it2/models/one_stage/model_card.json").read_text())
        return {k: v for k, v in c.items() if k not in ("resumed_from_step", "checkpoint_keys")}

    def result(d: Path) -> dict:
        r = json.loads((d / "evolve/it2/train.json").read_text())
        return {k: ({kk: vv for kk, vv in v.items() if kk in ("steps", "first_loss")} if isinstance(v, dict) else v)
                for k, v in r.items() if k not in VOLATILE}

    ref = copy_tree(base, tmp_path / "ref")
    args, outputs = case(ref)
    killed, events = run_killed(lambda: invoke(stage("evolve"), *args), 0, timeout=300)
    assert not killed and any("checkpoint" in e for e in events), events
    for n in sorted({1 + round(i * (len(events) - 1) / 3) for i in range(4)}):
        d = copy_tree(base, tmp_path / f"k{n}")
        args, outputs = case(d)
        killed, seen = run_killed(lambda args=args: invoke(stage("evolve"), *args), n, timeout=300)
        assert killed or n > len(seen)    # (a first run also writes the tiny model's cache: a few events more)
        whole(outputs)
        r = invoke(stage("evolve"), *args)
        assert r.exit_code == 0, f"after a kill at {events[n - 1]!r}: {r.output}"
        assert result(d) == result(ref) and card(d) == card(ref), f"after a kill at {events[n - 1]!r}"
        assert _close(weights(d), weights(ref)), f"after a kill at {events[n - 1]!r}: other adapter weights"
        assert not leftovers(*outputs)
        shutil.rmtree(d)


def _close(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
