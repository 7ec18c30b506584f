"""`reflectevo plan`: what a params file (or a recipe on top of it) will cost, offline, in seconds.

For each task of `prepare.tasks`: items per split (the sources' metadata, or a counted local copy), trial-1 calls,
expected reflections and retries from a stated trial-1 accuracy and retry accuracy, prompt and generated tokens
per phase, then the curated set sizes, training rows / tokens / optimizer steps per setting, evaluation calls,
the size of `data/raw`, and the hours at a stated throughput. Every figure carries the assumption behind it
(`why`). The assumptions, in the order they are tried:

- accuracies: a measured run (`--from-run metrics/generate.json`: per task, else overall); the scripted preset's
  own rates; the paper's figures for the paper's tasks (Acc@t1 of Table 2 for that model, % correct after
  reflection per domain of the ReflectEvo-460K table); chance for multiple choice (1/N, and 1/(N-1) for a retry
  told which answer was rejected); else the paper's overall 13.93% (retries) and 30% (trial 1).
- prompt tokens: real prompts rendered with the preset's chat template and counted by its tokenizer, on up to
  `sample` items per task (when the items and the tokenizer are on this machine; else a question of the domain's
  average length and 4 characters per token); the attempt and reflection a later prompt quotes count as
  their expected generated length.
- generated tokens: a run's means; the scripted preset's recipe; the paper's average lengths per domain; else
  the task's worked few-shot answers; each capped by its `max_new_tokens_*` budget.
- throughput: `--tokens-per-s` (generated tokens per second), else a default per model size (`THROUGHPUT`,
  with its source); prompt tokens at 10x that on a GPU (batched prefill), included in the figure on a CPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError

PHASES = ("trial1", "reflection", "trial2")
CHARS_PER_TOKEN = 4.0
PAPER_T1_FALLBACK = 0.30   # no reference: the scripted preset's default share of right first trials
RAW_BYTES_PER_TOKEN = 0.81  # data/raw Parquet bytes per counted prompt + generated token (see disk_bytes)
H100_BF16_FLOPS = 989e12    # NVIDIA H100 SXM datasheet, dense BF16 Tensor Core peak
TRAIN_MFU = 0.35            # model FLOPs utilisation assumed for LoRA/QLoRA training on one GPU

# Generated tokens per second (generation and evaluation), by where the preset runs. Sources:
# - GPU: MLPerf Inference v5.1, Llama-3.1-8B Offline on one H100, vLLM 0.10.0 (FP8), Red Hat's submission:
#   5,777 tokens/s; other sizes scaled by 8B/size (decoding reads every weight per step), at most 4x.
# - CPU: SmolLM2-135M bf16 on this repository's 2-core VM: 1,874 calls in 686 s at ~40 new tokens per call
#   (bench/results/generate.json), prompt processing included: ~110 generated tokens/s.
# - scripted: no model; ~1,200 episodes/s (bench/results/scale.json), counted per episode, not per token.
GPU_8B_TOKENS_PER_S = 5777.0
CPU_SMOLLM2_TOKENS_PER_S = 110.0
CPU_SMOLLM2_TRAIN_TOKENS_PER_S = 120.0   # metrics/train/*.json of the committed default run: 109-136 (SFT)
SCRIPTED_EPISODES_PER_S = 1200.0
THROUGHPUT = {
    "gpu": f"{GPU_8B_TOKENS_PER_S:,.0f} generated tokens/s for an 8B model on one H100 (MLPerf Inference v5.1, "
           "Llama-3.1-8B Offline, vLLM, Red Hat), scaled by 8B / model size (at most 4x)",
    "cpu": f"{CPU_SMOLLM2_TOKENS_PER_S:.0f} generated tokens/s, prompts included (SmolLM2-135M bf16 on a 2-core "
           "VM: bench/results/generate.json)",
    "scripted": f"{SCRIPTED_EPISODES_PER_S:,.0f} episodes/s (the scripted backend, bench/results/scale.json)",
}


@dataclass(frozen=True)
class Est:
    """A figure and the assumption it rests on."""

    value: float
    why: str

    def json(self, digits: int = 1) -> dict[str, Any]:
        v = self.value
        return {"value": int(round(v)) if float(v).is_integer() or abs(v) >= 100 else round(v, digits), "why": self.why}


# --------------------------------------------------------------------------------------------------
# model facts


def model_size_b(name: str, preset: Any) -> float | None:
    """Parameters in billions, read from the preset's name or hub id (`8b`, `1_5b`, `135m`); None if unknown."""
    if preset.source == "tiny-random":
        return 1e-4
    if preset.source == "scripted":
        return 0.0
    for text in (preset.hub_id, name, preset.file):
        for m in re.finditer(r"(\d+(?:[._]\d+)?)([bm])(?![a-z])", (text or "").lower()):
            v = float(m.group(1).replace("_", "."))
            return v if m.group(2) == "b" else v / 1000
    return None


