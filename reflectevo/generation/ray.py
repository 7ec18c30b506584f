"""`generate.engine: ray`: the generate stage's episodes, computed by a Ray Data pipeline.

The same episodes as `generation.generate`, only computed elsewhere: on the local machine or on every
node of a Ray cluster. The unit of work is unchanged (`generation.run_chunk` on a chunk of items), so
the records are the plain engine's, key for key and byte for byte:

- the driver computes the keys missing from `raw_dir` (finished shards and journals, exactly as the
  plain engine does) and cuts the missing items into the same chunks (`batch_size` items each);
- each chunk is one row of a `ray.data.from_items` dataset (the items as a JSON string, so nested
  metadata never meets Arrow's schema inference), mapped by `map_batches` over a fixed pool of
  `concurrency` actors (`compute=ActorPoolStrategy(size=n)`); each actor builds the preset's backend
  once (`make_backend`) and runs `run_chunk` on the chunks it receives, one GPU per actor where the
  cluster has GPUs;
- the episodes come back as a JSON string column, streamed (`iter_rows`) as chunks finish, and are
  appended to the journal at once, so a killed run keeps every finished chunk and the next run (with
  either engine) resumes from it. The caller then writes the shards as usual.

Task objects travel pickled (the driver's own objects: the same generator options, hence the same
prompts and keys); every returned episode id is checked against the keys the driver asked for, so a
worker running other code or other task options fails loudly instead of writing foreign records.

With a vLLM preset on a GPU cluster the actors hold a vLLM engine each (`num_gpus=1`). Ray's own
`ray.data.llm` processors (`vLLMEngineProcessorConfig` + `build_processor`) are the alternative for
prompt-level batch inference, but they see prompts, not episodes (trial -> verify -> reflect -> retry),
so this engine keeps the episode loop in `run_chunk` and the backend behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reflectevo.config.presets import ModelPreset
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.episodes import Stats, run_chunk
from reflectevo.generation.keys import GenSpec
from reflectevo.generation.run import JOURNAL, plan
from reflectevo.jsonio import Journal
from reflectevo.tasks import Item, Task


class EpisodeWorker:
    """A Ray Data actor: builds the backend once, then turns rows of item chunks into episodes."""

    def __init__(self, preset_name: str, preset: ModelPreset, spec: GenSpec, tasks: dict[str, Task]) -> None:
        from reflectevo.backends.registry import make_backend

        self.spec = spec
        self.tasks = tasks
        self.backend = make_backend(preset_name, preset)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        episodes, stats = [], []
        for chunk in batch["items"]:
            items = [Item.from_dict(d) for d in json.loads(chunk)]
            s = Stats()
            eps = run_chunk(items, self.tasks, self.backend, self.spec, s)
            episodes.append(json.dumps(eps, ensure_ascii=False))
            stats.append(json.dumps({k: v for k, v in s.__dict__.items() if k != "seconds"}))
        return {"episodes": episodes, "stats": stats}


@contextmanager
def ray_session(address: str = "", **init_kwargs: Any) -> Iterator[Any]:
    """Use the running Ray if there is one (left running); else start or join one and shut it down after.

    `address` "" starts a local Ray on this machine; "auto" joins the cluster this node belongs to;
    "ray://head:10001" connects through Ray Client. On a cluster the driver's `reflectevo` package is
    shipped to the workers (`runtime_env.py_modules`), so they run the same code; its dependencies
    (torch, transformers, ...) must be installed on the nodes.
    """
    try:
        import ray
    except ImportError:
        raise ReflectEvoError("generate.engine: ray needs Ray Data: pip install 'reflectevo[ray]' "
                              "(or 'ray[data]>=2.49')") from None
    if ray.is_initialized():
        yield ray
        return
    kwargs = dict(init_kwargs)
    if address:
        import reflectevo

        kwargs.setdefault("runtime_env", {"py_modules": [reflectevo], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    else:
        kwargs.setdefault("include_dashboard", False)
    try:
        ray.init(address=address or None, **kwargs)
    except (ConnectionError, ValueError) as e:  # ValueError: ray:// without the ray[client] extra
        hint = ""
        if "Authentication" in type(e.__cause__).__name__:
            hint = (" The cluster uses token authentication: run with RAY_AUTH_MODE=token and the cluster's token "
                    "in RAY_AUTH_TOKEN or ~/.ray/auth_token.")
        raise ReflectEvoError(f"generate.ray_address {address!r}: cannot use the Ray cluster ({e}).{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _actor_resources(ray: Any, concurrency: int, backend: str) -> dict[str, float]:
    """One GPU per actor where the cluster has a GPU for each; fewer GPUs than actors: the transformers backend
    shares them (an equal fraction each, as `reflectevo.devices` shares them round-robin), vllm stops with one
    line (an engine takes most of its GPU, so a second one on it fails). No GPU: an even share of the cores
    (at most one node's).

    An `openai` backend only sends requests to a server, so its actors take one core and no GPU."""
    import math

    if backend == "openai":
        return {"num_cpus": 1}
    gpus = ray.cluster_resources().get("GPU", 0)
    actors = max(concurrency, 1)
    if gpus >= actors:
        return {"num_gpus": 1, "num_cpus": 1}
    if gpus >= 1:
        if backend == "vllm":
            raise ReflectEvoError(f"generate.workers: {actors} Ray actors but the cluster has {gpus:g} GPUs; with backend "
                                  f"vllm each actor needs a GPU of its own (a second engine does not fit): set "
                                  f"generate.workers <= {int(gpus)}")
        return {"num_gpus": 1 / math.ceil(actors / int(gpus)), "num_cpus": 1}
    total = ray.cluster_resources().get("CPU", 1)
    per_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=total)
    return {"num_cpus": max(1, int(min(per_node, total // actors)))}


def actor_pool(ray: Any, concurrency: int, n_rows: int) -> Any:
    """A fixed pool of `concurrency` actors (at most one per chunk): `compute=ActorPoolStrategy(size=n)`,
    the form Ray Data documents since `map_batches(concurrency=n)` was deprecated in Ray 2.51
    (ray/data/_internal/util.py `get_compute_strategy`)."""
    return ray.data.ActorPoolStrategy(size=max(1, min(concurrency, n_rows)))


def generate_ray(items: Sequence[Item], tasks: dict[str, Task], preset_name: str, preset: ModelPreset,
                 spec: GenSpec, raw_dir: Path, batch_size: int = 64, concurrency: int = 1, address: str = "",
                 progress: bool = True) -> tuple[list[dict], Stats]:
    """Compute the episodes of `items` missing from `raw_dir` on Ray; return all of them in item order.

    Same contract as `generation.generate`: reuse by key, journal as chunks arrive, Ray (and the
    model) only started when something is missing.
    """
    existing, keys, todo = plan(items, tasks, spec, raw_dir)
    stats = Stats(reused=len(items) - len(todo))
    t0 = time.perf_counter()
    if todo:
        wanted = {k for k in keys if k not in existing}
        chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
        rows = [{"items": json.dumps([it.to_dict() for it in c], ensure_ascii=False)} for c in chunks]
        used = {it.task: tasks[it.task] for it in todo}
        with ray_session(address) as ray, Journal(raw_dir / JOURNAL) as journal:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = progress
            ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                EpisodeWorker, batch_size=1, compute=actor_pool(ray, concurrency, len(rows)),
                fn_constructor_kwargs={"preset_name": preset_name, "preset": preset, "spec": spec, "tasks": used},
                **_actor_resources(ray, min(concurrency, len(rows)), preset.backend))
            for row in ds.iter_rows():
                eps = json.loads(row["episodes"])
                foreign = [ep["episode_id"] for ep in eps if ep["episode_id"] not in wanted]
                if foreign:
                    raise ReflectEvoError(f"ray engine: a worker returned episodes {foreign[:3]} that were not asked "
                                          "for (workers run other reflectevo code or other task options?)")
                journal.append_batch(eps)
                for ep in eps:
                    existing[ep["episode_id"]] = ep
                for k, v in json.loads(row["stats"]).items():
                    if isinstance(v, (int, float)) and hasattr(stats, k):
                        setattr(stats, k, getattr(stats, k) + v)
        missing = [k for k in wanted if k not in existing]
        if missing:
            raise ReflectEvoError(f"ray engine: {len(missing)} episodes never came back (e.g. {missing[0]}); "
                                  f"finished ones are kept in {raw_dir / JOURNAL} and the next run resumes")
    stats.seconds = time.perf_counter() - t0
    return [existing[k] for k in keys], stats


__all__ = ["EpisodeWorker", "actor_pool", "generate_ray", "ray_session"]
