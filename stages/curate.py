"""Stage `curate`: raw episodes -> D+ and D± (train/eval split by item) + statistics + data card.

Streams the shards one episode at a time (`reflectevo.episodes.shards.iter_episodes`); peak memory does not grow
with the number of episodes. An episode lacking a field curate needs stops it with one line naming the
file, the row and the field (exit 2), before any output is replaced.

    dvc repro curate
    python stages/curate.py --params params.yaml --raw data/raw --out data/curated

Reads `curate` in params.yaml. An empty D+ is a normal outcome for a tiny model: it is recorded, and
the later stages record "no training data". `curate.judge` ranks fixing reflections into Dpref:
`likelihood` (the generating model's log-probability of the right answer in each fixing retry; offline,
no generation), `self` (the generating model judges each pair in both orders), or a model preset (an
`openai` preset judges through an endpoint, base URL and key from the environment, see
reflectevo/backends/openai_backend.py). The judge is recorded in every Dpref row, `stats.json` and the card.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.config.params import stage_params
from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


def lazy_judge(params: Path, cfg):
    """`curate.judge` as a `LazyJudge` (None for `none`): likelihood / self = the generating model (params
    `model`), any other name a preset; any backend (transformers, vllm, openai: an endpoint)."""
    if cfg.judge == "none":
        return None
    from reflectevo.backends.registry import make_backend
    from reflectevo.config.params import read_params
    from reflectevo.config.presets import load_preset
    from reflectevo.judge import JUDGES, LazyJudge

    raw = read_params(params)
    own = cfg.judge in JUDGES
    jname, jpreset = load_preset(raw) if own else load_preset(raw, cfg.judge, where="curate.judge")
    return LazyJudge(cfg.judge if own else "preset", jname, jpreset, make_backend)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), raw: Path = Path("data/raw"), out: Path = Path("data/curated"),
         metrics: Path = Path("metrics/curate.json"),
         headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    from reflectevo.config.loader import to_dict
    from reflectevo.curation import curate_stream
    from reflectevo.episodes.record import check_episode
    from reflectevo.datacard import curated_card
    from reflectevo.diagnostics import EpisodeDiagnostics
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import JsonlWriter, write_json, write_text
    from reflectevo.episodes.shards import check_shards, iter_episodes

    from reflectevo.progress import announce

    _, _, cfg = stage_params(params, "curate", with_model=False)
    announce("curate", f"{raw} → D+ (fixing reflections), D± (fixing vs failing), Dpref (pairs of fixing ones, "
                       f"{cfg.judge} judge); {cfg.eval_fraction:.0%} of items held out")
    judge_fn = lazy_judge(params, cfg)   # its preset checked now; its model loaded at the first pair to judge
    judge_info = judge_fn.info if judge_fn is not None else None
    check_shards(raw)                    # every shard's columns and first episodes, before any model
    # Streams: one episode (and one judge batch) in memory; every output goes to a temporary file that
    # replaces the old one only once all episodes were read, so bad input leaves nothing half-written.
    names = [f"{kind}_{split}" for kind in ("dplus", "dpm", "dpref") for split in ("train", "eval")]
    writers = {name: JsonlWriter(out / f"{name}.jsonl") for name in names}
    diagnostics = EpisodeDiagnostics()
    first: dict = {}

    def episodes():
        for where, ep in iter_episodes(raw, where=True, journals=False):
            check_episode(ep, where)
            diagnostics.add(ep)
            if not first:
                first.update(model=ep["model"], prompt_version=ep["prompt_version"], gen=ep["gen"])
            yield ep

    try:
        result = curate_stream(episodes(), cfg, lambda kind, split, row: writers[f"{kind}_{split}"].write(row),
                               judge=judge_fn, judge_info=judge_info)
        if not first:
            raise ReflectEvoError(f"{raw}: the shards hold no episodes; run the generate stage first")
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    counts = {name: w.commit() for name, w in writers.items()}
    info = {"generator": first["model"], "prompt_version": first["prompt_version"], "gen_params": first["gen"],
            "params": to_dict(cfg), "counts": counts, "drops": dict(result["drops"]), "stats": result["stats"],
            "diagnostics": diagnostics.result(),
            "judge": judge_info,
            "notes": {} if judge_fn else {"dpref": "empty: set curate.judge (likelihood, self or a model preset) "
                                                   "to rank fixing reflections"}}
    write_json(out / "stats.json", info)
    write_text(out / "README.md", curated_card(info))
    full = {"counts": counts, "drops": dict(result["drops"]),
            "pct_correct_after_reflection": result["stats"]["total"]["pct_correct_after_reflection"]}
    write_json(metrics, full)
    rows = ", ".join(f"{label} {counts[f'{kind}_train']} + {counts[f'{kind}_eval']}"
                     for kind, label in (("dplus", "D+"), ("dpm", "D±"), ("dpref", "Dpref")))
    drops = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in result["drops"].items()) or "none"
    typer.echo(f"curate: {rows} rows (train + held out); dropped: {drops} -> {out}")
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import curate_headline

        write_json(headline, curate_headline(full))


if __name__ == "__main__":
    app()
