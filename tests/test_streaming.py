"""The streaming data path: Parquet shards round trip, bounded memory, bad input, full disks, import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fuzzing import error_line
from typer.testing import CliRunner

from reflectevo.errors import ReflectEvoError
from reflectevo.generation.run import write_shards
from reflectevo.episodes.shards import episode_keys, iter_episodes, shard_files

ROOT = Path(__file__).resolve().parents[1]


def _ep(i: int, task: str = "t/a", **extra) -> dict:
    return {"episode_id": f"k{i:06d}", "item_id": str(i), "task": task, "item_hash": "h",
            "model": {"preset": "p", "source": "s", "revision": "r"}, "dtype": None, "prompt_version": "v",
            "gen": {"k": 1}, "item": {"id": str(i), "task": task, "question": f"q {i} ü 🙂", "answer": "A",
                                      "choices": ["x", "y"], "meta": {"n": i, "nested": {"1": [1.5, None]}}},
            "trial1": {"prompt": "P" * (i % 50), "completion": "c", "extracted": "B", "correct": i % 3 == 0},
            "samples": [{"sample_id": f"k{i:06d}-0", "sample_idx": 0, "demand_id": None,
                         "reflection": None if i % 5 == 0 else {"prompt": "rp", "text": "think again please"},
                         "trial2": {"prompt": "p2", "completion": "c2", "extracted": "A", "correct": True}}],
            **extra}


def test_parquet_shards_round_trip_any_record_shape(tmp_path):
    eps = [_ep(i, task="t/a" if i % 2 else "t/b") for i in range(2500)]
    eps[7]["later_rounds"] = [{"round": 2}]           # fields only some records have
    paths = write_shards(tmp_path, iter(eps), shard_size=1000)
    assert [p.name for p in paths] == [f"episodes-0000{i}-of-00003.parquet" for i in range(3)]
    assert list(iter_episodes(tmp_path)) == eps       # same records, same order, nothing lost or reshaped
    assert episode_keys(tmp_path) == {e["episode_id"] for e in eps}
    import pandas as pd
    import pyarrow.parquet as pq

    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 4     # 256 episodes a group: the read unit
    df = pd.read_parquet(paths[1])                    # the documented loaders read the shards as they are
    assert list(df.columns) == ["episode_id", "item_id", "task", "trial1_correct", "episode"]
    assert json.loads(df["episode"][0]) == eps[1000]


def test_readers_accept_the_jsonl_shards_of_earlier_versions(tmp_path):
    eps = [_ep(i) for i in range(5)]
    (tmp_path / "episodes-00000-of-00001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    (tmp_path / "journal.jsonl").write_text(json.dumps(_ep(9)) + "\n" + json.dumps(eps[0]) + "\n" + '{"torn')
    got = list(iter_episodes(tmp_path))
    assert got == eps + [_ep(9)]                      # journal after shards, a key once, the torn tail dropped
    write_shards(tmp_path, iter_episodes(tmp_path), 100)   # rewriting in place from a stream of itself
    assert [p.name for p in shard_files(tmp_path)] == ["episodes-00000-of-00001.parquet"]
    assert list(iter_episodes(tmp_path)) == got and not list(tmp_path.glob("journal*"))


def test_truncated_or_foreign_parquet_names_the_file(tmp_path):
    write_shards(tmp_path, [_ep(i) for i in range(3000)], shard_size=5000)
    (p,) = shard_files(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReflectEvoError, match=rf"{p}: not a readable Parquet file \(truncated or damaged"):
        list(iter_episodes(tmp_path))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), p)
    with pytest.raises(ReflectEvoError, match=rf"{p}: no column 'episode'"):
        list(iter_episodes(p))


def test_a_failed_write_leaves_the_previous_shards_and_the_journal(tmp_path):
    write_shards(tmp_path, [_ep(i) for i in range(10)], shard_size=4)
    before = {p.name: p.read_bytes() for p in shard_files(tmp_path)}
    (tmp_path / "journal.jsonl").write_text(json.dumps(_ep(10)) + "\n")

    def stream():                                      # the disk fills after 7 episodes
        for i in range(11):
            if i == 7:
                raise OSError(28, "No space left on device")
            yield _ep(i)

    with pytest.raises(OSError, match="No space left"):
        write_shards(tmp_path, stream(), shard_size=4)
    assert {p.name: p.read_bytes() for p in shard_files(tmp_path)} == before
    assert (tmp_path / "journal.jsonl").exists() and not list(tmp_path.glob(".episodes-*"))
    assert len(list(iter_episodes(tmp_path))) == 11    # resumable: every episode still readable


def _peak_rss_mb(code: str) -> float:
    # VmHWM is the peak of this process's own memory map; ru_maxrss is not: Linux carries the parent's
    # high-water mark across fork + exec, so a child of a large pytest process reports the parent's peak
    out = subprocess.run([sys.executable, "-c", code + "\nprint([int(l.split()[1]) for l in open('/proc/self/status')"
                          " if l.startswith('VmHWM:')][0] / 1024)"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return float(out.stdout.split()[-1])


@pytest.mark.slow
def test_reading_and_writing_shards_takes_memory_bounded_by_a_chunk_not_the_dataset(tmp_path):
    """Three times the episodes (90 -> 270 MB of records, one shard) streamed through a reader and a rewrite in
    place: the peak RSS does not grow with them; `load_episodes`, which holds them all, does (the check
    fails for code that materializes the set)."""
    def peaks(n: int) -> tuple[float, float]:
        raw = tmp_path / str(n)
        setup = (f"import os, sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                 "from test_streaming import _ep\nfrom reflectevo.generation.run import write_shards\nfrom reflectevo.episodes.shards import load_episodes\n"
                 f"from reflectevo.episodes.shards import iter_episodes\nfrom pathlib import Path\nraw = Path({str(raw)!r})\n")
        _peak_rss_mb(setup + f"write_shards(raw, ({{**_ep(i), 'pad': os.urandom(15_000).hex()}} for i in range({n})), 50000)")
        stream = _peak_rss_mb(setup + f"assert sum(1 for _ in iter_episodes(raw)) == {n}\n"     # one large shard
                              "write_shards(raw, iter_episodes(raw), 50000)")
        held = _peak_rss_mb(setup + f"assert len(load_episodes(raw)) == {n}")
        return stream, held

    (s1, h1), (s3, h3) = peaks(3000), peaks(9000)
    assert s3 - s1 < 25, (s1, s3)                       # bounded by a row group, not by the data set
    assert h3 - h1 > 100, (h1, h3)                      # what holding every episode costs


@pytest.mark.slow
def test_generate_streams_its_sources_memory_bounded_by_a_chunk(tmp_path):
    """The generate stage (scripted backend) on 2,000 vs 6,000 items whose sources carry 30 KB each (60 -> 180 MB):
    its peak RSS grows far less than the sources do (code that holds every item grows by > 100 MB)."""
    params = _params(tmp_path)
    assert runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")]).exit_code == 0
    base = [json.loads(x) for x in (tmp_path / "sources/train.jsonl").read_text().splitlines()]

    def peak(n: int) -> float:
        src = tmp_path / f"items-{n}.jsonl"
        with open(src, "w") as fh:
            for i in range(n):
                row = dict(base[i % len(base)])
                row["id"] = f"{row['id']}-c{i}"
                row["meta"] = {**row["meta"], "pad": os.urandom(15_000).hex()}
                fh.write(json.dumps(row) + "\n")
        argv = ["generate", "--params", str(params), "--sources", str(src), "--out", str(tmp_path / f"raw-{n}"),
                "--summary", str(tmp_path / f"gen-{n}.json"), "--no-progress"]
        code = (f"import runpy, sys; sys.argv = {argv!r}\n"
                "try:\n    runpy.run_path('stages/generate.py', run_name='__main__')\n"
                "except SystemExit as e:\n    assert e.code in (0, None), e.code\n")
        mb = _peak_rss_mb(code)
        assert json.loads((tmp_path / f"gen-{n}.json").read_text())["items"] == n
        return mb

    small, large = peak(2000), peak(6000)
    assert large - small < 40, (small, large)


def test_iter_json_objects_streams_in_blocks_with_the_same_lines(tmp_path):
    from reflectevo.compat.jsonstream import iter_json_objects

    objs = [{"id": i, "t": "é" * (i % 7), "s": "x\n" * (i % 3)} for i in range(60)]
    p = tmp_path / "mixed.json"
    p.write_text("\n".join(json.dumps(o, indent=2 if i % 2 else None, ensure_ascii=False)
                           for i, o in enumerate(objs)) + "\n", encoding="utf-8")
    whole = list(iter_json_objects(p))
    assert [o for _, o in whole] == objs
    for block in (1, 5, 64):                          # objects and UTF-8 characters cut by the blocks
        assert list(iter_json_objects(p, block=block)) == whole


runner = CliRunner()


def _stage(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.app


def _params(tmp_path: Path, **generate) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"] = "scripted"
    p["prepare"]["tasks"] = [{"name": "rg/chain_sum", "n_train": 40, "n_test": 2,
                              "options": {"min_terms": 2, "max_terms": 3, "max_digits": 2}}]
    p["generate"].update(generate)
    p["curate"]["judge"] = "likelihood"               # the scripted backend scores too
    out = tmp_path / ("params-import.yaml" if generate else "params.yaml")
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def test_scripted_pipeline_generate_curate_then_bad_input_writes_nothing(tmp_path):
    params = _params(tmp_path)
    assert runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")]).exit_code == 0
    gen = ["--params", str(params), "--sources", str(tmp_path / "sources/train.jsonl"), "--out", str(tmp_path / "raw"),
           "--summary", str(tmp_path / "gen.json"), "--no-progress"]
    r = runner.invoke(_stage("generate"), gen)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "gen.json").read_text())
    assert summary["items"] == 40 and summary["run"]["computed"] == 40
    assert [p.name for p in shard_files(tmp_path / "raw")] == ["episodes-00000-of-00001.parquet"]
    cur = ["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "curated"),
           "--metrics", str(tmp_path / "cur.json")]
    r = runner.invoke(_stage("curate"), cur)
    assert r.exit_code == 0, r.output
    counts = json.loads((tmp_path / "cur.json").read_text())["counts"]
    assert counts["dplus_train"] + counts["dplus_eval"] > 0 and counts["dpref_train"] + counts["dpref_eval"] > 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "curated").iterdir()}

    # an episode without trial1 in the middle of a shard: one line, file + row + field, exit 2, nothing written
    eps = list(iter_episodes(tmp_path / "raw"))
    del eps[17]["trial1"]
    write_shards(tmp_path / "raw", eps, 50000)
    r = runner.invoke(_stage("curate"), cur)
    assert r.exit_code == 2
    line = error_line(r.stderr)   # after curate's own line, one error line
    assert line.startswith(f"error: {tmp_path / 'raw/episodes-00000-of-00001.parquet'}: row 18: episode ")
    assert line.endswith("lacks the required field 'trial1'")
    assert {p.name: p.read_bytes() for p in (tmp_path / "curated").iterdir()} == before
    del eps[3]["samples"][0]["trial2"]["correct"]
    eps[17]["trial1"] = eps[16]["trial1"]
    write_shards(tmp_path / "raw", eps, 50000)
    assert "row 4: episode" in runner.invoke(_stage("curate"), cur).output
    assert "'samples[0].trial2.correct'" in runner.invoke(_stage("curate"), cur).output


def test_imported_episodes_replace_generated_ones_and_never_mix(tmp_path, shared_data):
    from reflectevo.compat.convert import convert

    raw_file = shared_data / "reflectevo/examples/example_Reflection_raw.jsonl"
    ours = tmp_path / "imported/logiqa-episodes.jsonl"
    convert(raw_file, ours, "raw", "from", task="logiqa")
    params = _params(tmp_path)
    runner.invoke(_stage("prepare"), ["--params", str(params), "--out", str(tmp_path / "sources")])
    gen = ["--params", str(params), "--sources", str(tmp_path / "sources/train.jsonl"), "--out", str(tmp_path / "raw"),
           "--summary", str(tmp_path / "gen.json"), "--no-progress"]
    assert runner.invoke(_stage("generate"), gen).exit_code == 0
    generated = episode_keys(tmp_path / "raw")
    theirs = tmp_path / "imported/logiqa_COT-generated.jsonl"   # their run.py name: the task from its prefix
    theirs.write_bytes(raw_file.read_bytes())
    for src in (ours, theirs):                         # our converted file, or theirs as published
        imp = _params(tmp_path, import_path=str(src))
        r = runner.invoke(_stage("generate"), ["--params", str(imp), *gen[2:]])
        assert r.exit_code == 0, r.output
        keys = episode_keys(tmp_path / "raw")
        assert len(keys) == 10 and not keys & generated
        assert json.loads((tmp_path / "gen.json").read_text())["run"]["engine"] == "import"
        r = runner.invoke(_stage("curate"), ["--params", str(imp), "--raw", str(tmp_path / "raw"), "--out",
                                              str(tmp_path / "curated"), "--metrics", str(tmp_path / "cur.json")])
        assert r.exit_code == 0, r.output
        dplus = [json.loads(x) for x in (tmp_path / "curated/dplus_train.jsonl").read_text().splitlines()]
        dplus += [json.loads(x) for x in (tmp_path / "curated/dplus_eval.jsonl").read_text().splitlines()]
        assert dplus and all(row["task"] == "reflectevo/logiqa" for row in dplus)
    assert runner.invoke(_stage("generate"), gen).exit_code == 0     # back to generating: only generated keys
    assert json.loads((tmp_path / "gen.json").read_text())["run"]["computed"] == 40
    assert episode_keys(tmp_path / "raw") == generated


def test_tfidf_cosines_match_scikit_learn():
    import random

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    from reflectevo.backends.scripted import _words
    from reflectevo.curation.rows import tfidf_cosines

    rng = random.Random(0)
    for _ in range(100):
        texts = [_words(rng, rng.randrange(1, 40)) + rng.choice(["", " Émile ÉCOLE", " a b", " x_y 12 3"])
                 for _ in range(rng.randrange(2, 5))]
        texts.append(texts[0])
        want = cosine_similarity(TfidfVectorizer().fit_transform(texts))
        got = tfidf_cosines(texts)
        assert all(abs(want[i, j] - got[i][j]) < 1e-9 for i in range(len(texts)) for j in range(len(texts)))


def test_metrics_cli_reads_one_stage_predictions_as_predictions():
    from reflectevo.compat.results import detect_format

    assert detect_format({"system": "one_stage", "t1_correct": False, "output": "Answer: B"}) == ("ours", "predictions")


@pytest.mark.slow
def test_hardlink_cache_with_persisted_shards_keeps_the_cache_intact(tmp_path):
    """The project's cache link type (hardlinks) with `persist: true` data/raw: a re-run rewrites the
    shards (DVC unprotects them first, our writer only ever replaces files) and every cache object
    still matches its hash; the outputs are stored once."""
    import configparser
    import hashlib

    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}

    def sh(*cmd):
        return subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc/config")
    (tmp_path / ".dvc/config").write_text(f'[cache]\n    type = {cfg.get("cache", "type")}\n')
    p = yaml.safe_load(_params(tmp_path).read_text())
    p["prepare"]["tasks"][0]["n_train"] = 30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    py, st = sys.executable, ROOT / "stages"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": f"{py} {st}/prepare.py --params params.yaml --out sources", "params": ["prepare"],
                    "outs": ["sources"]},
        "generate": {"cmd": f"{py} {st}/generate.py --params params.yaml --sources sources/train.jsonl --out raw "
                            "--summary gen.json --no-progress", "deps": ["sources/train.jsonl"],
                     "params": ["generate"], "outs": [{"raw": {"persist": True}}, {"gen.json": {"cache": False}}]},
        "curate": {"cmd": f"{py} {st}/curate.py --params params.yaml --raw raw --out curated --metrics cur.json",
                   "deps": ["raw"], "params": ["curate"], "outs": ["curated", {"cur.json": {"cache": False}}]}}}))
    sh(py, "-m", "dvc", "repro", "-q")
    first = {q.name for q in (tmp_path / "raw").iterdir()}
    assert all(q.stat().st_nlink == 2 for q in (tmp_path / "raw").iterdir())   # stored once: a hardlink
    p["generate"]["k"] = 2                                                  # new keys: every episode again
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    sh(py, "-m", "dvc", "repro", "-q")
    assert json.loads((tmp_path / "gen.json").read_text())["run"]["computed"] == 30
    assert "up to date" in sh(py, "-m", "dvc", "status").stdout
    assert {q.name for q in (tmp_path / "raw").iterdir()} == first and not list((tmp_path / "raw").glob("journal*"))
    objects = [q for q in (tmp_path / ".dvc/cache/files/md5").rglob("*") if q.is_file()]
    assert len(objects) > 4
    for obj in objects:                                                      # nothing edited in place
        want = obj.parent.name + obj.name.removesuffix(".dir")
        assert hashlib.md5(obj.read_bytes()).hexdigest() == want, obj