def device_of(preset: Any) -> str:
    if preset.source == "scripted":
        return "scripted"
    return "cpu" if preset.source in ("gguf-package", "tiny-random") else "gpu"


def default_tokens_per_s(name: str, preset: Any) -> Est:
    dev = device_of(preset)
    if dev == "cpu":
        return Est(CPU_SMOLLM2_TOKENS_PER_S, THROUGHPUT["cpu"])
    if dev == "scripted":
        return Est(SCRIPTED_EPISODES_PER_S, THROUGHPUT["scripted"])
    size = model_size_b(name, preset) or 8.0
    return Est(min(4 * GPU_8B_TOKENS_PER_S, GPU_8B_TOKENS_PER_S * 8.0 / size),
               THROUGHPUT["gpu"] + f" ({size:g}B)")


def default_train_tokens_per_s(name: str, preset: Any) -> Est:
    dev = device_of(preset)
    if dev == "cpu":
        return Est(CPU_SMOLLM2_TRAIN_TOKENS_PER_S, "the committed default run's SFT training throughput on the "
                                                   "2-core VM (metrics/train/*.json: 109-136 tokens/s)")
    size = model_size_b(name, preset) or 8.0
    if dev == "scripted":
        return Est(0.0, "the scripted preset has no weights: nothing to train")
    return Est(TRAIN_MFU * H100_BF16_FLOPS / (6 * size * 1e9),
               f"6 x {size:g}B FLOPs per token at {TRAIN_MFU:.0%} of an H100's dense BF16 peak (989 TFLOPS)")


# --------------------------------------------------------------------------------------------------
# prompt rendering


class Renderer:
    """Renders chat messages as a backend would and counts tokens (the preset's tokenizer when it is on this
    machine; the scripted backend's own template and word count; else characters / 4)."""

    def __init__(self, render, count, why: str) -> None:
        self.render, self.count, self.why = render, count, why


def _tokenizer_folder(name: str, preset: Any) -> tuple[str | None, str]:
    from reflectevo.models.hub import cached_snapshot
    from reflectevo.models.load import resolve_model

    if preset.source in ("tiny-random", "gguf-package"):
        return resolve_model(name, preset, weights=False), "built locally (the packaged preset's is converted once)"
    if preset.path:
        return (preset.path, "its local path") if Path(preset.path).expanduser().exists() else (None, "path missing")
    if preset.source == "hub" and preset.hub_id:
        folder, why = cached_snapshot(preset.hub_id, preset.revision, weights=False)
        return folder, ("the Hugging Face cache" if folder else f"not in the Hugging Face cache ({why})")
    return None, "no tokenizer for this source"


def make_renderer(name: str, preset: Any) -> Renderer:
    if preset.source == "scripted":
        from reflectevo.backends.scripted import ScriptedBackend

        r = ScriptedBackend.render

        def count_words(text: str) -> int:   # what the scripted backend counts as prompt tokens
            return text.count(" ") + text.count("\n") + 1

        return Renderer(lambda m: r(None, m), count_words, "the scripted backend's template, counted as it counts")
    folder, where = _tokenizer_folder(name, preset)
    if folder:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        if getattr(tok, "chat_template", None):
            return Renderer(lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                            lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
                            f"rendered with {name}'s chat template and counted by its tokenizer ({where})")
    return Renderer(lambda m: "".join(f"<|{x['role']}|>\n{x['content']}\n" for x in m) + "<|assistant|>\n",
                    lambda t: max(1, round(len(t) / CHARS_PER_TOKEN)),
                    f"{name}'s tokenizer is not on this machine ({where}): a generic chat template, "
                    f"{CHARS_PER_TOKEN:g} characters per token")


# --------------------------------------------------------------------------------------------------
# per-task assumptions


@dataclass
class TaskPlan:
    name: str
    domain: str | None
    train: Est
    test: Est
    acc_t1: Est
    acc_retry: Est
    len_trial1: Est
    len_trial2: Est
    len_reflection: Est
    prompt: dict[str, Est]           # mean prompt tokens per phase (generation), reflection/trial2 w/o quoted parts
    eval_prompt: dict[str, Est]      # evaluation: trial1, reflection (test prompt), trial2
    choices: int | None


def _split_size(task: Any, split: str, n: int) -> Est:
    """Items used from a split: n (0 = all) capped by the split's size from the source's metadata or a local count."""
    if split not in getattr(task, "splits", ("train", "test")):
        return Est(0, f"the task has no {split} split")
    describe = getattr(task, "describe", None)
    if describe is None:   # reasoning-gym and task files: procedural or a local file, any size
        return Est(n, f"{n} requested (a generated task: any size)") if n else Est(0, "n = 0 of a generated task")
    try:
        info = describe()
    except ReflectEvoError:
        info = {"sizes": {}, "source": {}}
    size = info["sizes"].get(split)
    src = str(info["source"].get(split, "unknown source"))
    where = "counted in " + src.split(" (")[0] if src.startswith("local") else f"{src.split(' [')[0]} metadata"
    if size is None:
        return Est(n, f"{n} requested; the split's size is not known offline") if n else \
            Est(0, f"whole split of unknown size ({src}): counted as 0")
    if n and n < size:
        return Est(n, f"{n} of {size:,} ({where})")
    return Est(size, f"whole split: {size:,} ({where})")


