"""`generate.engine: ray` in a local Ray on the CPU (tiny-random model): the plain engine's records.

One local Ray (2 CPUs, no dashboard) serves the module's Ray tests (marked slow: Ray and two actors
that each load the model take ~30 s); `generate_ray` uses a running Ray and leaves it running, and
starts and stops its own otherwise (checked without Ray, on a stand-in module).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_params_dict
from typer.testing import CliRunner

from reflectevo.backends.registry import make_backend
from reflectevo.config.sections import GenerateConfig
from reflectevo.config.loader import from_dict
from reflectevo.config.params import load_section, read_params
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.run import JOURNAL, generate, write_shards
from reflectevo.episodes.shards import load_episodes
from reflectevo.generation.keys import make_spec
from reflectevo.models.fingerprint import model_fingerprint
from reflectevo.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-random"
CHUNK = 3


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tiny_preset):
    """A few reasoning-gym items of two tasks (one with generator options) and a short-token spec."""
    tasks = {t.name: t for t in (get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1}),
                                 get_task("rg/syllogism"))}
    items = tasks["rg/chain_sum"].load("train", 5) + tasks["rg/syllogism"].load("train", 3)
    spec = make_spec(model_fingerprint(NAME, tiny_preset), tiny_preset.dtype,
                     GenerateConfig(k=2, max_new_tokens_trial=10, max_new_tokens_reflection=10))
    return items, tasks, spec


@pytest.fixture(scope="module")
def plain(setup, tiny_preset, tmp_path_factory):
    items, tasks, spec = setup
    raw = tmp_path_factory.mktemp("plain")
    eps, _ = generate(items, tasks, lambda: make_backend(NAME, tiny_preset), spec, raw, chunk_size=CHUNK,
                      progress=False)
    write_shards(raw, eps, 50000)
    return raw, eps


def _shard_bytes(raw: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(raw.glob("episodes-*.parquet"))]


@pytest.mark.slow
def test_ray_engine_matches_the_plain_engine_then_reuses_everything(local_ray, setup, tiny_preset, plain, tmp_path):
    """A plain run killed after its first chunk, finished by the ray engine (two actors, other chunk
    boundaries): the plain engine's records, byte for byte; a second ray run computes nothing."""
    from reflectevo.generation.ray import generate_ray

    items, tasks, spec = setup
    plain_raw, plain_eps = plain
    raw = tmp_path / "ray"
    generate(items[:CHUNK], tasks, lambda: make_backend(NAME, tiny_preset), spec, raw, chunk_size=CHUNK,
             progress=False)                               # what a run killed after one chunk leaves: a journal
    assert len(load_episodes(raw)) == CHUNK and not list(raw.glob("episodes-*"))
    eps, stats = generate_ray(items, tasks, NAME, tiny_preset, spec, raw, batch_size=CHUNK + 1, concurrency=2,
                              progress=False)
    assert stats.reused == CHUNK and stats.computed == len(items) - CHUNK and stats.generations >= stats.computed
    assert len(load_episodes(raw)) == len(items)          # streamed into the same journal as chunks finished
    assert local_ray.is_initialized()                      # a running Ray is used and left running
    a, b = {e["episode_id"]: e for e in plain_eps}, {e["episode_id"]: e for e in eps}
    assert list(a) == list(b)                              # key for key, in item order
    for k in a:
        assert json.dumps(a[k]["trial1"]) == json.dumps(b[k]["trial1"])   # greedy trial 1: byte for byte
    assert sum(len(e["samples"]) for e in eps[CHUNK:]) > 0  # the ray part sampled reflections ...
    assert eps == plain_eps                                # ... the same ones (per-sample seeds, any batching)
    write_shards(raw, eps, 50000)
    assert _shard_bytes(raw) == _shard_bytes(plain_raw)    # the shards are the same bytes

    again, stats2 = generate_ray(items, tasks, NAME, tiny_preset, spec, raw, batch_size=CHUNK, concurrency=2,
                                 progress=False)
    assert stats2.computed == 0 and stats2.reused == len(items) and again == eps


