"""Do two pipeline runs agree? Compares two project folders after `dvc repro` (e.g. the copies that
bench/bench_repro.py --work DIR leaves: two versions of the code on the same params and machine):

    .venv/bin/python bench/compare_runs.py /tmp/runs/old /tmp/runs/new --out bench/results/old-vs-new.json

- every metrics JSON under metrics/, field by field, with timing fields left out (seconds, rates, dates);
- every curated set (data/curated/*.jsonl) and the sources, row by row;
- the predictions (data/eval/predictions.jsonl) per (system, item), whatever their order in the file.
Writes what differs (at most a few examples per file) and a count of what is identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

TIMING = ("seconds", "per_s", "wall", "elapsed", "date", "time", "runtime", "flos", "cpu")


def untimed(x: Any) -> Any:
    """`x` without the fields that measure time (they differ between any two runs)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if not any(t in k.lower() for t in TIMING)}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Where two JSON values differ: `path: old != new` (a key on one side only is named too)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                yield f"{path}.{k}: only in {'the first' if k in a else 'the second'}"
            else:
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b)):
            yield from differences(u, v, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {str(a)[:100]} != {str(b)[:100]}"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(a: Path, b: Path, examples: int = 6) -> dict[str, Any]:
    out: dict[str, Any] = {"first": str(a), "second": str(b), "identical": [], "differ": {}, "missing": []}

    def record(name: str, diffs: list[str]) -> None:
        if diffs:
            out["differ"][name] = {"count": len(diffs), "examples": diffs[:examples]}
        else:
            out["identical"].append(name)

    for f in sorted(a.glob("metrics/**/*.json")):
        g = b / f.relative_to(a)
        if not g.exists():
            out["missing"].append(str(f.relative_to(a)))
            continue
        record(str(f.relative_to(a)), list(differences(untimed(json.loads(f.read_text())),
                                                      untimed(json.loads(g.read_text())))))
    for f in sorted([*a.glob("data/curated/*.jsonl"), *a.glob("data/sources/*.jsonl")]):
        g = b / f.relative_to(a)
        if not g.exists():
            out["missing"].append(str(f.relative_to(a)))
            continue
        record(str(f.relative_to(a)), list(differences(_rows(f), _rows(g))))
    pred = Path("data/eval/predictions.jsonl")
    if (a / pred).exists() and (b / pred).exists():
        pa = {(r["system"], r["item_id"]): r for r in _rows(a / pred)}
        pb = {(r["system"], r["item_id"]): r for r in _rows(b / pred)}
        diffs = [f"{k}: only in one run" for k in sorted(set(pa) ^ set(pb))]
        diffs += [d for k in sorted(set(pa) & set(pb)) for d in differences(pa[k], pb[k], f"{k}")]
        record(f"{pred} (per system and item)", diffs)
        order = [list(dict.fromkeys(r["system"] for r in _rows(x / pred))) for x in (a, b)]
        if order[0] != order[1]:
            out["system_order"] = {"first": order[0], "second": order[1]}
    return out


def main(first: Path, second: Path, out: Path = typer.Option(None, help="write the comparison as JSON")) -> None:
    result = compare(first, second)
    typer.echo(f"identical: {len(result['identical'])} files; differ: {len(result['differ'])}; "
               f"missing in the second: {len(result['missing'])}")
    for name, d in result["differ"].items():
        typer.echo(f"  {name}: {d['count']} difference(s), e.g. {d['examples'][0]}")
    if out is not None:
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    typer.run(main)
