"""Stages `evolve_*@it<i>` and `evolve`: self-evolution iterations (reflectevo/evolve.py).

    python stages/evolve.py chain 3          # evolve.iterations: 3 and its evolve.chain in params.yaml
    dvc repro                                # runs only the stages of iterations not yet run

Per iteration i >= 2 (dvc.yaml foreach over params `evolve.chain`; `--previous` = iteration i-1's folder):
    generate  episodes on the train items, reflections (and two_stage retries) by iteration i-1's adapters
    curate    stages/curate.py on them, then the training data by `evolve.data` (new | union)
    train     stages/train.py on that data (`evolve.init: previous` continues from i-1's adapter)
    evaluate  the setting on the test split (trial 1 by the base model, as in the evaluate stage)
and `summary` (stage `evolve`, in the default pipeline too: one iteration costs a second) writes
metrics/evolve.json and plots/evolve.json. Outputs of iteration i go to evolve/it<i>/. An iteration
whose previous adapter has no training data is recorded as stopped (one line), and so are later ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from reflectevo.stage import friendly_errors

app = typer.Typer(add_completion=False, no_args_is_help=True)
HERE = Path(__file__).resolve().parent


def _cfg(params: Path):
    from reflectevo.config.params import load_section, read_params

    return load_section(read_params(params), "evolve")


def _check_iteration(cfg, iteration: str) -> int:
    from reflectevo.errors import ReflectEvoError
    from reflectevo.evolve import iteration_number

    number = iteration_number(iteration)
    if iteration not in cfg.chain:
        raise ReflectEvoError(f"evolve.chain: no entry {iteration!r} (iterations: {cfg.iterations})")
    return number


def _setting_dir(models: Path, setting: str) -> Path:
    from reflectevo.errors import ReflectEvoError

    d = models / setting
    if not (d / "model_card.json").exists():
        raise ReflectEvoError(f"evolve.setting: {setting!r} is not trained in {models} (no {d}/model_card.json); "
                              "name a setting that dvc.yaml's vars.settings trains")
    return d


def _stopped_by(prev_setting_dir: Path, iteration: int, setting: str) -> str | None:
    from reflectevo.adapters import untrained_reason

    why = untrained_reason(prev_setting_dir)
    if why is None:
        return None
    return f"iteration {iteration - 1}'s {setting} adapter ({prev_setting_dir}) is not trained ({why})"


def _read_json(path: Path, kind: str | None = None) -> dict[str, Any] | None:
    """A stage output's JSON object, or None when the file is absent; a damaged one raises naming it
    (`kind`: generate | curate | train | eval, whose fields the summary reads are checked too)."""
    from reflectevo.errors import ReflectEvoError
    from reflectevo.evolve import check_output
    from reflectevo.jsonio import read_input_json

    if not path.exists() and not path.is_symlink():
        return None
    data = read_input_json(path)
    if not isinstance(data, dict):
        raise ReflectEvoError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if kind is not None:
        check_output(path, data, kind)
    return data


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    from reflectevo.evolve import check_predictions
    from reflectevo.jsonio import read_jsonl

    if not path.exists() and not path.is_symlink():
        return []
    rows = read_jsonl(path)
    check_predictions(path, rows)
    return rows


def _stopped(out: Path) -> str | None:
    gen = _read_json(out / "generate.json") or {}
    return gen.get("stopped")


@app.command()
@friendly_errors
def chain(iterations: int = typer.Argument(..., help="N: iterations in all (1 = the main pipeline only)"),
          params: Path = Path("params.yaml")) -> None:
    """Write evolve.iterations and the matching evolve.chain (dvc.yaml's foreach list) into params.yaml."""
    import io
    import re

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from reflectevo.config.loader import from_dict
    from reflectevo.config.params import read_params
    from reflectevo.config.sections import EvolveConfig, evolve_chain
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import read_input_text, write_text
    from reflectevo.errors import one_line

    if iterations < 1:
        raise ReflectEvoError(f"evolve.iterations: must be >= 1 (1 = train once, as the paper), got {iterations}")
    # only the top-level `evolve:` block is parsed and rewritten (ruamel round trip: its comments and order
    # stay); every other line of the file is kept byte for byte (a round trip of the whole file would
    # reflow multi-line flow mappings such as the presets' `script: {...}`)
    read_params(params)   # the whole file first: YAML, top-level keys (one line naming the file)
    text = read_input_text(params, "params file")
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)   # at "\n" only (str.splitlines also splits at U+0085 ...)
    start = next((i for i, line in enumerate(lines) if line.startswith("evolve:")), None)
    if start is None:
        raise ReflectEvoError(f"{params}: no evolve section (copy it from the project's params.yaml)")
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1].isalpha()), len(lines))
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    try:
        data = yaml.load("".join(lines[start:end]))
    except YAMLError as e:   # ruamel's errors carry line and column
        raise ReflectEvoError(f"{params}: evolve: invalid YAML ({one_line(str(e))})") from None
    if not isinstance(data, dict) or not isinstance(data.get("evolve"), dict):
        raise ReflectEvoError(f"{params}: evolve: expected a mapping (copy the section from the project's params.yaml)")
    data["evolve"]["iterations"] = iterations
    data["evolve"]["chain"] = evolve_chain(iterations)
    from_dict(EvolveConfig, dict(data["evolve"]), "evolve", require_all=True)
    buf = io.StringIO()
    yaml.dump(data, buf)
    block = buf.getvalue()
    if end < len(lines) and not block.endswith("\n\n") and lines[end - 1].strip() == "":
        block += "\n"          # keep the blank line before the next section
    write_text(params, "".join(lines[:start]) + block + "".join(lines[end:]))
    typer.echo(f"evolve: {iterations} iteration(s); chain {list(data['evolve']['chain']) or '(none)'} in {params}")


