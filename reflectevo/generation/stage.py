"""The generate stage's work (`stages/generate.py` and self-evolution's generate step call it): stream the train
items, compute the missing episodes (in this process, in `generate.workers` worker processes, or through Ray),
write the shards and metrics/generate.json; or import a published file (`generate.import_path`)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from reflectevo.adapters import generation_adapters
from reflectevo.backends.registry import backend_dtype, backend_sampler
from reflectevo.episodes.record import check_episode
from reflectevo.episodes.shards import check_shards, shard_files
from reflectevo.errors import ReflectEvoError
from reflectevo.generation.backends import build_phase_backends
from reflectevo.generation.episodes import Stats, samples_per_item
from reflectevo.generation.keys import make_spec, shard_slice
from reflectevo.generation.run import generate_keys, iter_wanted, write_shards
from reflectevo.generation.summary import Summary
from reflectevo.jsonio import write_json
from reflectevo.models.fingerprint import model_fingerprint
from reflectevo.models.load import check_available
from reflectevo.config.params import stage_params
from reflectevo.progress import announce, model_label, plural
from reflectevo.tasks.items import count_items, iter_items


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ReflectEvoError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ReflectEvoError(f"--shard {text}: need 0 <= i < N")
    return i, n


def run_workers(n: int, script: Path, argv: list[str], raw: Path, backend: str = "transformers") -> dict:
    """Start n copies of the generate stage script (`script`) with --shard i/n, each on one of this process's
    GPUs; wait; return their summed run costs."""
    from reflectevo.generation.devices import worker_devices

    devices = worker_devices(n, os.environ.get("CUDA_VISIBLE_DEVICES"), _gpu_count(), backend)
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        else:  # CPU: split the cores instead of oversubscribing them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        procs.append(subprocess.Popen([sys.executable, str(script), *argv, "--shard", f"{i}/{n}", "--no-progress"], env=env))
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise ReflectEvoError(f"generate workers {failed} of {n} failed; finished episodes are kept in {raw}/journal-*.jsonl "
                              "and the next run resumes from them")
    total: dict = {}
    for i in range(n):
        cost_file = raw / f".cost-{i}-of-{n}.json"
        for k, v in json.loads(cost_file.read_text()).items():
            if isinstance(v, (int, float)) and k not in ("episodes_per_s", "new_tokens_per_s", "seconds"):
                total[k] = total.get(k, 0) + v
        cost_file.unlink()
    return total


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def import_episodes(src: Path, out: Path, summary: Path, shard_size: int, limit: int = 0, echo=print) -> None:
    """`generate.import_path`: stream an imported file into data/raw's shards (replacing whatever was
    there: imported and generated episodes never share data/raw, and their keys never coincide)."""
    from reflectevo.compat.raw import iter_imported

    t0 = time.perf_counter()
    acc = Summary()

    def checked():
        for where, ep in iter_imported(src):
            check_episode(ep, where)
            yield ep

    write_shards(out, itertools.islice(checked(), limit or None), shard_size, on_episode=acc.add)
    stats = Stats(reused=0, computed=0, seconds=time.perf_counter() - t0)
    s = acc.result(stats)
    s["run"].update(engine="import", imported_from=str(src))
    write_json(summary, {"model": None, "imported_from": str(src), **s})
    echo(f"generate: imported {s['items']} episodes from {src} (trial-1 correct {s['trial1_correct']}, "
         f"reflections {s['reflections']}), {s['run']['seconds']} s")


def describe(n_items: int, cfg, model: str, adapters: str | None = None) -> str:
    """The stage line: what runs, on how many items, with which model (`reflectevo.progress.announce`)."""
    k = samples_per_item(cfg)
    if cfg.reflect:
        who = "failed trial 1s" if cfg.protocol == "oracle" else "every trial 1, not told if it failed"
        steps = f"trial → reflect (k={k}, on {who}) → retry"
    else:
        steps = f"trial → retry without reflection (k={k})" if k > 1 else "trial → retry without reflection"
    rounds = f", {cfg.rounds} rounds" if cfg.rounds > 1 else ""
    by = f"; reflections and retries by {adapters}'s adapters" if adapters else ""
    return f"{plural(n_items, 'item')} × {steps}{rounds} on {model}{by}"


def run_generate(params: Path, sources: Path, out: Path, summary: Path, worker_script: Path, progress: bool = True,
                 shard: str | None = None, adapters: Path | None = None, echo=print) -> None:
    """The generate stage: episodes of `sources` into `out` (reused by key, resumed from a journal), the summary
    into `summary`. `shard` ("i/N"): only worker i's slice, into its own journal (the parent merges);
    `adapters`: a trained setting's folder whose adapters write the reflections and retries; `worker_script`:
    the stage script that `generate.workers` > 1 starts once per worker (with `--shard i/N`)."""
    name, preset, cfg = stage_params(params, "generate")
    if cfg.import_path:   # the published data instead of a model: no generation, no model loaded
        return import_episodes(Path(cfg.import_path), out, summary, cfg.shard_size, cfg.limit, echo)
    check_available(name, preset)  # an unreachable hub preset: one line now, before data/raw is touched
    tasks: dict = {}
    n_items = count_items(sources, cfg.limit)
    if not n_items:
        raise ReflectEvoError(f"{sources}: no train items to generate from")
    if shard_files(out):   # an earlier run's episodes (reused by key): their shards checked before any model
        check_shards(out)

    def items(part: tuple[int, int] | None = None):
        """The sources streamed (never all in memory), up to `limit`, or worker i of n's every n-th item."""
        stream = itertools.islice(iter_items(sources, tasks), cfg.limit or None)
        return stream if part is None else shard_slice(stream, part)

    phase_adapters = generation_adapters(adapters, name) if adapters is not None else None
    spec = make_spec(model_fingerprint(name, preset), preset.dtype, cfg,
                     sampler=backend_sampler(preset.backend, where=f"models.{name}.backend"),
                     adapters=phase_adapters.key() if phase_adapters else None,
                     resolved_dtype=backend_dtype(preset, where=f"models.{name}.backend"))

    if shard is None:
        announce("generate", describe(n_items, cfg, model_label(name, preset, spec.resolved_dtype),
                                      adapters=str(adapters) if phase_adapters is not None else None))

    def make_backend(name, preset):  # the base, or one backend per phase with the setting's adapters
        return build_phase_backends(name, preset, phase_adapters)

    # items per chunk (one generate call per phase and chunk): the transformers backend batches gen_batch_size
    # prompts; a backend that schedules its own batches (vllm: `chunk_items`) gets a phase of thousands
    from reflectevo.backends.registry import BACKENDS

    chunk = max(preset.gen_batch_size, 8, getattr(BACKENDS.get(preset.backend), "chunk_items", 0))
    part = parse_shard(shard)
    if part is not None:  # worker: its slice into its own journal; the parent merges
        _, stats = generate_keys(items(part), tasks, lambda: make_backend(name, preset), spec, out,
                                 chunk_size=chunk, progress=progress, shard=part)
        write_json(out / f".cost-{part[0]}-of-{part[1]}.json", stats.to_dict())
        return

    t0 = time.perf_counter()
    extra = None
    if cfg.engine == "ray" and phase_adapters is not None:
        raise ReflectEvoError("generate.engine: ray builds the base model only; use engine: local with --adapters")
    if cfg.engine == "ray":  # a Ray Data pipeline of `workers` actors (local Ray or generate.ray_address)
        from reflectevo.generation.ray import generate_ray

        if chunk > preset.gen_batch_size:  # big chunks, but one for every actor
            chunk = max(preset.gen_batch_size, 8, min(chunk, -(-n_items // max(cfg.workers, 1))))
        episodes, stats = generate_ray(list(items()), tasks, name, preset, spec, out, batch_size=chunk,
                                       concurrency=cfg.workers, address=cfg.ray_address, progress=progress)
    elif cfg.workers > 1:
        argv = ["--params", str(params), "--sources", str(sources), "--out", str(out)]
        extra = run_workers(cfg.workers, worker_script, argv + (["--adapters", str(adapters)] if adapters is not None else []),
                            out, backend=preset.backend)

    def nothing_left():
        raise ReflectEvoError("internal: workers finished but episodes are missing")

    if cfg.engine != "ray":  # streams: the journal, then the shards from it, one chunk in memory at a time
        keys, stats = generate_keys(items(), tasks, (lambda: make_backend(name, preset)) if extra is None else nothing_left,
                                    spec, out, chunk_size=chunk, progress=progress, total=n_items)
        episodes = iter_wanted(out, keys)
    if extra is not None:
        stats = Stats(reused=extra.get("reused", 0), computed=extra.get("computed", 0),
                      generations=extra.get("generations", 0), prompt_tokens=extra.get("prompt_tokens", 0),
                      prefilled_tokens=extra.get("prefilled_tokens", 0), new_tokens=extra.get("new_tokens", 0),
                      seconds=time.perf_counter() - t0)
    acc = Summary()
    write_shards(out, episodes, cfg.shard_size, on_episode=acc.add)
    s = acc.result(stats)
    s["run"]["workers"] = cfg.workers
    s["run"]["engine"] = cfg.engine
    write_json(summary, {"model": name, **({"adapters": phase_adapters.record()} if phase_adapters else {}), **s})
    echo(f"generate: {s['items']} episodes ({s['run']['computed']} computed, {s['run']['reused']} reused), "
         f"trial-1 correct {s['trial1_correct']}, reflections {s['reflections']}, "
         f"fixed by reflection {s['trial2_correct']}, {s['run']['seconds']} s")
