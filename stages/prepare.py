"""Stage `prepare`: task items -> data/sources/{train,test}.jsonl in the unified schema.

    dvc repro prepare
    python stages/prepare.py --params params.yaml --out data/sources

Train and test are disjoint per task (no shared id or question text). Reads `prepare` in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reflectevo.config.params import stage_params
from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False)


@app.command()
@friendly_errors
def main(params: Path = Path("params.yaml"), out: Path = Path("data/sources")) -> None:
    from reflectevo.config.loader import to_dict
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json, write_jsonl
    from reflectevo.tasks import check_prompting
    from reflectevo.tasks.registry import get_task

    _, _, cfg = stage_params(params, "prepare", with_model=False)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    counts = {}
    # a task without a test split (a BIG-bench training source) or without a train split (ReflectEvo's BIG-bench
    # test sets) contributes to the other split only; test items come first, so no train item of any task has
    # the text of a test item of any task
    def options_named(i: int, fn, *args):
        """`fn(*args)`; the task (or its generator, when asked for items) refusing its options names the key."""
        try:
            return fn(*args)
        except ReflectEvoError as e:
            raise ReflectEvoError(f"prepare.tasks[{i}].options: {e}") from None

    for i, spec in enumerate(cfg.tasks):   # an unknown name first: "did you mean"
        get_task(spec.name, where=f"prepare.tasks[{i}].name")
    tasks = [options_named(i, get_task, spec.name, spec.options) for i, spec in enumerate(cfg.tasks)]
    tests: list[list] = []
    for i, (spec, task) in enumerate(zip(cfg.tasks, tasks)):
        shots = {q for q, _ in task.fewshot()}  # an item must never be shown its own worked answer
        test = [it for it in options_named(i, task.load, "test", spec.n_test, cfg.seed)
                if it.question not in shots] if "test" in task.splits else []
        if "test" in task.splits and not test:
            raise ReflectEvoError(f"prepare.tasks[{i}]: task {spec.name} has no test items")
        if "train" not in task.splits and "test" not in task.splits:
            raise ReflectEvoError(f"prepare.tasks[{i}]: task {spec.name} has neither a train nor a test split "
                                  f"(splits: {', '.join(task.splits)})")
        tests.append(test)
    if not any(tests):
        raise ReflectEvoError("prepare.tasks: no task has a test split (evaluation needs test items)")
    test_q = {it.question for test in tests for it in test}
    for i, (spec, task, test) in enumerate(zip(cfg.tasks, tasks, tests)):
        shots = {q for q, _ in task.fewshot()}
        train = (options_named(i, task.load, "train", spec.n_train, cfg.seed) if "train" in task.splits
                 else [])
        test_ids, drop = {it.id for it in test}, test_q | shots
        train = [it for it in train if it.id not in test_ids and it.question not in drop]
        check_prompting(task, (test or train or [None])[0])
        for split, items in (("train", train), ("test", test)):
            for it in items:
                row = it.to_dict()
                if spec.options:
                    row["meta"] = {**row["meta"], "task_options": dict(spec.options)}
                splits[split].append(row)
        counts[spec.name] = {"train": len(train), "test": len(test)}
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    write_json(out / "card.json", {"artifact": "sources", "schema": "data/README.md#sources",
                                   "counts": counts, "params": to_dict(cfg)})
    typer.echo(f"prepare: {sum(c['train'] for c in counts.values())} train / "
               f"{sum(c['test'] for c in counts.values())} test items from {len(counts)} task(s) -> {out}")


if __name__ == "__main__":
    app()
