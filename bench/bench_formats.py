"""On-disk format of data/raw, chosen by measurement: size, write and read speed, loading.

    .venv/bin/python bench/bench_formats.py [--episodes 4600]

The same episodes (the scripted backend, the paper's budgets: 512-token trials and reflections, k = 3)
written as: today's JSONL, gzip JSONL, zstd JSONL (pyarrow's codec), Parquet + zstd with the record as
JSON text (what `reflectevo.episodes.shards` writes), and Parquet + zstd with the nested schema pyarrow infers.
Read = every record back as a dict. Also: pandas and `datasets` loading each file. Writes
bench/results/formats.json.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

app = typer.Typer(add_completion=False)


def _episodes(n: int, work: Path, base_items: Path) -> list[dict]:
    import dataclasses

    from reflectevo.backends.registry import backend_sampler, make_backend
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params
    from reflectevo.generation.run import generate
    from reflectevo.generation.keys import make_spec
    from reflectevo.models.fingerprint import model_fingerprint
    from reflectevo.tasks.items import load_items

    params = read_params(ROOT / "params.yaml")
    name, preset = load_preset(params, "scripted")
    items, tasks = load_items(base_items)
    items = [dataclasses.replace(items[i % len(items)], id=f"{items[i % len(items)].id}-x{i}",
                                 question=f"{items[i % len(items)].question} (case {i})") for i in range(n)]
    cfg = dataclasses.replace(load_section(params, "generate"), max_new_tokens_trial=512, max_new_tokens_reflection=512)
    spec = make_spec(model_fingerprint(name, preset), preset.dtype, cfg, sampler=backend_sampler("scripted"))
    eps, _ = generate(items, tasks, lambda: make_backend(name, preset), spec, work / "gen", chunk_size=256,
                      progress=False)
    return eps


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - t0, 3), out


@app.command()
def main(episodes: int = 4600, out: Path = ROOT / "bench/results/formats.json",
         base_items: Path = typer.Option(ROOT / "data/sources/train.jsonl", help="train items to clone")) -> None:
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reflectevo.jsonio import dumps
    from reflectevo.episodes.shards import ShardWriter, iter_episodes

    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    eps = _episodes(episodes, work, base_items)
    files = {"jsonl": work / "a.jsonl", "jsonl.gz": work / "a.jsonl.gz", "jsonl.zst": work / "a.jsonl.zst",
             "parquet-zstd (record as JSON, ours)": work / "ours", "parquet-zstd (nested schema)": work / "nested.parquet"}

    def w_jsonl():
        with open(files["jsonl"], "w", encoding="utf-8") as fh:
            fh.writelines(dumps(e) + "\n" for e in eps)

    def w_gz():
        with gzip.open(files["jsonl.gz"], "wb", compresslevel=6) as fh:
            for e in eps:
                fh.write(orjson.dumps(e) + b"\n")

    def w_zst():
        with pa.CompressedOutputStream(str(files["jsonl.zst"]), "zstd") as fh:
            for e in eps:
                fh.write(orjson.dumps(e) + b"\n")

    def w_ours():
        with ShardWriter(files["parquet-zstd (record as JSON, ours)"], 50000) as w:
            w.extend(eps)
            w.commit()

    def w_nested():
        pq.write_table(pa.Table.from_pylist(eps), files["parquet-zstd (nested schema)"], compression="zstd",
                       row_group_size=256)

    def r_jsonl():
        with open(files["jsonl"], "rb") as fh:
            return sum(1 for line in fh if json.loads(line))

    def r_gz():
        with gzip.open(files["jsonl.gz"]) as fh:
            return sum(1 for line in fh if orjson.loads(line))

    def r_zst():
        with pa.CompressedInputStream(pa.OSFile(str(files["jsonl.zst"])), "zstd") as fh:
            return sum(1 for line in fh.read().splitlines() if orjson.loads(line))

    def r_ours():
        return sum(1 for _ in iter_episodes(files["parquet-zstd (record as JSON, ours)"]))

    def r_nested():
        f = pq.ParquetFile(files["parquet-zstd (nested schema)"])
        return sum(len(b.to_pylist()) for b in f.iter_batches(batch_size=256))

    def size(p: Path) -> int:
        return sum(q.stat().st_size for q in p.glob("episodes-*")) if p.is_dir() else p.stat().st_size

    res: dict = {"episodes": episodes, "recipe": "models.scripted, k=3, max_new_tokens 512/512", "formats": {}}
    writers = [w_jsonl, w_gz, w_zst, w_ours, w_nested]
    readers = [r_jsonl, r_gz, r_zst, r_ours, r_nested]
    for (name, path), w, r in zip(files.items(), writers, readers):
        tw, _ = _timed(w)
        tr, n = _timed(r)
        assert n == episodes, (name, n)
        res["formats"][name] = {"bytes": size(path), "write_s": tw, "read_s": tr}
    base = res["formats"]["jsonl"]["bytes"]
    for v in res["formats"].values():
        v["ratio_vs_jsonl"] = round(v["bytes"] / base, 4)

    import pandas as pd

    shard = next(files["parquet-zstd (record as JSON, ours)"].glob("episodes-*"))
    loads = {"pandas jsonl.gz": lambda: len(pd.read_json(files["jsonl.gz"], lines=True)),
             "pandas parquet (ours)": lambda: len(pd.read_parquet(shard)),
             "pandas parquet (nested)": lambda: len(pd.read_parquet(files["parquet-zstd (nested schema)"]))}
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    import datasets

    datasets.disable_progress_bars()
    for name, f in (("jsonl.gz", files["jsonl.gz"]), ("jsonl.zst", files["jsonl.zst"])):
        loads[f"datasets {name}"] = (lambda f=f: len(datasets.load_dataset("json", data_files=str(f), split="train")))
    loads["datasets parquet (ours)"] = lambda: len(datasets.load_dataset("parquet", data_files=str(shard), split="train"))
    loads["datasets parquet (nested)"] = lambda: len(datasets.load_dataset(
        "parquet", data_files=str(files["parquet-zstd (nested schema)"]), split="train"))
    res["loading"] = {}
    for name, fn in loads.items():
        try:
            t, n = _timed(fn)
            res["loading"][name] = {"s": t, "rows": n}
        except Exception as e:  # noqa: BLE001 - a loader that cannot read the format is a finding
            res["loading"][name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    out.write_text(json.dumps(res, indent=2) + "\n")
    typer.echo(json.dumps(res, indent=1))
    import shutil

    shutil.rmtree(work)


if __name__ == "__main__":
    app()