def _sample_items(task: Any, split: str, k: int) -> list[Any]:
    """Up to k real items when they are on this machine (never a download)."""
    describe = getattr(task, "describe", None)
    try:
        if describe is not None:
            src = str(describe()["source"].get(split, ""))
            if not src.startswith("local"):
                return []
        return task.load(split, k, 0) if split in getattr(task, "splits", ()) else []
    except (ReflectEvoError, OSError, ValueError):
        return []


def _choices(task: Any, spec: Any, items: list[Any]) -> int | None:
    n = (spec.options or {}).get("choices")
    if n:
        return int(n)
    if getattr(task, "answer_type", "") != "choice":
        return None
    counts = [len(it.choices or it.meta.get("choices") or ()) for it in items]
    counts = [c for c in counts if c]
    return round(sum(counts) / len(counts)) if counts else 4


def _filler(words: int) -> str:
    base = ["the", "council", "moved", "the", "annual", "report", "to", "the", "north", "harbor", "after", "the", "winter", "survey", "was", "complete"]
    return " ".join(base[i % len(base)] for i in range(max(1, words)))


def _fewshot_len(task: Any, renderer: Renderer) -> float | None:
    shots = task.fewshot()
    if not shots:
        return None
    return sum(renderer.count(c) for _, c in shots) / len(shots)


def _run_task(run: dict | None, name: str) -> dict | None:
    if not run:
        return None
    return (run.get("per_task") or {}).get(name) or run


def _run_tokens(run: dict | None, name: str) -> dict | None:
    if not run:
        return None
    diag = run.get("diagnostics") or {}
    per = (diag.get("per_task") or {}).get(name) or diag.get("overall") or {}
    return per.get("tokens")