@pytest.mark.slow
def test_generate_stage_dispatches_to_ray(local_ray, tmp_path):
    spec_ = importlib.util.spec_from_file_location("stage_generate_ray", ROOT / "stages" / "generate.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    p = tiny_params_dict(ROOT / "params.yaml", tokens=6)
    p["generate"].update(engine="ray", workers=2, limit=4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    tasks = get_task("rg/chain_sum")
    sources = tmp_path / "train.jsonl"
    sources.write_text("".join(json.dumps(it.to_dict()) + "\n" for it in tasks.load("train", 4)))
    args = ["--params", params, "--sources", sources, "--out", tmp_path / "raw", "--summary", tmp_path / "g.json",
            "--no-progress"]
    r = CliRunner().invoke(mod.app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["items"] == 4 and g["run"]["computed"] == 4 and g["run"]["engine"] == "ray"
    assert len(_shard_bytes(tmp_path / "raw")) == 1 and not (tmp_path / "raw" / JOURNAL).exists()


def test_engine_is_validated_with_a_hint():
    with pytest.raises(ReflectEvoError, match=r"generate\.engine: unknown engine 'rya'\. Did you mean 'ray'\?"):
        from_dict(GenerateConfig, {"engine": "rya"}, "generate")
    cfg = load_section(read_params(ROOT / "params.yaml"), "generate")
    assert cfg.engine in ("local", "ray") and isinstance(cfg.ray_address, str)



class _FakeRay:
    def __init__(self, running=False):
        self.running, self.calls = running, []

    def is_initialized(self):
        return self.running

    def init(self, address=None, **kwargs):
        self.calls.append(("init", address, kwargs))
        self.running = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.running = False


def test_ray_session_starts_and_always_stops_its_own_ray(monkeypatch):
    import reflectevo
    from reflectevo.generation.ray import ray_session

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(RuntimeError), ray_session(""):
        raise RuntimeError("a worker failed")
    assert fake.calls == [("init", None, {"include_dashboard": False}), ("shutdown",)] and not fake.running

    fake.calls.clear()
    with ray_session("ray://head:10001"):
        pass
    (_, address, kwargs), last = fake.calls
    assert address == "ray://head:10001" and last == ("shutdown",)
    assert kwargs["runtime_env"]["py_modules"] == [reflectevo]   # the cluster runs the driver's code

    running = _FakeRay(running=True)                             # someone else's Ray: used, left running
    monkeypatch.setitem(sys.modules, "ray", running)
    with ray_session("auto"):
        pass
    assert running.calls == [] and running.running


class _FakeDataset:
    """`ray.data.Dataset` as generate_ray uses it: `map_batches(fn, *, batch_size, compute, concurrency,
    fn_constructor_kwargs, num_cpus, num_gpus)` (ray/data/dataset.py:634-660), resolved by Ray's own
    `get_compute_strategy` (ray/data/_internal/util.py:590-700, which logs the deprecation of
    `concurrency=`), then rows through one actor in this process; `iter_rows` yields the output rows."""

    def __init__(self, rows, calls, resolve):
        self.rows, self.calls, self.resolve = rows, calls, resolve

    def map_batches(self, fn, *, batch_size=None, compute=None, concurrency=None, fn_constructor_kwargs=None,
                    **remote_args):
        strategy = self.resolve(fn, fn_constructor_args=None, compute=compute, concurrency=concurrency)
        self.calls.append({"strategy": strategy, "concurrency": concurrency, **remote_args})
        actor = fn(**fn_constructor_kwargs)
        rows = [{k: v[0] for k, v in actor({"items": [r["items"]]}).items()} for r in self.rows]
        return _FakeDataset(rows, self.calls, self.resolve)

    def iter_rows(self):
        return iter(self.rows)


def test_generate_ray_asks_for_a_fixed_actor_pool_not_the_deprecated_concurrency(setup, tiny_preset, tmp_path,
                                                                                 monkeypatch, caplog):
    import logging
    import types

    pytest.importorskip("ray.data")
    import ray.data.block  # imported before the stand-in replaces `ray` in sys.modules
    from ray.data import ActorPoolStrategy
    from ray.data._internal.util import get_compute_strategy

    from reflectevo.generation.ray import generate_ray

    calls = []
    data = types.ModuleType("ray.data")
    context = types.SimpleNamespace(enable_progress_bars=True)        # DataContext.get_current() (ray/data/context.py)
    data.ActorPoolStrategy, data.DataContext = ActorPoolStrategy, types.SimpleNamespace(get_current=lambda: context)
    data.from_items = lambda rows, override_num_blocks=None: _FakeDataset(rows, calls, get_compute_strategy)
    ray = types.ModuleType("ray")
    ray.data, ray.is_initialized = data, lambda: True                # a running Ray: used as it is
    ray.cluster_resources = lambda: {"CPU": 2.0}
    ray.nodes = lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.data", data)
    items, tasks, spec = setup
    with caplog.at_level(logging.WARNING):
        eps, stats = generate_ray(items[:4], tasks, NAME, tiny_preset, spec, tmp_path / "raw", batch_size=2,
                                  concurrency=8, progress=False)
    (call,) = calls
    assert isinstance(call["strategy"], ActorPoolStrategy) and call["strategy"].min_size == call["strategy"].max_size == 2
    assert call["concurrency"] is None and "deprecated" not in caplog.text
    assert stats.computed == 4 and [ep["item_id"] for ep in eps] == [it.id for it in items[:4]]


def test_actors_get_a_gpu_each_or_share_the_gpus_there_are():
    """Ray places an actor asking for `num_gpus: 1` only where a whole GPU is free, so asking for one per actor
    with fewer GPUs than actors would leave the rest of the pool waiting: transformers actors share the GPUs in
    equal fractions, vLLM actors (an engine fills its GPU) are refused in one line."""
    import types

    from reflectevo.generation.ray import _actor_resources

    def cluster(gpus):
        return types.SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": float(gpus)},
                                     nodes=lambda: [{"Alive": True, "Resources": {"CPU": 16.0}}])

    assert _actor_resources(cluster(8), 8, "transformers") == {"num_gpus": 1, "num_cpus": 1}
    assert _actor_resources(cluster(2), 8, "transformers") == {"num_gpus": 0.25, "num_cpus": 1}
    assert _actor_resources(cluster(3), 8, "transformers") == {"num_gpus": 1 / 3, "num_cpus": 1}
    assert _actor_resources(cluster(8), 8, "vllm") == {"num_gpus": 1, "num_cpus": 1}
    with pytest.raises(ReflectEvoError, match=r"generate.workers: 8 Ray actors but the cluster has 2 GPUs; with backend "
                                              r"vllm .* set generate.workers <= 2"):
        _actor_resources(cluster(2), 8, "vllm")
    assert _actor_resources(cluster(0), 8, "transformers") == {"num_cpus": 2}
