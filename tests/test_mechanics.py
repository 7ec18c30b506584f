"""Trial mechanics: a trial ends at its first complete answer, the first answer is judged, every
backend returns the same text and verdict, stop reasons are recorded, bad prompting is refused."""

from __future__ import annotations

import pytest
from helpers import ScriptedBackend

from reflectevo.backends.registry import make_backend
from reflectevo.errors import ReflectEvoError
from reflectevo.protocol.mechanics import REFLECTION_STOPS, attempt_text, render_trial, trial_sampling, trials
from reflectevo.sampling import Generation, Sampling, finish_text, stop_position
from reflectevo.tasks import Item, check_prompting
from reflectevo.tasks.registry import get_task

CHAIN = get_task("rg/chain_sum")
ITEM = Item(id="x", task="rg/chain_sum", question="State the final answer to the following arithmetic problem: 4 + 3 =",
            answer="7")
RAMBLE = "Question: State the final answer to the following arithmetic problem: 1 + 1 =\nThought: 1 + 1 = 2.\n"


def run_trials(backend, items, messages, max_new_tokens, prefix=True):
    """Render and generate one chain_sum trial per item, as the protocol's trials are sent."""
    prompts = [render_trial(backend, CHAIN, m, prefix) for m in messages]
    return prompts, trials(backend, prompts, [CHAIN] * len(items), max_new_tokens)


def test_stop_position_plain_strings_cut_before_and_the_answer_pattern_after():
    s = trial_sampling(CHAIN, 64)
    assert stop_position(" 4 + 3 = 7.\nAction: Finish[7] and more", s) == len(" 4 + 3 = 7.\nAction: Finish[7]")
    assert stop_position(" 4 + 3 = 7.\nQuestion: again", s) == len(" 4 + 3 = 7.")
    assert stop_position(" thinking, no answer yet", s) is None
    # the stop completed first wins
    both = " x\nQuestion: y Finish[3]"
    assert stop_position(both, s) == 2
    assert finish_text(" Finish[7]\nQuestion: z", s, "eos") == (" Finish[7]", "stop")
    assert finish_text(" no stop", s, "length") == (" no stop", "length")


@pytest.mark.parametrize("text,correct", [
    (" 4 + 3 = 7.\nAction: Finish[7]\n" + RAMBLE + "Action: Finish[<answer>]", True),   # gold, then junk
    (" 4 + 3 = 7.\nAction: Finish[7]\nAction: Finish[9]", True),                        # gold, then another
    (" 4 + 3 = 8.\nAction: Finish[8]\n" + RAMBLE + "Action: Finish[7]", False),          # wrong, then the gold
    (" 4 + 3 = 7.\nAction: Finish[<answer>]\nAction: Finish[7]", False),                  # the placeholder first
])
def test_first_complete_answer_is_judged(text, correct):
    assert CHAIN.verify(text, ITEM).correct is correct


def _stop_early(text: str, sampling: Sampling) -> str:
    """What the transformers backend produces: generation halts once a stop is reached, usually inside
    the token after it, so a few characters may follow before the cut."""
    cut = stop_position(text, sampling)
    return text if cut is None else text[:cut + 3]


@pytest.mark.parametrize("raw", [
    " 4 + 3 = 7.\nAction: Finish[7]\n" + RAMBLE + "Action: Finish[<answer>]",
    " 4 + 3 = 8.\nAction: Finish[8]\n" + RAMBLE,
    " 4 + 3 =" + " 7" * 40,
])
def test_every_backend_returns_the_same_text_and_verdict(raw):
    s = trial_sampling(CHAIN, 64)
    full_text = finish_text(raw, s, "length")                  # vLLM / OpenAI: generated on, cut afterwards
    early = finish_text(_stop_early(raw, s), s, "length")     # transformers: stopped while generating
    assert full_text == early
    assert CHAIN.verify(full_text[0], ITEM) == CHAIN.verify(early[0], ITEM)


