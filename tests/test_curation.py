from reflectevo.config.sections import CurateConfig
from reflectevo.curation.rows import curate, is_eval_item, reflection_problem, statistics


def _sample(eid, j, text, correct):
    return {"sample_id": f"{eid}-{j}", "sample_idx": j, "demand_id": "1-1-1",
            "reflection": {"prompt": "rp", "text": text}, "trial2": {"prompt": "tp", "completion": f"t2 {j}",
                                                                     "extracted": str(j), "correct": correct}}


def _episode(i, t1_correct, outcomes):
    eid = f"ep{i}"
    return {"episode_id": eid, "item_id": f"item-{i}", "task": "rg/chain_sum", "model": {"preset": "m", "source": "synthetic", "revision": "0"},
            "prompt_version": "v1-x", "gen": {"k": len(outcomes)}, "item": {"question": f"q {i}", "answer": "5", "choices": None},
            "trial1": {"prompt": "p1", "completion": "t1 words here", "extracted": "4", "correct": t1_correct},
            "samples": [] if t1_correct else [_sample(eid, j, text, ok) for j, (text, ok) in enumerate(outcomes)]}


GOOD = "I mis-added the second term; recompute each term."


def test_dplus_dpm_and_filters():
    eps = [
        _episode(0, True, []),
        _episode(1, False, [(GOOD, True), ("The second term was misread entirely.", False), ("bad", False)]),
        _episode(2, False, [("", True), ("So Finish[5] is it", True), (GOOD, False)]),
    ]
    out = curate(eps, CurateConfig(eval_fraction=0.0, min_reflection_words=3, max_pairs_per_item=4))
    assert [r["id"] for r in out["dplus"]["train"]] == ["ep1-0"]
    row = out["dplus"]["train"][0]
    assert row["reflection"] == GOOD and row["trial1"] == "t1 words here" and row["answer"] == "5"
    # ep1: 1 good x 1 bad (the 1-word "bad" is filtered as too short); ep2: no good left after filters
    assert [(p["chosen"]["sample_id"], p["rejected"]["sample_id"]) for p in out["dpm"]["train"]] == [("ep1-0", "ep1-1")]
    assert dict(out["drops"]) == {"too_short": 1, "empty": 1, "states_answer": 1}


def test_pair_cap():
    texts = [f"Reason number {w}: the {w} step went wrong, so redo the {w} step." for w in
             ("first", "second", "third", "fourth", "fifth", "sixth")]
    eps = [_episode(1, False, [(t, i < 3) for i, t in enumerate(texts)])]
    out = curate(eps, CurateConfig(eval_fraction=0.0, max_pairs_per_item=4))
    assert len(out["dpm"]["train"]) == 4


def test_split_is_by_item_and_deterministic():
    ids = [f"item-{i}" for i in range(2000)]
    ev = [i for i in ids if is_eval_item(i, 0.2, 0)]
    assert 300 < len(ev) < 500 and ev == [i for i in ids if is_eval_item(i, 0.2, 0)]
    eps = [_episode(i, False, [(GOOD, True), ("Another angle: check the sign.", True)]) for i in range(50)]
    out = curate(eps, CurateConfig(eval_fraction=0.3))
    train_items = {r["item_id"] for r in out["dplus"]["train"]}
    eval_items = {r["item_id"] for r in out["dplus"]["eval"]}
    assert train_items and eval_items and not train_items & eval_items


def test_reflection_problem_and_statistics():
    cfg = CurateConfig(max_reflection_words=5)
    assert reflection_problem("one two three four five six", cfg) == "too_long"
    assert reflection_problem(GOOD[:20] + " ok go", CurateConfig()) is None
    stats = statistics([_episode(0, True, []), _episode(1, False, [(GOOD, True), (GOOD, False)])])
    assert stats["total"]["reflection_samples"] == 2 and stats["total"]["qa_reflection_samples"] == 1
    assert stats["total"]["pct_correct_after_reflection"] == 50.0


def test_near_duplicates_are_dropped_within_an_item():
    texts = ["I added the second term wrongly; recompute it.", "I added the second term wrongly; recompute it!",
             "The question asks for a product, not a sum."]
    eps = [_episode(1, False, [(texts[0], True), (texts[1], False), (texts[2], False)])]
    out = curate(eps, CurateConfig(eval_fraction=0.0, dedup_threshold=0.9))
    assert out["drops"]["near_duplicate"] == 1
    assert [p["rejected"]["reflection"] for p in out["dpm"]["train"]] == [texts[2]]


def test_dpref_from_judge_verdicts_keeps_only_consistent_ones():
    from reflectevo.judge import Comparison, judge, parse_choice

    class Judge:  # prefers the reflection mentioning "carry"; position-biased on the rest (always "A")
        def render(self, messages):
            return messages[0]["content"]

        def generate(self, prompts, sampling):
            from reflectevo.sampling import Generation

            out = []
            for p in prompts:
                a = p.split("Reflection A:")[1].split("Reflection B:")[0]
                b = p.split("Reflection B:")[1]
                pick = "A" if "carry" in a else "B" if "carry" in b else "A"
                out.append(Generation(pick, 1, 1))
            return out

    good = ["I forgot the carry in the tens column; redo it.", "I mis-read the numbers; read them again.",
            "Wrong operation chosen; re-read which operation is asked."]
    eps = [_episode(1, False, [(t, True) for t in good])]
    out = curate(eps, CurateConfig(eval_fraction=0.0), judge=lambda cs: judge(cs, Judge()), judge_info={"model": "j"})
    rows = out["dpref"]["train"]
    assert [(r["chosen"]["reflection"], r["rejected"]["reflection"]) for r in rows] == [(good[0], good[1]), (good[0], good[2])]
    assert out["drops"]["judge_inconsistent"] == 1           # good[1] vs good[2]: the biased judge disagrees with itself
    assert rows[0]["judge"]["model"] == "j" and len(rows[0]["judge"]["votes"]) == 2
    assert parse_choice(" B.") == "B" and parse_choice("neither") is None
    assert Comparison("q", "t", "a", "b").first == "a"


def test_curated_files_load_with_datasets(tmp_path):
    from datasets import load_dataset

    from reflectevo.jsonio import write_jsonl

    texts = ["I forgot the carry; redo the tens.", "Wrong sign on the second term; flip it.", "Misread seven as one."]
    eps = [_episode(i, False, [(texts[0], True), (texts[1], False), (texts[2], True)]) for i in range(4)]
    out = curate(eps, CurateConfig(eval_fraction=0.0))
    for kind in ("dplus", "dpm"):
        write_jsonl(tmp_path / f"{kind}.jsonl", out[kind]["train"])
        ds = load_dataset("json", data_files=str(tmp_path / f"{kind}.jsonl"), split="train",
                          cache_dir=str(tmp_path / "hf"))
        assert len(ds) == len(out[kind]["train"]) > 0
    assert ds[0]["chosen"]["reflection"] in texts and ds[0]["rejected"]["trial2_correct"] is False