def task_plan(name: str, spec: Any, model: str, preset: Any, gen: Any, ev: Any, renderer: Renderer,
              run: dict | None, sample: int, where: str) -> TaskPlan:
    from reflectevo import paper
    from reflectevo.demands import demand_pool
    from reflectevo.protocol.mechanics import render_trial
    from reflectevo.prompts import reflection_messages, trial_messages
    from reflectevo.tasks.registry import get_task
    from reflectevo.tasks.base import Item

    task = get_task(name, spec.options or None, where=where)
    info = paper.task_info(name)
    domain = paper.domain_of(name)
    dom = paper.domains()[domain] if domain else None
    train, test = _split_size(task, "train", spec.n_train), _split_size(task, "test", spec.n_test)
    items = _sample_items(task, "test", sample) or _sample_items(task, "train", sample)
    n_choices = _choices(task, spec, items)
    oracle = gen.protocol == "oracle"

    # accuracies
    measured = _run_task(run, name)
    script = preset.script if preset.source == "scripted" else None
    if measured and measured.get("items"):
        acc1 = Est(measured["trial1_correct"] / measured["items"], f"measured ({measured['trial1_correct']}/"
                   f"{measured['items']} in the given run)")
    elif script is not None:
        acc1 = Est(script.trial1_correct, "the scripted preset's trial1_correct")
    elif info:
        v, src = paper.acc_t1(model, info["test_set"])
        acc1 = Est(v, src)
    elif n_choices:
        acc1 = Est(1 / n_choices, f"chance: 1 of {n_choices} options")
    else:
        acc1 = Est(PAPER_T1_FALLBACK, "no reference figure: 30%")
    if measured and measured.get("reflections"):
        acc2 = Est(measured["trial2_correct"] / measured["reflections"],
                   f"measured ({measured['trial2_correct']}/{measured['reflections']} retries in the given run)")
    elif script is not None:
        acc2 = Est(script.retry_correct, "the scripted preset's retry_correct")
    elif dom:
        acc2 = Est(dom["pct_correct_after_reflection"] / 100, f"paper: % correct after reflection, {dom['label']}")
    elif n_choices:
        named = gen.name_rejected and oracle
        acc2 = Est(1 / (n_choices - 1) if named else 1 / n_choices,
                   f"chance among the {n_choices - 1} options left (the rejected one is named)" if named else
                   f"chance: 1 of {n_choices} options")
    else:
        acc2 = Est(paper.total()["pct_correct_after_reflection"] / 100, "paper: % correct after reflection, overall")

    # generated lengths (tokens), capped by the budgets
    tok = _run_tokens(run, name)

    def length(phase: str, cap: int, paper_key: str, script_val: int | None, fewshot: float | None) -> Est:
        if tok and (tok.get(phase) or {}).get("calls"):
            v, why = tok[phase]["mean_new"], "measured mean in the given run"
        elif script_val is not None:
            v, why = float(script_val), "the scripted preset's recipe (words, counted as tokens)"
        elif dom:
            v, why = float(dom[paper_key]), f"paper: average length, {dom['label']}"
        elif fewshot is not None:
            v, why = fewshot, "the task's worked few-shot answers (the model imitates them)"
        else:
            v, why = float(paper.total()[paper_key]), "paper: average length, all domains"
        return Est(min(v, cap), why + (f", capped at {cap}" if v > cap else ""))

    shots = _fewshot_len(task, renderer)
    l1 = length("trial1", gen.max_new_tokens_trial, "avg_trial1", script.trial_words if script else None, shots)
    l2 = length("trial2", gen.max_new_tokens_trial, "avg_trial2", script.retry_words if script else None, shots)
    lr = length("reflection", gen.max_new_tokens_reflection, "avg_reflection",
                script.reflection_words if script else None, None)

    # prompt tokens (templates rendered on real or stand-in items; quoted attempts counted as their lengths)
    if not items:
        qlen = (dom or paper.total())["avg_question"]
        items = [Item(id=f"plan-{name}", task=name, question=_filler(qlen), answer="A",
                      choices=tuple(f"option {k}" for k in range(n_choices)) if n_choices else None)]
        item_why = f"a stand-in question of {qlen} words (paper average, {(dom or paper.total())['label']})"
    else:
        item_why = f"{len(items)} real items"
    pool = list(demand_pool())
    demands = pool if "all" in gen.demands else list(gen.demands)
    p1, pr, p2, er, e2 = [], [], [], [], []
    for n, it in enumerate(items):
        p1.append(renderer.count(render_trial(renderer, task, trial_messages(task, it))))
        d = demands[n % len(demands)] if (gen.reflect and oracle and demands) else None
        pr.append(renderer.count(renderer.render(reflection_messages(it, "", d, oracle=oracle))))
        er.append(renderer.count(renderer.render(reflection_messages(it, "", None, oracle=ev.protocol == "oracle"))))
        for out, rej, prev in ((p2, gen.name_rejected, gen.use_previous_trial), (e2, ev.name_rejected, True)):
            msgs = trial_messages(task, it, reflection="" if gen.reflect else None, previous="" if prev else None,
                                  retry=True, oracle=oracle, rejected="A" if rej and oracle else None)
            out.append(renderer.count(render_trial(renderer, task, msgs)))
    mean = lambda xs: sum(xs) / len(xs)
    why = f"{renderer.why}, {item_why}"
    quoted = l1.value + (renderer.count(task.trial_prefix()) if task.trial_prefix() else 0)
    prompt = {"trial1": Est(mean(p1), why),
              "reflection": Est(mean(pr) + quoted, why + "; plus the quoted trial 1"),
              "trial2": Est(mean(p2) + (lr.value if gen.reflect else 0) + (quoted if gen.use_previous_trial else 0),
                            why + "; plus the quoted reflection and trial 1")}
    eval_prompt = {"trial1": prompt["trial1"], "reflection": Est(mean(er) + quoted, prompt["reflection"].why),
                   "trial2": Est(mean(e2) + lr.value + quoted, prompt["trial2"].why)}
    return TaskPlan(name, domain, train, test, acc1, acc2, l1, l2, lr, prompt, eval_prompt, n_choices)


# --------------------------------------------------------------------------------------------------
# the plan


def _binom_expect(k: int, p: float, f) -> float:
    return sum(math.comb(k, j) * p ** j * (1 - p) ** (k - j) * f(j) for j in range(k + 1))


def _steps(rows: float, hp: Any) -> Est:
    if rows <= 0:
        return Est(0, "no training rows")
    per_step = hp.batch_size * hp.grad_accum
    if hp.max_steps > 0:
        return Est(hp.max_steps, f"max_steps {hp.max_steps} (the trainer runs exactly that many)")
    steps = math.ceil(rows / per_step) * hp.epochs
    return Est(math.ceil(steps), f"ceil({rows:,.0f} rows / ({hp.batch_size} x {hp.grad_accum})) x {hp.epochs:g} epochs")