@app.command()
@friendly_errors
def generate(iteration: str = typer.Option(...), previous: Path = typer.Option(..., help="iteration i-1's models folder"),
             out: Path = typer.Option(...), params: Path = Path("params.yaml"),
             sources: Path = Path("data/sources/train.jsonl")) -> None:
    from reflectevo.generation.stage import run_generate
    from reflectevo.jsonio import write_json

    cfg = _cfg(params)
    number = _check_iteration(cfg, iteration)
    prev = _setting_dir(previous, cfg.setting)
    why = _stopped_by(prev, number, cfg.setting)
    if why is not None:
        (out / "raw").mkdir(parents=True, exist_ok=True)
        for old in (out / "raw").glob("*"):
            old.unlink()
        write_json(out / "generate.json", {"iteration": number, "stopped": why})
        typer.echo(f"evolve {iteration}: stopped: {why}")
        return
    run_generate(params, sources, out / "raw", out / "generate.json", HERE / "generate.py", progress=False,
                 adapters=prev, echo=typer.echo)


@app.command()
@friendly_errors
def curate(iteration: str = typer.Option(...), previous_data: Path = typer.Option(..., help="iteration i-1's data"),
           out: Path = typer.Option(...), params: Path = Path("params.yaml")) -> None:
    from reflectevo.config.params import load_section, read_params
    from reflectevo.evolve import KINDS, data_kind, union_rows
    from reflectevo.jsonio import read_jsonl, write_json, write_jsonl
    from reflectevo.training.stage import read_rows

    cfg = _cfg(params)
    number = _check_iteration(cfg, iteration)
    kind = data_kind(cfg.setting)
    threshold = load_section(read_params(params), "curate").dedup_threshold
    previous = {}   # union: iteration i-1's training rows, read and checked before anything runs or is written
    for split in ("train", "eval") if cfg.data == "union" else ():
        prev_file = previous_data / f"{kind}_{split}.jsonl"
        previous[split] = read_rows(prev_file, cfg.setting) if prev_file.exists() or prev_file.is_symlink() else []
    why = _stopped(out)
    if why is not None:
        for k in KINDS:
            for split in ("train", "eval"):
                write_jsonl(out / "curated" / f"{k}_{split}.jsonl", [])
        write_json(out / "curate.json", {"iteration": number, "stopped": why})
    else:
        from reflectevo.curation.stage import run_curate

        for line in run_curate(params, out / "raw", out / "curated", out / "curate.json"):
            typer.echo(line)
    info: dict[str, Any] = {"policy": cfg.data, "kind": kind}
    rows: dict[str, list] = {}
    for split in ("train", "eval"):
        new = read_jsonl(out / "curated" / f"{kind}_{split}.jsonl")
        if cfg.data == "union":
            rows[split], counts = union_rows(previous[split], new, threshold)
        else:
            rows[split], counts = new, {"new": len(new), "rows": len(new)}
        info[split] = counts
    written = {out / "data" / f"{kind}_{split}.jsonl" for split in rows}
    for split, split_rows in rows.items():   # each file replaced atomically; stale sets removed after
        write_jsonl(out / "data" / f"{kind}_{split}.jsonl", split_rows)
    for old in (out / "data").glob("*.jsonl"):
        if old not in written:
            old.unlink()
    write_json(out / "data" / "info.json", info)
    typer.echo(f"evolve {iteration}: training data ({cfg.data}) {kind}: train {info['train']['rows']}, "
               f"eval {info['eval']['rows']}")


