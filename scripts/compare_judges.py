"""Compare the two offline Dpref judges on the same pairs of fixing reflections (docs/default-run-search.md).

    python scripts/compare_judges.py [--raw data/raw] [--out bench/results/judges.json]

Builds the pairs curate builds (same filters, dedup and pair cap, train and eval items), then judges each
with `likelihood` (log-probability of the right answer in each retry) and `self` (the generating model
asked in both orders; a verdict only when both orders agree). Reports how many pairs each judge ranks,
how often they agree, and the self-judge's position bias (how often it answers A).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import typer


def main(raw: Path = Path("data/raw"), params: Path = Path("params.yaml"),
         out: Path = Path("bench/results/judges.json")) -> None:
    from reflectevo.backends.registry import make_backend
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section, read_params
    from reflectevo.curation.rows import near_duplicates, reflection_problem
    from reflectevo.episodes.record import attempt
    from reflectevo.episodes.shards import iter_episodes, shard_files
    from reflectevo.judge import Comparison, judge, likelihood_judge

    p = read_params(params)
    cfg = load_section(p, "curate")
    name, preset = load_preset(p)
    comps = []
    for shard in shard_files(raw):
        for ep in iter_episodes(shard):
            if ep["trial1"]["correct"]:
                continue
            kept = [s for s in ep["samples"] if s.get("reflection") and not reflection_problem(s["reflection"]["text"], cfg)]
            for j in sorted(near_duplicates([s["reflection"]["text"] for s in kept], cfg.dedup_threshold), reverse=True):
                del kept[j]
            good = [s for s in kept if s["trial2"]["correct"]]
            for a, b in list(itertools.combinations(good, 2))[: cfg.max_pairs_per_item]:
                comps.append(Comparison(ep["item"]["question"], attempt(ep["trial1"]), a["reflection"]["text"],
                                        b["reflection"]["text"], (a["trial2"]["prompt"], a["trial2"]["completion"]),
                                        (b["trial2"]["prompt"], b["trial2"]["completion"])))
    backend = make_backend(name, preset)
    lik = likelihood_judge(comps, backend)
    slf = judge(comps, backend)
    both = [(x["winner"], y["winner"]) for x, y in zip(lik, slf) if x["winner"] is not None and y["winner"] is not None]
    first_votes = [v for r in slf for v in r["votes"][:1]]
    result = {"model": name, "pairs": len(comps),
              "likelihood": {"ranked": sum(r["winner"] is not None for r in lik)},
              "self": {"ranked": sum(r["winner"] is not None for r in slf),
                       "answers_A_in_forward_order": sum(v.startswith("A") for v in first_votes),
                       "answers_B_in_forward_order": sum(v.startswith("B") for v in first_votes)},
              "both_ranked": len(both), "agree": sum(a == b for a, b in both)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    typer.run(main)
