"""Stage `generate`: ReflectEvo episodes on the train split -> data/raw/episodes-*.parquet.

    dvc repro generate
    python stages/generate.py --params params.yaml --sources data/sources/train.jsonl --out data/raw
    python stages/generate.py ... --shard 1/4      # one worker's slice (what `generate.workers: 4` runs)

Trial 1 (greedy) -> verify -> k reflections under demand instructions on failures -> trial 2 ->
verify. Reuses every episode already in data/raw with the same key (DVC `persist: true`), resumes an
interrupted run from its journal(s), and writes a summary to metrics/generate.json. With `--adapters
models/<setting>` a trained setting's adapters write the reflections and retries (trial 1 stays the base
model's; reflectevo/adapters.py), and the episode keys hold their content hashes. With
`generate.workers: N` it runs N worker processes on disjoint, balanced slices (each on one of the GPUs
this process sees, `reflectevo.generation.devices`; a vllm preset needs a GPU per worker) and merges their
journals. Reads `generate` and `models.<model>` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), sources: Path = Path("data/sources/train.jsonl"),
         out: Path = Path("data/raw"), summary: Path = Path("metrics/generate.json"),
         progress: bool = True, shard: str = typer.Option(None, help="i/N: generate only worker i's slice"),
         adapters: Path = typer.Option(None, help="a trained setting's folder (e.g. models/one_stage): its adapters "
                                       "write the reflections and retries (reflectevo.adapters)")) -> None:
    from reflectevo.generation.stage import run_generate

    run_generate(params, sources, out, summary, Path(__file__).resolve(), progress=progress, shard=shard,
                 adapters=adapters, echo=typer.echo)


if __name__ == "__main__":
    app()