@app.command()
@friendly_errors
def train(iteration: str = typer.Option(...), previous: Path = typer.Option(..., help="iteration i-1's models folder"),
          out: Path = typer.Option(...), params: Path = Path("params.yaml")) -> None:
    from reflectevo.adapters import read_card, untrained_reason
    from reflectevo.errors import ReflectEvoError
    from reflectevo.evolve import data_kind
    from reflectevo.jsonio import write_json
    from reflectevo.training.stage import run_train

    cfg = _cfg(params)
    number = _check_iteration(cfg, iteration)
    kind = data_kind(cfg.setting)
    prev = _setting_dir(previous, cfg.setting)
    init = None
    if cfg.init == "previous" and untrained_reason(prev) is None:
        card = read_card(prev)
        init = {role: prev / sub for role, sub in card["adapters"].items()}
    result = run_train(cfg.setting, params, out / "data" / f"{kind}_train.jsonl", str(out / "data" / f"{kind}_eval.jsonl"),
                       out / "models" / cfg.setting, out / "train.json", checkpoints="auto", init=init)
    if result is None:   # not rank 0
        return
    if init is None:
        result["init"] = "base"
    else:
        loaded = result.pop("init", {})
        missing = [r for r in init if r not in loaded]
        if result.get("trained") and missing:
            raise ReflectEvoError(f"evolve.init: previous: the previous adapter of {missing} was never loaded")
        result["init"] = {"from": str(prev), "tensors": loaded}
    why = _stopped(out)
    if why is not None:
        result["stopped"] = why
    result["iteration"] = number
    write_json(out / "train.json", result)


@app.command()
@friendly_errors
def evaluate(iteration: str = typer.Option(...), out: Path = typer.Option(...), params: Path = Path("params.yaml"),
             sources: Path = Path("data/sources/test.jsonl")) -> None:
    from reflectevo import evaluation as ev
    from reflectevo.adapters import read_card, untrained_reason
    from reflectevo.backends.registry import make_backend
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json, write_jsonl
    from reflectevo.config.params import stage_params
    from reflectevo.tasks.items import load_items

    cfg = _cfg(params)
    number = _check_iteration(cfg, iteration)
    setting_dir = out / "models" / cfg.setting
    stopped, untrained = _stopped(out), untrained_reason(setting_dir)
    if stopped is not None or untrained is not None:
        why = stopped or f"iteration {number}'s {cfg.setting} adapter is not trained ({untrained})"
        write_json(out / "eval.json", {"iteration": number, "stopped" if stopped else "skipped": why, "systems": {}})
        write_jsonl(out / "predictions.jsonl", [])
        typer.echo(f"evolve {iteration}: evaluate skipped: {why}")
        return
    name, preset, ecfg = stage_params(params, "evaluate")
    items, tasks = load_items(sources)
    if ecfg.limit:
        items = items[: ecfg.limit]
    if not items:
        raise ReflectEvoError(f"{sources}: no test items")
    card = read_card(setting_dir)
    paths = {role: setting_dir / sub for role, sub in card["adapters"].items()}
    serves = sorted(str(p) for p in paths.values())
    base = make_backend(name, preset, serves=serves)
    t1 = ev.trial1(items, tasks, base, ecfg)
    s = cfg.setting
    if s == "one_stage":
        rows = ev.one_stage(items, tasks, make_backend(name, preset, paths["one_stage"], serves=serves), t1, ecfg)
    elif s == "two_stage":
        rows = ev.reflect_then_retry(items, tasks, t1, make_backend(name, preset, paths["reflector"], serves=serves),
                                     make_backend(name, preset, paths["corrector"], serves=serves), ecfg)
    else:
        rows = ev.reflect_then_retry(items, tasks, t1, make_backend(name, preset, paths["reflector"], serves=serves),
                                     base, ecfg)
    summary = ev.summarize({s: rows})
    write_json(out / "eval.json", {"iteration": number, "model": name, "setting": s, "systems": summary})
    write_jsonl(out / "predictions.jsonl", [{"system": s, **r} for r in rows])
    o = summary[s]["overall"]
    typer.echo(f"evolve {iteration}: evaluate[{s}] n={o['n']} acc_t1={o['acc_t1']} acc_t2={o['acc_t2']} delta={o['delta']}")


