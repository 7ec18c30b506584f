"""One protocol, several callers: for the same items, seeds and backend, generate, evaluate and the RL rollout send
the same prompts and record the same verdicts (they all run `reflectevo.protocol.rounds`)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from helpers import ScriptedBackend

from reflectevo import evaluation as ev
from reflectevo.config.sections import EvaluateConfig, GenerateConfig
from reflectevo.training.config import RLHyper
from reflectevo.generation.episodes import Stats, run_chunk
from reflectevo.generation.keys import make_spec
from reflectevo.protocol.rounds import Job, reflect_retry_step, retry_messages, run_rounds
from reflectevo.tasks import Item
from reflectevo.tasks.registry import get_task

TASK = get_task("rg/chain_sum")
ITEMS = [Item(id=f"q{i}", task=TASK.name, question=f"State the final answer to the following arithmetic problem: "
              f"{i} + 1 =", answer=str(i + 1)) for i in range(5)]
TASKS = {TASK.name: TASK}


def respond(prompt: str, sampling) -> str:
    """Deterministic answers to the last user turn: trial 1 right on even items, a retry right on items 1 and 2,
    a fixed reflection."""
    prompt = prompt[prompt.rfind("user>\n") if "user>\n" in prompt else prompt.rfind("user\n"):]
    if "improves through self-reflection" in prompt:
        return "I should recompute the sum."
    i = int(re.findall(r"problem: (\d+) \+ 1 =", prompt)[-1])
    retry = "attempted this question before" in prompt
    right = i in (1, 2) if retry else i % 2 == 0
    return f" ok.\nAction: Finish[{i + 1 if right else 99}]"


def sent(backend: ScriptedBackend) -> list[str]:
    return [p for prompts, _ in backend.calls for p in prompts]


def _generate(cfg: GenerateConfig):
    backend = ScriptedBackend(respond)
    spec = make_spec({"preset": "p", "source": "s", "revision": "r"}, "float32", cfg)
    episodes = run_chunk(ITEMS, TASKS, backend, spec, Stats())
    return backend, episodes


def _evaluate(cfg: EvaluateConfig, reflect: bool):
    backend = ScriptedBackend(respond)
    t1 = ev.trial1(ITEMS, TASKS, backend, cfg)
    rows = (ev.reflect_then_retry(ITEMS, TASKS, t1, backend, backend, cfg) if reflect
            else ev.retry_without_reflection(ITEMS, TASKS, t1, backend, cfg))
    return backend, t1, rows


def _gen_cfg(**kw) -> GenerateConfig:
    return GenerateConfig(**{"k": 1, "temperature": 0.0, "retry_temperature": 0.0, "max_new_tokens_trial": 16,
                             "max_new_tokens_reflection": 16, "use_previous_trial": True, "name_rejected": False, **kw})


def _eval_cfg(**kw) -> EvaluateConfig:
    return EvaluateConfig(**{"max_new_tokens_trial": 16, "max_new_tokens_reflection": 16, "name_rejected": False, **kw})


@pytest.mark.parametrize("protocol,reflect,rounds", [("intrinsic", True, 1), ("intrinsic", True, 2),
                                                     ("oracle", False, 1), ("oracle", False, 2)])
def test_generate_and_evaluate_send_the_same_prompts_and_record_the_same_verdicts(protocol, reflect, rounds):
    """Greedy, one sample, no demand instruction (the intrinsic prompt takes none; the w/o-reflection retry takes
    none): the generate stage and the evaluate stage are the same protocol, call for call."""
    gb, episodes = _generate(_gen_cfg(protocol=protocol, reflect=reflect, rounds=rounds))
    eb, t1, rows = _evaluate(_eval_cfg(protocol=protocol, rounds=rounds), reflect)
    assert sent(gb) == sent(eb) and len(sent(gb)) > len(ITEMS)
    assert [c[1] for c in gb.calls] == [c[1] for c in eb.calls]          # the same Sampling for every call
    for ep, r1, row in zip(episodes, t1, rows):
        assert ep["trial1"]["prompt"] == r1["t1_prompt"] and ep["trial1"]["correct"] == r1["t1_correct"]
        assert ep["trial1"]["attempt"] == r1["t1"] and ep["trial1"]["extracted"] == r1["t1_answer"]
        samples = ep["samples"]
        if not samples:
            assert "t2_prompt" not in row
            continue
        (s,) = samples
        trials = [s["trial2"], *(later["trial"] for later in s.get("later_rounds", []))]
        assert [t["correct"] for t in trials] == row["correct_by_round"][1:1 + len(trials)]
        assert s["trial2"]["prompt"] == row["t2_prompt"] and s["trial2"]["attempt"] == row["t2"]
        if reflect:
            assert s["reflection"]["prompt"] == row["reflection_prompt"] and s["reflection"]["text"] == row["reflection"]
        for later, rec in zip(s.get("later_rounds", []), row.get("rounds", [])):
            assert later["trial"]["prompt"] == rec["t2_prompt"] and later["trial"]["correct"] == rec["t2_correct"]


def test_the_oracle_rounds_stop_at_a_right_answer_in_every_caller():
    """Oracle with reflection: generate's prompts carry a demand instruction (evaluate's the test prompt), so the
    reflection prompts differ by design; who reflects, the retry verdicts and the rounds do not."""
    gb, episodes = _generate(_gen_cfg(protocol="oracle", rounds=2))
    eb, _, rows = _evaluate(_eval_cfg(protocol="oracle", rounds=2), True)
    for ep, row in zip(episodes, rows):
        gen_by_round = [ep["trial1"]["correct"]]
        for s in ep["samples"]:
            gen_by_round += [s["trial2"]["correct"], *(x["trial"]["correct"] for x in s.get("later_rounds", []))]
        gen_by_round += [gen_by_round[-1]] * (3 - len(gen_by_round))
        assert gen_by_round == row["correct_by_round"]
    assert len(sent(gb)) == len(sent(eb))


def test_the_rl_rollout_reflects_on_evaluations_prompt_and_judges_the_same(tiny_preset, monkeypatch):
    """grpo_reflect_retry's rollout: its reflection prompt is evaluation's (test prompt, oracle notice), its retry
    turn carries evaluation's retry prompt text, and its reward is the verdict evaluation records for the same
    retry text."""
    import torch

    from reflectevo.backends.hf import TransformersBackend
    from reflectevo.generation.keys import make_spec as spec_of
    from reflectevo.models.load import load_tokenizer
    from reflectevo.training.data import examples, rl_rows
    from reflectevo.training.rollout import ReflectRetryRollout

    tok = load_tokenizer("tiny-random", tiny_preset)

    class Policy(ScriptedBackend):
        def render(self, messages):          # as TransformersBackend.render: the model's chat template
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # trial-1 episodes of the items (generate on the same backend), then the RL rows of the failed ones
    gen = Policy(respond)
    spec = spec_of({"preset": "p", "source": "s", "revision": "r"}, "float32", _gen_cfg(protocol="oracle", k=1))
    episodes = {ep["episode_id"]: ep for ep in run_chunk(ITEMS, TASKS, gen, spec, Stats())}
    rows = rl_rows(episodes, "oracle")
    ex = examples("grpo_reflect_retry", rows)["reflector"]
    policy = Policy(respond)
    monkeypatch.setattr(TransformersBackend, "around", classmethod(lambda cls, *a, **k: policy))

    class Trainer:
        model = torch.nn.Linear(1, 1)
        eos_token_ids = [tok.eos_token_id]
        accelerator = type("A", (), {"unwrap_model": staticmethod(lambda m: m)})()

    hp = dataclasses.replace(RLHyper(), temperature=1.0, max_completion_length=16, max_new_tokens_retry=16)
    out = ReflectRetryRollout(tok, ex, hp)([e["prompt"] for e in ex], Trainer())
    # evaluation of the same failed attempts, on the same backend, greedy (the scripted policy ignores temperature)
    items = [Item.from_dict(json.loads(e["item"])) for e in ex]
    jobs = [Job(it, TASK, latest=e["trial1"], rejected=e["rejected"] or None) for it, e in zip(items, ex)]
    eval_backend = Policy(respond)
    espec = dataclasses.replace(ev.round_spec(_eval_cfg(protocol="oracle", name_rejected=True)),
                                max_new_tokens_trial=16, max_new_tokens_reflection=16)
    run_rounds(jobs, 1, True, reflect_retry_step(eval_backend, eval_backend, espec))
    rl_reflection_prompts = [p for p in policy.calls[0][0]]
    assert rl_reflection_prompts == [j.steps[0].reflection.prompt for j in jobs]
    for rl_retry_prompt, job, e in zip(policy.calls[1][0], jobs, ex):
        before = Job(job.item, TASK, latest=e["trial1"], rejected=e["rejected"] or None)   # as round 1 saw it
        eval_messages = retry_messages(before, job.steps[0].reflection, espec)
        assert eval_messages[-1]["content"] in rl_retry_prompt   # the retry turn holds evaluation's retry text
    assert out["retry_correct"] == [j.steps[0].retry.verdict.correct for j in jobs]
    assert out["retry"] == [j.steps[0].retry.text for j in jobs]
    assert any(out["retry_correct"]) and not all(out["retry_correct"])
