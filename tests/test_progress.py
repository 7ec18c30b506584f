"""What a person watching a stage sees: the stage lines, a generation bar that moves with every backend call (and
with every decoding step of the transformers backend), training as a bar with the loss instead of printed dicts,
and no library warnings in a stage's stderr."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ScriptedBackend, arithmetic_responder, tiny_params_dict

from reflectevo.config.sections import EvaluateConfig, GenerateConfig

from reflectevo.config.presets import ModelPreset
from reflectevo.progress import Meter, Metered, Relay, announce, metered, model_label
from reflectevo.protocol.rounds import PhaseBackends
from reflectevo.sampling import Generation, Sampling

ROOT = Path(__file__).resolve().parents[1]


# --- the stage lines -------------------------------------------------------------------------------------------

def test_the_generate_line_says_what_runs_on_how_many_items_with_which_model():
    from reflectevo.generation.stage import describe

    label = model_label("smollm2-135m", ModelPreset(source="gguf-package", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
                        "bfloat16")
    assert label == "SmolLM2-135M-Instruct, bf16"
    assert describe(64, GenerateConfig(k=3), label) == \
        "64 items × trial → reflect (k=3, on failed trial 1s) → retry on SmolLM2-135M-Instruct, bf16"
    assert describe(1, GenerateConfig(k=2, protocol="intrinsic", rounds=3), "m") == \
        "1 item × trial → reflect (k=2, on every trial 1, not told if it failed) → retry, 3 rounds on m"
    assert describe(5, GenerateConfig(k=3, reflect=False), "m", adapters="models/one_stage") == \
        "5 items × trial → retry without reflection on m; reflections and retries by models/one_stage's adapters"


def test_the_train_line_names_data_budget_and_model():
    from reflectevo.config.presets import LoraConfig
    from reflectevo.training.config import SFTHyper
    from reflectevo.settings import setting
    from reflectevo.training.progress import describe_plan, describe_result

    hp = SFTHyper(max_steps=10, batch_size=4, max_length=768)
    line = describe_plan(setting("two_stage"), 53, 4, hp, "lora", LoraConfig(r=8), "SmolLM2-135M-Instruct, bf16")
    assert line == ("53 D+ rows (4 held out) → SFT, LoRA r=8, 2 adapters (reflector, corrector), 10 steps each × "
                    "batch 4, max_length 768 on SmolLM2-135M-Instruct, bf16")
    hp = SFTHyper(max_steps=-1, epochs=2.0, batch_size=4)
    assert "6 steps" in describe_plan(setting("dpo_pm"), 10, 0, hp, "lora", LoraConfig(r=8), "m")   # 2 x ceil(10/4)
    result = {"trained": True, "reflector": {"steps": 10, "first_loss": 2.66, "last_loss": 1.9, "seconds": 94.2},
              "corrector": {"steps": 10, "first_loss": 1.2, "last_loss": 0.8, "seconds": 61}}
    assert describe_result("two_stage", result) == ("two_stage: reflector: 10 steps, loss 2.66 → 1.9, 1 min 34 s; "
                                                    "corrector: 10 steps, loss 1.2 → 0.8, 1 min 01 s")
    assert describe_result("rloo", {"trained": False, "reason": "not enabled"}) == "rloo: not trained: not enabled"


def test_the_evaluate_line_lists_systems_and_skips():
    from reflectevo.systems import describe

    line = describe(50, ["base_noreflect", "base_reflect", "one_stage"], {"rloo": "disabled"},
                    EvaluateConfig(protocol="oracle", rounds=1), "m, bf16")
    assert line == ("50 test items × 3 systems (base_noreflect, base_reflect, one_stage; skipped: rloo), trial 1 "
                    "shared, oracle protocol on m, bf16")


def test_a_terminal_without_a_size_still_gets_a_bar(monkeypatch):
    """A pseudo-terminal given no size reports 0 x 0; tqdm then hides every bar (tqdm/std.py: it asks the screen's
    shape for sys.stderr when no size is given, and draws only bars above its last row)."""
    import os as _os

    import tqdm.std

    from reflectevo.progress import bar_width

    class Tty(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return 99

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(tqdm.std, "_screen_shape_wrapper", lambda: (lambda fp: (0, 0)))
    monkeypatch.setattr(_os, "get_terminal_size", lambda fd: _os.terminal_size((0, 0)))
    assert bar_width(tty) == {"ncols": 100, "nrows": 40}
    m = Meter("generate", 2, min_interval=0)
    m.step(2, 10)
    m.close()
    assert "generate: 100%" in tty.getvalue() and "2/2" in tty.getvalue()
    monkeypatch.setattr(_os, "get_terminal_size", lambda fd: _os.terminal_size((120, 40)))
    assert bar_width(tty) == {"dynamic_ncols": True}
    assert bar_width(io.StringIO()) == {"dynamic_ncols": True}     # not a terminal: tqdm's own rules


def test_announce_prints_one_line():
    out = io.StringIO()
    assert announce("curate", "64 episodes", file=out) == "curate: 64 episodes"
    assert out.getvalue() == "curate: 64 episodes\n"


# --- the generation bar ----------------------------------------------------------------------------------------

def test_a_meter_counts_generations_and_tokens_and_never_shows_more_done_than_planned():
    out = io.StringIO()
    m = Meter("generate", 10, file=out, min_interval=0)
    m.step(3, 30)
    m.expect(-5)                    # samples not needed after trial 1
    assert (m.done, m.total, m.tokens) == (3, 5, 30)
    m.step(4, 8)                    # an answer step the plan did not foresee
    assert (m.done, m.total) == (7, 7)
    m.close()
    text = out.getvalue()
    assert "generate" in text and "7/7" in text and "tok/s" in text


class StepwiseBackend:
    """A backend that, like the transformers one, reports rows finishing while it decodes."""

    reports_progress = True
    progress = None
    name = "stepwise"

    def __init__(self):
        self.seen: list[int] = []     # the meter's count at each decoding step

    def generate(self, prompts, sampling, seeds=None):
        for _ in prompts:             # one row ends per step, two tokens drawn per step
            self.progress(1, 2)
            self.seen.append(self.meter.done)
        return [Generation("x", 1, 2) for _ in prompts]


def test_a_reporting_backend_moves_the_bar_inside_a_call():
    meter = Meter("m", 4, enabled=False)
    inner = StepwiseBackend()
    inner.meter = meter
    b = Metered(inner, meter)
    b.generate(["a", "b", "c"], Sampling(4))
    assert inner.seen == [1, 2, 3] and meter.tokens == 6
    assert inner.progress is None     # the hook is only set for the call
    assert b.name == "stepwise"       # everything else is the backend's


def test_a_call_beyond_the_plan_shows_as_work_to_do_while_it_runs():
    """An answer step (trials that ended without an answer) is not in the plan: the total grows when it starts,
    so the bar does not sit at 100% while it runs."""
    meter = Meter("m", 3, enabled=False)
    meter.step(3, 0)
    seen = []
    b = Metered(ScriptedBackend(lambda p, s: seen.append((meter.done, meter.total)) or "x"), meter)
    b.generate(["a", "b"], Sampling(4))
    assert seen == [(3, 5), (3, 5)] and (meter.done, meter.total) == (5, 5)


def test_a_backend_that_reports_nothing_moves_the_bar_once_per_call():
    meter = Meter("m", 10, enabled=False)
    b = Metered(ScriptedBackend(lambda p, s: "Action: Finish[1]"), meter)
    b.generate(["a b c", "d"], Sampling(4))
    assert (meter.done, meter.tokens) == (2, 4 + 10)   # ScriptedBackend: a prompt token per word, 5 new tokens


def test_the_transformers_backend_reports_every_decoding_step(tiny_model_dir):
    from reflectevo.backends.hf import TransformersBackend

    b = TransformersBackend("tiny", ModelPreset(source="hub", path=str(tiny_model_dir), dtype="float32"))
    steps: list[tuple[int, int]] = []
    b.progress = lambda finished, tokens: steps.append((finished, tokens))
    gens = b.generate([b.render([{"role": "user", "content": q}]) for q in ("2 + 3?", "Is a cat an animal?", "Hi")],
                      Sampling(6))
    prefill, decoding = steps[0], steps[1:]
    assert prefill == (0, b.prefilled_tokens) and prefill[1] > 0     # the prompts, computed before any row ends
    assert 1 < len(decoding) <= 6
    assert sum(f for f, _ in decoding) == 3                     # every row ends once
    assert decoding[0][1] == 3                                  # all three rows drew a token at step 1
    assert sum(t for _, t in decoding) >= sum(g.n_new_tokens for g in gens)


def test_phase_backends_stay_shared_when_metered():
    base, adapter = ScriptedBackend(lambda p, s: ""), ScriptedBackend(lambda p, s: "")
    phases = metered(PhaseBackends(base, reflector=adapter), Meter("m", 1, enabled=False))
    assert isinstance(phases, PhaseBackends) and phases.trial is phases.corrector and phases.reflector is not phases.trial
    assert phases.trial.wrapped is base and phases.reflector.wrapped is adapter


def test_generate_moves_its_bar_with_every_backend_call(tmp_path, monkeypatch):
    import reflectevo.generation.run as run
    from reflectevo.generation.keys import make_spec
    from reflectevo.tasks.registry import get_task

    meters: list = []

    class Recording(Meter):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.trace: list[int] = []
            meters.append(self)

        def step(self, finished=0, tokens=0):
            super().step(finished, tokens)
            self.trace.append(self.done)

    monkeypatch.setattr(run, "Meter", Recording)
    task = get_task("rg/chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})
    items = task.load("train", 4)
    backend = ScriptedBackend(arithmetic_responder())
    spec = make_spec({"preset": "scripted", "source": "none", "revision": "0"}, "float32", GenerateConfig(k=3))
    run.generate_keys(items, {task.name: task}, lambda: backend, spec, tmp_path, chunk_size=2, progress=False,
                      total=len(items))
    (m,) = meters
    calls = len(backend.calls)
    assert calls == 6 and len(m.trace) == calls           # trial, reflect, retry per chunk of 2 items
    assert m.trace == sorted(m.trace) and len(set(m.trace)) == calls   # it moved at every call
    # planned at most 4 x (1 + 3 x 2); every trial 1 failed, so the plan held and was met exactly
    assert m.done == m.total == sum(len(c[0]) for c in backend.calls) == 4 + 4 * 3 * 2


def test_evaluate_draws_one_bar_per_system(capsys):
    relay = Relay()
    relay.start("evaluate base_reflect", 2)
    relay.step(2, 4)
    relay.start("evaluate one_stage", 1)
    relay.step(1, 1)
    relay.finish()
    err = capsys.readouterr().err
    assert "evaluate base_reflect" in err and "evaluate one_stage" in err and "2/2" in err and "1/1" in err


# --- training --------------------------------------------------------------------------------------------------

def test_the_training_bar_shows_steps_loss_and_no_dicts():
    from reflectevo.training.progress import progress_callback

    out = io.StringIO()
    cb = progress_callback("one_stage", file=out)
    state = SimpleNamespace(max_steps=3, global_step=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    for step, loss in ((1, 2.5), (2, 2.25), (3, 2.0)):
        state.global_step = step
        cb.on_step_end(None, state, None)
        cb.on_log(None, state, None, logs={"loss": loss, "grad_norm": 0.5, "learning_rate": 1e-4})
    cb.on_train_end(None, state, None)
    text = out.getvalue()
    assert "one_stage" in text and "3/3" in text and "loss 2.000" in text
    assert "{" not in text and "grad_norm" not in text


def test_a_resumed_run_starts_its_bar_at_its_step():
    from reflectevo.training.progress import progress_callback

    out = io.StringIO()
    cb = progress_callback("x", file=out)
    cb.on_train_begin(None, SimpleNamespace(max_steps=10, global_step=6, is_world_process_zero=True), None)
    assert cb.bar.n == 6
    cb.on_train_end(None, None, None)


def test_the_trainers_dict_printer_is_replaced(tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from reflectevo.training.progress import replace_printer

    args = TrainingArguments(output_dir=str(tmp_path), disable_tqdm=True, use_cpu=True, report_to="none")
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
    assert any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)
    replace_printer(trainer, "x")
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert "PrinterCallback" not in names and "TrainProgress" in names


@pytest.mark.slow
def test_a_train_stage_on_the_tiny_model_prints_no_library_warnings(tmp_path):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(ROOT / "params.yaml", steps=2), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        env.pop(k, None)
    subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--params", str(params), "--out",
                    str(tmp_path / "sources")], check=True, env=env, cwd=tmp_path, capture_output=True)
    res = subprocess.run([sys.executable, str(ROOT / "stages/train.py"), "--setting", "sft_qa", "--params", str(params),
                          "--train-data", str(tmp_path / "sources/train.jsonl"), "--out", str(tmp_path / "models/sft_qa"),
                          "--metrics", str(tmp_path / "m.json")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr
    for noise in ("{'loss'", "Tokenizing", "Loading weights", "Truncating"):
        assert noise not in res.stdout + res.stderr
    assert "train@sft_qa: 12 train items → SFT" in res.stderr
    assert "sft_qa: 100%" in res.stderr and "loss" in res.stderr
    assert res.stdout.startswith("train@sft_qa: answerer: 2 steps, loss ")