@app.command()
@friendly_errors
def summary(params: Path = Path("params.yaml"), metrics_dir: Path = Path("metrics"), eval_dir: Path = Path("data/eval"),
            evolve_dir: Path = Path("evolve"), out: Path = Path("metrics/evolve.json"),
            plots: Path = Path("plots/evolve.json"),
            headline: Path = typer.Option(None, help="flat DVC metrics file")) -> None:
    """metrics/evolve.json and plots/evolve.json from iteration 1 (the main pipeline) and every chain entry."""
    from reflectevo import evolve as evo
    from reflectevo.errors import ReflectEvoError
    from reflectevo.jsonio import write_json

    cfg = _cfg(params)
    s = cfg.setting
    train1 = _read_json(metrics_dir / "train" / f"{s}.json", "train")
    if train1 is None:
        raise ReflectEvoError(f"evolve.setting: {s!r} is not trained by this pipeline (no {metrics_dir}/train/{s}.json; "
                              "dvc.yaml's vars.settings lists the trained settings)")
    preds1 = [r for r in _read_predictions(eval_dir / "predictions.jsonl") if r.get("system") == s]
    rows = [evo.iteration_row(1, _read_json(metrics_dir / "generate.json", "generate"),
                              _read_json(metrics_dir / "curate.json", "curate"), _read_json(metrics_dir / "eval.json", "eval"),
                              s, train1)]
    if not train1.get("trained"):
        rows[0]["note"] = f"{s} not trained at iteration 1 ({train1.get('reason')}): no later iteration can run"
    for key in sorted(cfg.chain, key=evo.iteration_number):
        d = evolve_dir / key
        n = evo.iteration_number(key)
        row = evo.iteration_row(n, _read_json(d / "generate.json", "generate"), _read_json(d / "curate.json", "curate"),
                                _read_json(d / "eval.json", "eval"), s, _read_json(d / "train.json", "train"))
        row["vs_it1"] = evo.versus_first(preds1, _read_predictions(d / "predictions.jsonl"))
        rows.append(row)
    result = evo.summary(rows, s, cfg.data, cfg.init)
    write_json(out, result)
    write_json(plots, evo.plot_rows(rows))
    if headline is not None:  # full JSON above (plain output), small flat copy here (DVC metric)
        write_json(headline, evo.headline(result))
    for row in rows:
        p = (row.get("vs_it1") or {}).get("p")
        line = (f"stopped: {row['stopped']}" if row.get("stopped") else
                f"fix rate {row['train_fix_rate']}, D+ {row['dplus']}, D± {row['dpm']}, repeat {row['repeat_rate']}, "
                f"acc_t1 {row['acc_t1']}, acc_t2 {row['acc_t2']}, Δ {row['delta']}" + (f", p vs it1 {p}" if p is not None else ""))
        typer.echo(f"evolve it{row['iteration']} ({s}): {line}")


if __name__ == "__main__":
    app()
