"""Stage `generate`: ReflectEvo episodes on the train split -> data/raw/episodes-*.jsonl.

    dvc repro generate
    python stages/generate.py --params params.yaml --sources data/sources/train.jsonl --out data/raw

Trial 1 (greedy) -> verify -> k reflections under demand instructions on failures -> trial 2 ->
verify. Reuses every episode already in data/raw with the same key (DVC `persist: true`), resumes
an interrupted run from data/raw/journal.jsonl, and writes a summary to metrics/generate.json.
Reads `generate` and `models.<model>` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors, load_items, stage_params

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), sources: Path = Path("data/sources/train.jsonl"),
         out: Path = Path("data/raw"), summary: Path = Path("metrics/generate.json"),
         progress: bool = True) -> None:
    from reflectevo.backends.hf import make_backend
    from reflectevo.errors import ReflectEvoError
    from reflectevo.generation import generate, make_spec, summarize, write_shards
    from reflectevo.jsonio import write_json
    from reflectevo.models import model_fingerprint

    name, preset, cfg = stage_params(params, "generate")
    items, tasks = load_items(sources)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise ReflectEvoError(f"{sources}: no train items to generate from")
    spec = make_spec(model_fingerprint(name, preset), preset.dtype, cfg)
    episodes, stats = generate(items, tasks, lambda: make_backend(name, preset), spec, out,
                               chunk_size=max(preset.gen_batch_size, 8), progress=progress)
    write_shards(out, episodes, cfg.shard_size)
    s = summarize(episodes, stats)
    write_json(summary, {"model": name, **s})
    typer.echo(f"generate: {s['items']} episodes ({s['run']['computed']} computed, {stats.reused} reused), "
               f"trial-1 correct {s['trial1_correct']}, reflections {s['reflections']}, "
               f"fixed by reflection {s['trial2_correct']}, {s['run']['seconds']} s")


if __name__ == "__main__":
    app()