def build_plan(params: dict[str, Any], label: str = "params.yaml", run: dict | None = None,
               tokens_per_s: float | None = None, train_tokens_per_s: float | None = None,
               prefill_tokens_per_s: float | None = None, sample: int = 8) -> dict[str, Any]:
    """The plan of `params` (a params.yaml mapping, e.g. `reflectevo.recipes.apply`'s result) as JSON-able data."""
    from reflectevo.config.presets import load_preset
    from reflectevo.config.params import load_section
    from reflectevo.training.config import TrainConfig
    from reflectevo.settings import registry

    name, preset = load_preset(params)
    prep, gen, cur = load_section(params, "prepare"), load_section(params, "generate"), load_section(params, "curate")
    trn, ev = load_section(params, "train", TrainConfig), load_section(params, "evaluate")
    renderer = make_renderer(name, preset)
    tasks = [task_plan(s.name, s, name, preset, gen, ev, renderer, run, sample, f"prepare.tasks[{i}].name")
             for i, s in enumerate(prep.tasks)]

    # generation
    limit = gen.limit
    left = limit if limit else None
    oracle = gen.protocol == "oracle"
    k = gen.k if gen.reflect or gen.retry_temperature > 0 else 1
    rows, tot = [], {p: {"calls": 0.0, "prompt": 0.0, "new": 0.0} for p in PHASES}
    exp_fix = exp_t1 = dpm = dpref = failed_all = n_all = 0.0
    for t in tasks:
        n = t.train.value if left is None else min(t.train.value, left)
        if left is not None:
            left -= n
        failed = n * (1 - t.acc_t1.value) if oracle else n
        refl, retries, fixes, live = 0.0, 0.0, 0.0, failed * k
        for _ in range(gen.rounds):
            refl += live if gen.reflect else 0
            retries += live
            fixes += live * t.acc_retry.value
            live = live * (1 - t.acc_retry.value) if oracle else live
        p = t.acc_retry.value
        if oracle:
            dpm += failed * (1 - cur.eval_fraction) * _binom_expect(k, p, lambda j: min(cur.max_pairs_per_item, j * (k - j)))
            dpref += failed * (1 - cur.eval_fraction) * _binom_expect(
                k, p, lambda j: min(cur.max_pairs_per_item, j * (j - 1) // 2)) if cur.judge != "none" else 0
        calls = {"trial1": n, "reflection": refl, "trial2": retries}
        lens = {"trial1": t.len_trial1.value, "reflection": t.len_reflection.value, "trial2": t.len_trial2.value}
        for ph in PHASES:
            tot[ph]["calls"] += calls[ph]
            tot[ph]["prompt"] += calls[ph] * t.prompt[ph].value
            tot[ph]["new"] += calls[ph] * lens[ph]
        exp_fix += fixes
        exp_t1 += n * t.acc_t1.value
        failed_all += failed
        n_all += n
        rows.append({"task": t.name, "domain": t.domain, "train_items": t.train.json(), "test_items": t.test.json(),
                     "trial1_accuracy": t.acc_t1.json(3), "retry_accuracy": t.acc_retry.json(3),
                     "reflections": Est(refl, f"{failed:,.0f} failed items x k {k}" + (
                         f" over {gen.rounds} rounds" if gen.rounds > 1 else "")).json(),
                     "expected_fixes": Est(fixes, "reflections x retry accuracy").json(),
                     "new_tokens_per_call": {"trial1": t.len_trial1.json(), "reflection": t.len_reflection.json(),
                                             "trial2": t.len_trial2.json()},
                     "prompt_tokens_per_call": {ph: t.prompt[ph].json() for ph in PHASES}})
    gen_tokens = {ph: {"calls": Est(v["calls"], "per task: items, failed items x k, retries").json(),
                       "prompt": Est(v["prompt"], "calls x prompt tokens per call").json(),
                       "new": Est(v["new"], "calls x generated tokens per call").json()} for ph, v in tot.items()}

    # curation
    split = 1 - cur.eval_fraction
    dplus = exp_fix * split
    curated = {
        "dplus_train": Est(dplus, f"expected fixes x {split:g} (items held out: curate.eval_fraction); "
                                  "length and near-duplicate filters not modelled").json(),
        "dpm_train": Est(dpm, f"per failed item E[min({cur.max_pairs_per_item}, fixing x failing)], fixes ~ "
                              f"Binomial(k {k}, retry accuracy), independent").json(),
        "dpref_train": Est(dpref, f"per failed item E[min({cur.max_pairs_per_item}, C(fixing, 2))], same binomial"
                           if cur.judge != "none" else "curate.judge none: no Dpref").json(),
    }

    # training
    reg = registry()
    per_row_tokens = {  # prompt + target tokens of one training example, averaged over tasks (by train items)
        "one_stage": _wavg(tasks, lambda t: t.eval_prompt["reflection"].value + t.len_reflection.value + t.len_trial2.value),
        "reflector": _wavg(tasks, lambda t: t.eval_prompt["reflection"].value + t.len_reflection.value),
        "corrector": _wavg(tasks, lambda t: t.prompt["trial2"].value + t.len_trial2.value),
        "dpo": _wavg(tasks, lambda t: t.eval_prompt["reflection"].value + 2 * t.len_reflection.value),
        "answers": _wavg(tasks, lambda t: t.prompt["trial1"].value + 10),
    }
    train: dict[str, Any] = {}
    train_tokens = 0.0
    for s_name, s in reg.settings.items():
        hp = {"sft": trn.sft, "dpo": trn.dpo, "rl": trn.rl}[s.family]
        if s.family == "rl" and not trn.rl.enabled:
            train[s_name] = {"status": "disabled (train.rl.enabled: false)"}
            continue
        n_rows = {"dplus": dplus, "dpm": dpm, "dpref": dpref, "sources": n_all * 1.0,
                  "raw": failed_all if oracle else n_all}[s.data]
        roles = {}
        for role in s.roles:
            steps = _steps(n_rows, hp)
            key = ("one_stage" if s.evaluate == "one_stage" else "dpo" if s.family == "dpo" else
                   "answers" if s.data == "sources" else role if role in ("reflector", "corrector") else "reflector")
            examples = steps.value * hp.batch_size * hp.grad_accum
            toks = examples * min(per_row_tokens[key], hp.max_length)
            train_tokens += toks
            roles[role] = {"steps": steps.json(), "tokens": Est(toks, f"steps x batch {hp.batch_size} x grad_accum "
                                                                      f"{hp.grad_accum} x ~{per_row_tokens[key]:.0f} tokens "
                                                                      "per example (prompt + target)").json()}
        train[s_name] = {"rows": Est(n_rows, f"the expected {s.data} rows").json(), "roles": roles}

    # evaluation: trial 1 by the base once; a reflect + retry round per reflecting system on failed items
    n_test = sum(t.test.value for t in tasks)
    failed_test = sum(t.test.value * ((1 - t.acc_t1.value) if ev.protocol == "oracle" else 1) for t in tasks)
    trained = [s for s, v in train.items() if "roles" in v and v["rows"]["value"] > 0]
    systems: dict[str, Any] = {}
    ev_tok = {"prompt": 0.0, "new": 0.0, "calls": 0.0}

    def add(calls: float, prompt_per: float, new_per: float) -> None:
        ev_tok["calls"] += calls
        ev_tok["prompt"] += calls * prompt_per
        ev_tok["new"] += calls * new_per

    tw = lambda f: _wavg(tasks, f, by="test")
    add(n_test, tw(lambda t: t.prompt["trial1"].value), tw(lambda t: t.len_trial1.value))
    t1 = Est(n_test, "trial 1 by the base model (computed once, shared by every system)").json()
    for system in (*reg.baselines, *trained):
        s = reg.settings.get(system)
        if s is not None and not s.reflects:
            systems[system] = {"trial1": Est(n_test, "every test item, answers only (by the adapter)").json()}
            add(n_test, tw(lambda t: t.prompt["trial1"].value), 10)
            continue
        calls = failed_test * ev.rounds
        why = "failed test items x rounds" if ev.protocol == "oracle" else "every test item x rounds"
        if s is not None and s.evaluate == "one_stage":
            systems[system] = {"trial1": t1, "trial2": Est(calls, why + ": reflection and answer in one call").json()}
            add(calls, tw(lambda t: t.eval_prompt["reflection"].value),
                tw(lambda t: t.len_reflection.value + t.len_trial2.value))
            continue
        entry = {"trial1": t1}
        if system != "base_noreflect":
            entry["reflection"] = Est(calls, why).json()
            add(calls, tw(lambda t: t.eval_prompt["reflection"].value), tw(lambda t: t.len_reflection.value))
        entry["trial2"] = Est(calls, why).json()
        add(calls, tw(lambda t: t.eval_prompt["trial2"].value), tw(lambda t: t.len_trial2.value))
        systems[system] = entry
    evaluation = {"test_items": Est(n_test, "sum of the tasks' test items").json(),
                  "trial1_calls": t1,
                  "systems": systems,
                  "skipped": {s: v["status"] for s, v in train.items() if "status" in v},
                  "tokens": {"prompt": Est(ev_tok["prompt"], "calls x prompt tokens per call").json(),
                             "new": Est(ev_tok["new"], "calls x generated tokens per call").json()}}

    # disk and time
    g_prompt = sum(v["prompt"] for v in tot.values())
    g_new = sum(v["new"] for v in tot.values())
    disk = Est((g_prompt + g_new) * RAW_BYTES_PER_TOKEN,
               f"{RAW_BYTES_PER_TOKEN} bytes of Parquet per prompt + generated token (bench/results/scale.json: "
               "4,600 scripted episodes, 14.9 MB for 18.4M counted tokens)")
    tps = Est(tokens_per_s, "given (--tokens-per-s)") if tokens_per_s else default_tokens_per_s(name, preset)
    ttps = Est(train_tokens_per_s, "given (--train-tokens-per-s)") if train_tokens_per_s else \
        default_train_tokens_per_s(name, preset)
    dev = device_of(preset)
    if prefill_tokens_per_s:
        pre = Est(prefill_tokens_per_s, "given (--prefill-tokens-per-s)")
    elif dev == "gpu":
        pre = Est(10 * tps.value, "10x the generation rate (batched prefill is compute-bound, decoding is not)")
    else:
        pre = Est(0, "included in the generation rate")

    def hours(prompt: float, new: float, calls: float = 0.0) -> float:
        if dev == "scripted":
            return calls / tps.value / 3600
        return (new / tps.value + (prompt / pre.value if pre.value else 0)) / 3600

    gen_h = hours(g_prompt, g_new, n_all)
    ev_h = hours(ev_tok["prompt"], ev_tok["new"], n_test)
    tr_h = train_tokens / ttps.value / 3600 if ttps.value else 0.0
    unit = {"gpu": "GPU-hours (one GPU)", "cpu": "CPU-hours (this kind of machine)", "scripted": "hours (CPU)"}[dev]
    return {
        "params": label, "model": name, "device": dev, "model_size_b": model_size_b(name, preset),
        "prompt_tokens_counted_by": renderer.why,
        "tasks": rows,
        "generate": {"episodes": Est(n_all, "one episode per train item" + (f" (generate.limit {limit})" if limit else "")).json(),
                     "trial1_correct": Est(exp_t1, "items x trial-1 accuracy").json(),
                     "phases": gen_tokens,
                     "expected_fixes": Est(exp_fix, "reflections x retry accuracy").json(),
                     "k": k, "rounds": gen.rounds, "protocol": gen.protocol},
        "curate": curated,
        "train": train,
        "evaluate": evaluation,
        "disk": {"data_raw_bytes": disk.json()},
        "throughput": {"generated_tokens_per_s": tps.json(), "prompt_tokens_per_s": pre.json(),
                       "train_tokens_per_s": ttps.json()},
        "time": {"unit": unit, "generate": round(gen_h, 2), "train": round(tr_h, 2), "evaluate": round(ev_h, 2),
                 "total": round(gen_h + tr_h + ev_h, 2)},
    }


def _wavg(tasks: list[TaskPlan], f, by: str = "train") -> float:
    w = [(t.train.value if by == "train" else t.test.value) for t in tasks]
    if not sum(w):
        w = [1.0] * len(tasks)
    return sum(f(t) * x for t, x in zip(tasks, w)) / sum(w)


# --------------------------------------------------------------------------------------------------
# a plan against a run

TOLERANCE = 0.15   # the figures a plan must predict within this relative error (episodes, tokens, phase counts)


def compare_run(plan: dict[str, Any], metrics: Path) -> list[dict[str, Any]]:
    """Predicted vs measured for a finished run's metrics folder (generate.json, train/<setting>.json, eval.json,
    curate.json): one row per figure, `checked` for the ones a plan is held to (episodes, calls and tokens per
    generation phase, optimizer steps per trained role, evaluation calls per system and phase); the curated row
    counts are listed, not checked (length and near-duplicate filters and the items' difficulty spread are
    not modelled)."""
    import json

    def load(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ReflectEvoError(f"{path}: cannot read a run's metrics ({e})") from None

    rows: list[dict[str, Any]] = []

    def row(what: str, predicted: Any, measured: Any, checked: bool = True) -> None:
        p = predicted["value"] if isinstance(predicted, dict) else predicted
        err = (abs(p - measured) / measured) if measured else (0.0 if p == measured else None)
        rows.append({"what": what, "predicted": p, "measured": measured,
                     "relative_error": None if err is None else round(err, 4), "checked": checked,
                     "within": err is not None and err <= TOLERANCE})

    gen = load(metrics / "generate.json")
    row("generate episodes", plan["generate"]["episodes"], gen["items"])
    measured = (gen.get("diagnostics") or {}).get("overall", {}).get("tokens", {})
    tot_p = tot_m = 0.0
    for ph, v in plan["generate"]["phases"].items():
        m = measured.get(ph) or {}
        for key in ("calls", "prompt", "new"):
            row(f"generate {ph} {'calls' if key == 'calls' else key + ' tokens'}", v[key], m.get(key, 0))
        tot_p += v["prompt"]["value"] + v["new"]["value"]
        tot_m += m.get("prompt", 0) + m.get("new", 0)
    row("generate tokens, all phases", tot_p, tot_m)
    for setting, v in plan["train"].items():
        path = metrics / "train" / f"{setting}.json"
        if "roles" not in v or not path.exists():
            continue
        got = load(path)
        for role, r in v["roles"].items():
            row(f"train {setting} {role} optimizer steps", r["steps"], (got.get(role) or {}).get("steps", 0))
    ev = load(metrics / "eval.json")
    row("evaluate test items", plan["evaluate"]["test_items"], (ev.get("overall") or {}).get("n", 0))
    for system, phases in plan["evaluate"]["systems"].items():
        diag = ((ev.get("diagnostics") or {}).get(system) or {}).get("overall", {}).get("tokens", {})
        for ph, calls in phases.items():
            row(f"evaluate {system} {ph} calls", calls, (diag.get(ph) or {}).get("calls", 0))
    cur = metrics / "curate.json"
    if cur.exists():
        counts = load(cur).get("counts", {})
        for key, v in plan["curate"].items():
            row(f"curate {key} rows", v, counts.get(key, 0), checked=False)
    return rows


# --------------------------------------------------------------------------------------------------
# text


def _n(v: Any) -> str:
    v = v["value"] if isinstance(v, dict) else v
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer() and abs(v) < 10:
        return f"{v:.3g}"
    return f"{v:,.0f}"


def render_text(plan: dict[str, Any]) -> str:
    """The plan as tables: per task, per generation phase, curated sets, training, evaluation, time; each figure's
    assumption beside it."""
    out = [f"plan for {plan['params']}: model {plan['model']} ({plan['device']}"
           + (f", {plan['model_size_b']:g}B" if plan.get("model_size_b") else "") + ")",
           f"prompt tokens: {plan['prompt_tokens_counted_by']}", ""]
    out += ["| task | train items | test items | trial-1 acc | retry acc | reflections | fixes |",
            "|---|---|---|---|---|---|---|"]
    for r in plan["tasks"]:
        out.append(f"| {r['task']} | {_n(r['train_items'])} | {_n(r['test_items'])} | {r['trial1_accuracy']['value']:.3f} "
                   f"| {r['retry_accuracy']['value']:.3f} | {_n(r['reflections'])} | {_n(r['expected_fixes'])} |")
    out += ["", "assumptions per task:"]
    for r in plan["tasks"]:
        out.append(f"- {r['task']}: train {r['train_items']['why']}; test {r['test_items']['why']}; trial-1 acc "
                   f"{r['trial1_accuracy']['why']}; retry acc {r['retry_accuracy']['why']}; generated tokens "
                   + ", ".join(f"{k} {v['value']} ({v['why']})" for k, v in r["new_tokens_per_call"].items()))
    g = plan["generate"]
    out += ["", f"generate: {_n(g['episodes'])} episodes (k {g['k']}, {g['rounds']} round(s), {g['protocol']}), "
                f"expected trial-1 right {_n(g['trial1_correct'])}, fixes {_n(g['expected_fixes'])}",
            "| phase | calls | prompt tokens | generated tokens |", "|---|---|---|---|"]
    for ph, v in g["phases"].items():
        out.append(f"| {ph} | {_n(v['calls'])} | {_n(v['prompt'])} | {_n(v['new'])} |")
    out += ["", "curate: " + ", ".join(f"{k} {_n(v)}" for k, v in plan["curate"].items())]
    out += [f"  ({v['why']})" for v in plan["curate"].values()]
    out += ["", "| setting | rows | role: optimizer steps / tokens |", "|---|---|---|"]
    for s, v in plan["train"].items():
        if "status" in v:
            out.append(f"| {s} | - | {v['status']} |")
        else:
            out.append(f"| {s} | {_n(v['rows'])} | " + "; ".join(
                f"{role}: {_n(x['steps'])} / {_n(x['tokens'])}" for role, x in v["roles"].items()) + " |")
    steps_why = {x["steps"]["why"] for v in plan["train"].values() for x in v.get("roles", {}).values()}
    out += [f"  steps: {w}" for w in sorted(steps_why)]
    e = plan["evaluate"]
    out += ["", f"evaluate: {_n(e['test_items'])} test items, trial 1 {_n(e['trial1_calls'])} calls; "
                + "; ".join(f"{s} " + ", ".join(f"{ph} {_n(c)}" for ph, c in v.items()) for s, v in e["systems"].items()),
            f"  tokens: prompt {_n(e['tokens']['prompt'])}, generated {_n(e['tokens']['new'])}"]
    d = plan["disk"]["data_raw_bytes"]
    out += ["", f"data/raw: {d['value'] / 1e9:.2f} GB ({d['why']})"]
    th, tm = plan["throughput"], plan["time"]
    out += [f"throughput: generation {_n(th['generated_tokens_per_s'])}/s ({th['generated_tokens_per_s']['why']}); "
            f"prompts {_n(th['prompt_tokens_per_s'])}/s ({th['prompt_tokens_per_s']['why']}); training "
            f"{_n(th['train_tokens_per_s'])}/s ({th['train_tokens_per_s']['why']})",
            f"time, {tm['unit']}: generate {tm['generate']}, train {tm['train']}, evaluate {tm['evaluate']}, "
            f"total {tm['total']}"]
    return "\n".join(out)


__all__ = ["THROUGHPUT", "TOLERANCE", "Est", "build_plan", "compare_run", "default_tokens_per_s", "model_size_b", "render_text"]