def test_decode_loop_matches_model_generate_row_by_row(tiny_preset):
    """The transformers backend's own decode loop (rows leave the batch when they end) draws exactly the
    tokens of `model.generate` with the same per-row sampler; with stops, each row is its unstopped
    text cut at its own first stop while the other rows go on."""
    from transformers import LogitsProcessorList

    from reflectevo.backends.hf import SeededSampler


    b = make_backend("tiny-random", tiny_preset)
    prompts = [b.render([{"role": "user", "content": c}]) for c in ("hello there", "what is 2 + 2 ?",
                                                                     "a much longer prompt about cats and dogs")]
    seeds = [5, 6, 7]
    plain = Sampling(16, temperature=1.0)
    enc = b.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ref_ids = b.model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=b.tokenizer.pad_token_id,
                               logits_processor=LogitsProcessorList([SeededSampler(seeds, 1.0, 1.0)]))
    ref = b.tokenizer.batch_decode(ref_ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    ours = b.generate(prompts, plain, seeds=seeds)
    assert [g.text for g in ours] == ref
    # stop strings taken from two rows' own texts: those rows stop there, the third runs on
    stops = (ref[1][8:14], ref[2][5:11])
    assert stops[0].strip() and stops[1].strip() and not any(x in ref[0] for x in stops)
    stopped = Sampling(16, temperature=1.0, stop=stops)
    got = b.generate(prompts, stopped, seeds=seeds)
    assert [g.text for g in got] == [finish_text(t, stopped, "length")[0] for t in ref]
    assert [g.stop_reason for g in got][1:] == ["stop", "stop"] and got[0].text == ref[0]
    assert got[1].n_new_tokens < ours[1].n_new_tokens


def test_transformers_backend_records_stop_reasons(tiny_preset):


    b = make_backend("tiny-random", tiny_preset)
    prompt = b.render([{"role": "user", "content": "hi"}])
    # the synthetic model writes mostly newlines: a stop on "\n" ends at once, none runs to the budget
    out = b.generate([prompt, prompt], Sampling(6, stop=("\n",)))
    plain = b.generate([prompt], Sampling(6))
    assert all(g.stop_reason in ("stop", "eos") for g in out) and all("\n" not in g.text for g in out)
    assert plain[0].stop_reason in ("length", "eos")
    assert plain[0].stop_reason != "length" or plain[0].n_new_tokens == 6


def test_trials_start_with_the_prefix_and_the_attempt_keeps_it():
    seen = []

    def respond(prompt, sampling):
        seen.append((prompt, sampling))
        return " 4 + 3 = 7.\nAction: Finish[7]\nQuestion: more"

    backend = ScriptedBackend(respond)
    prompts, gens = run_trials(backend, [ITEM], [[{"role": "user", "content": "q"}]], 32)
    assert prompts[0].endswith("Thought:") and seen[0][1].stop_regex == CHAIN.answer_stop()
    assert seen[0][1].stop == CHAIN.ramble_stops() and "\nQuestion:" in CHAIN.ramble_stops()
    assert seen[0][1].stop_patterns == CHAIN.ramble_patterns() != ()
    assert gens[0].text == " 4 + 3 = 7.\nAction: Finish[7]" and gens[0].stop_reason == "stop"
    assert attempt_text(prompts[0], gens[0].text, CHAIN) == "Thought: 4 + 3 = 7.\nAction: Finish[7]"
    # the SFT-on-answers baseline answers without a thought
    prompts, _ = run_trials(backend, [ITEM], [[{"role": "user", "content": "q"}]], 32, prefix=False)
    assert not prompts[0].endswith("Thought:")


def test_reflection_stops_before_a_new_block():
    from reflectevo.protocol.mechanics import reflection_sampling

    s = reflection_sampling(64, 0.8, 1.0, 3)
    assert s.stop == REFLECTION_STOPS and s.stop_regex is None
    assert finish_text("I dropped the last term.\nAction: Finish[3]", s, "eos") == ("I dropped the last term.", "stop")


def test_openai_and_vllm_backends_pass_stops_and_cut_the_pattern():
    from types import SimpleNamespace

    from reflectevo.backends.vllm_backend import _generation

    s = trial_sampling(CHAIN, 64)
    comp = SimpleNamespace(text=" 4 + 3 = 7.\nAction: Finish[7]\nAction: Finish[8]", token_ids=[1] * 20,
                           finish_reason="length", stop_reason=None)
    g = _generation(SimpleNamespace(prompt_token_ids=[1, 2], outputs=[comp]), s)
    assert g == Generation(" 4 + 3 = 7.\nAction: Finish[7]", 2, 20, "stop")
    comp = SimpleNamespace(text=" thinking", token_ids=[1] * 3, finish_reason="stop", stop_reason="\nQuestion:")
    assert _generation(SimpleNamespace(prompt_token_ids=[1], outputs=[comp]), s).stop_reason == "stop"
    comp = SimpleNamespace(text=" thinking", token_ids=[1] * 3, finish_reason="stop", stop_reason=None)
    assert _generation(SimpleNamespace(prompt_token_ids=[1], outputs=[comp]), s).stop_reason == "eos"


# -- bad input ------------------------------------------------------------------------------------------
def _yaml_task(tmp_path, extra: str, shots: str | None = None):
    (tmp_path / "q.jsonl").write_text('{"id": "1", "question": "1 + 1?", "answer": "2"}\n')
    if shots is not None:
        (tmp_path / "shots.yaml").write_text(shots)
    (tmp_path / "t.yaml").write_text("answer_type: number\nsource: q.jsonl\n" + extra)
    return get_task(str(tmp_path / "t.yaml"))


def test_a_stop_pattern_that_never_matches_is_refused(tmp_path):
    task = _yaml_task(tmp_path, "answer_stop: 'Done<<[0-9]+>>'\n")
    with pytest.raises(ReflectEvoError, match=r"task .*t\.yaml: answer_stop .* never matches the task's answer form"):
        check_prompting(task)
    task = _yaml_task(tmp_path, "answer_stop: 'Finish[('\n")
    with pytest.raises(ReflectEvoError, match=r"answer_stop .* is not a valid regular expression"):
        check_prompting(task)


def test_an_empty_fewshot_file_is_refused(tmp_path):
    task = _yaml_task(tmp_path, "fewshot: shots.yaml\n", shots="examples: []\n")
    with pytest.raises(ReflectEvoError, match=r"shots\.yaml: task .*t\.yaml: key 'examples' is empty or missing"):
        task.fewshot()
    with pytest.raises(ReflectEvoError, match=r"fewshot file .*nope\.yaml not found"):
        get_task("rg/chain_sum", {"fewshot": str(tmp_path / "nope.yaml")})


def test_a_task_without_an_answer_form_is_refused(tmp_path):
    task = _yaml_task(tmp_path, "answer_format: ''\n")
    with pytest.raises(ReflectEvoError, match=r"task .*t\.yaml: answer_format is empty"):
        check_prompting(task)


def test_custom_fewshot_file_is_used_and_checked(tmp_path):
    task = _yaml_task(tmp_path, "fewshot: shots.yaml\n",
                      shots="examples:\n  - {question: '2 + 2?', thought: '2 + 2 = 4.', answer: '4'}\n")
    assert task.fewshot() == [("2 + 2?", "Thought: 2 + 2 = 4.\nAction: Finish[4]")]
    check_prompting(task)


def test_prepare_stage_refuses_bad_prompting_with_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    _yaml_task(tmp_path, "answer_stop: 'Done<<[0-9]+>>'\n")
    (tmp_path / "q.jsonl").write_text('{"id": "1", "question": "1 + 1?", "answer": "2"}\n'
                                      '{"id": "2", "question": "2 + 2?", "answer": "4"}\n')
    (tmp_path / "t.yaml").write_text("answer_type: number\nsplits: {train: q.jsonl, test: q.jsonl}\n"
                                     "answer_stop: 'Done<<[0-9]+>>'\n")
    params = {"prepare": {"seed": 0, "tasks": [{"name": str(tmp_path / "t.yaml"), "n_train": 1, "n_test": 1}]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run([sys.executable, "stages/prepare.py", "--params", str(tmp_path / "params.yaml"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "never matches the task's answer form" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shared_prompt_prefix_is_computed_once_with_the_same_tokens(tiny_preset, monkeypatch):
    """Prompts of one phase share their head (few-shot block, template): computing it once and copying
    its cache per row gives the tokens of the full per-row prefill."""
    import reflectevo.backends.hf as hf

    b = make_backend("tiny-random", tiny_preset)
    head = "Solve the task. Think step by step, then answer. " * 4
    prompts = [b.render([{"role": "user", "content": head + q}]) for q in ("one", "two and three", "four five six seven")]
    s = Sampling(12, temperature=1.0)
    shared = b.generate(prompts, s, seeds=[1, 2, 3])
    computed = b.prefilled_tokens
    monkeypatch.setattr(hf, "PREFIX_MIN_TOKENS", 10**9)      # no shared pass: every row prefilled in full
    full = b.generate(prompts, s, seeds=[1, 2, 3])
    assert [g.text for g in shared] == [g.text for g in full]
    assert [g.n_prompt_tokens for g in shared] == [g.n_prompt_tokens for g in full]
    assert computed < b.prefilled_tokens - computed          # the shared pass computed fewer prompt tokens


def test_shared_prefix_attention_gives_the_tokens_and_scores_of_per_row_copies(tiny_preset):
    """The shared head kept once (batch 1, merged into every row's attention) and the head's cache copied
    into every row are the same attention: same greedy and sampled tokens, same likelihood scores, rows
    of different lengths and rows finishing early included."""

    b = make_backend("tiny-random", tiny_preset)
    assert b.cascade, "tiny-random runs SDPA through AttentionInterface: the shared-prefix path must engage"
    head = "Worked examples first. Question: 1 + 1 = ? Thought: 1 + 1 = 2. Action: Finish[2] " * 3
    prompts = [b.render([{"role": "user", "content": head + q}]) for q in
               ("one", "two and three", "four five six seven", "eight " * 12)]
    runs = {}
    for cascade in (True, False):
        b.cascade = cascade
        runs[cascade] = (b.generate(prompts, Sampling(16, temperature=1.0), seeds=[1, 2, 3, 4]),
                         b.generate(prompts, Sampling(16, stop=("\n",))),
                         b.score(prompts, [" Finish[2]", " no", " a longer continuation here", " x"]))
    (s1, g1, sc1), (s2, g2, sc2) = runs[True], runs[False]
    assert [g.text for g in s1] == [g.text for g in s2] and [g.n_new_tokens for g in s1] == [g.n_new_tokens for g in s2]
    assert [(g.text, g.stop_reason) for g in g1] == [(g.text, g.stop_reason) for g in g2]
    assert sc1 == pytest.approx(sc2, abs=1e-4)


def test_answer_step_completes_a_thought_that_stopped_without_an_answer():
    """As the original's second ("Action: ") call: a trial that rambles (blank line) or runs out of budget
    without an answer continues from the answer form's opening; one that answered is left alone."""
    calls = []

    def respond(prompt, sampling):
        calls.append((prompt, sampling))
        if prompt.endswith("Action: Finish["):
            return "B] and more"
        if "q1" in prompt:
            return " it is the second option.\n\nA:\nA:"
        return " 4 + 3 = 7.\nAction: Finish[7]"

    backend = ScriptedBackend(respond)
    items = [ITEM, Item(id="y", task=ITEM.task, question="q1", answer="B")]
    _, gens = run_trials(backend, items, [[{"role": "user", "content": it.question}] for it in items], 32)
    assert gens[0].text == " 4 + 3 = 7.\nAction: Finish[7]" and not gens[0].forced
    assert gens[1].text == " it is the second option.\nAction: Finish[B]" and gens[1].forced
    assert gens[1].stop_reason == "stop"                        # the thought's own end (the blank line)
    step = [s for p, s in calls if p.endswith("Finish[")]
    assert len(step) == 1 and step[0].max_new_tokens <= 16      # only the row without an answer, a few tokens
    assert CHAIN.verify(gens[1].text, Item(id="y", task=ITEM.task, question="q1", answer="B")).extracted == "B"


def test_a_blank_line_ends_a_trial_unless_the_answer_form_follows():
    """A thought is one paragraph: a blank line followed by anything but the answer form ends the trial
    (cut before it); "...option B.\n\nAction: Finish[B]" is an answer, not a ramble. The stop waits
    while the text after the blank line could still become the answer form."""
    from reflectevo.sampling import finish_text, stop_position

    s = trial_sampling(CHAIN, 64)
    assert finish_text(" so B.\n\nAction: Finish[B] junk", s, "length") == (" so B.\n\nAction: Finish[B]", "stop")
    assert finish_text(" so B.\n\nQuestion: next", s, "length") == (" so B.", "stop")
    assert finish_text(" so B.\n\nActor", s, "length") == (" so B.", "stop")
    assert stop_position(" so B.\n\nAct", s) is None and stop_position(" so B.\n\n", s) is None
    assert CHAIN.verify(finish_text(" 4 + 3 = 7.\n\nAction: Finish[7]", s, "eos")[0], ITEM).correct
