"""The curate stage's work (`stages/curate.py` and self-evolution's curate step call it).

Streams the shards one episode at a time (`reflectevo.episodes.shards.iter_episodes`); peak memory does not grow
with the number of episodes. An episode lacking a field curate needs stops it with one line naming the file,
the row and the field, before any output is replaced: every set goes to a temporary file that replaces the
old one only once all episodes were read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectevo.config.loader import to_dict
from reflectevo.config.params import read_params, stage_params
from reflectevo.config.presets import load_preset
from reflectevo.curation.rows import curate_stream
from reflectevo.datacard import curated_card
from reflectevo.diagnostics import EpisodeDiagnostics
from reflectevo.episodes.record import check_episode
from reflectevo.episodes.shards import check_shards, iter_episodes
from reflectevo.errors import ReflectEvoError
from reflectevo.jsonio import JsonlWriter, write_json, write_text
from reflectevo.progress import announce

SETS = ("dplus", "dpm", "dpref")
LABELS = {"dplus": "D+", "dpm": "D±", "dpref": "Dpref"}


def lazy_judge(params: Path, cfg: Any):
    """`curate.judge` as a `LazyJudge` (None for `none`): likelihood / self = the generating model (params
    `model`), any other name a preset; any backend (transformers, vllm, openai: an endpoint). The preset is
    checked and its model found now (no load); the model is loaded at the first pair to judge."""
    if cfg.judge == "none":
        return None
    from reflectevo.backends.registry import make_backend
    from reflectevo.judge import JUDGES, LazyJudge
    from reflectevo.models.load import check_available

    raw = read_params(params)
    own = cfg.judge in JUDGES
    jname, jpreset = load_preset(raw) if own else load_preset(raw, cfg.judge, where="curate.judge")
    check_available(jname, jpreset)   # an unreachable judge model: one line in seconds, nothing loaded
    return LazyJudge(cfg.judge if own else "preset", jname, jpreset, make_backend)


def run_curate(params: Path, raw: Path, out: Path, metrics: Path, headline: Path | None = None) -> list[str]:
    """Curate the shards under `raw` into `out` ({dplus,dpm,dpref}_{train,eval}.jsonl, stats.json, README.md)
    and write `metrics` (and the flat `headline` metrics file when given). Returns the lines to print."""
    _, _, cfg = stage_params(params, "curate", with_model=False)
    judge_fn = lazy_judge(params, cfg)
    judge_info = judge_fn.info if judge_fn is not None else None
    check_shards(raw)                    # every shard's columns and first episodes, before any model
    announce("curate", f"{raw} → D+ (fixing reflections), D± (fixing vs failing), Dpref (pairs of fixing ones, "
                       f"{cfg.judge} judge); {cfg.eval_fraction:.0%} of items held out")
    writers = {f"{kind}_{split}": JsonlWriter(out / f"{kind}_{split}.jsonl")
               for kind in SETS for split in ("train", "eval")}
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
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        from reflectevo.metrics_summary import curate_headline

        write_json(headline, curate_headline(full))
    rows = ", ".join(f"{LABELS[kind]} {counts[f'{kind}_train']} + {counts[f'{kind}_eval']}" for kind in SETS)
    drops = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in result["drops"].items()) or "none"
    return [f"curate: {rows} rows (train + held out); dropped: {drops} -> {out}"]
