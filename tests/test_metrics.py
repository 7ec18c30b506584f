from reflectevo.metrics import by_task, turn_metrics


def test_turn_metrics_transitions():
    pairs = [(True, True), (True, False), (False, True), (False, True), (False, False)]
    m = turn_metrics(pairs)
    assert m == {"n": 5, "acc_t1": 0.4, "acc_t2": 0.6, "delta": 0.2, "delta_i2c": 0.4, "delta_c2i": 0.2}
    assert m["delta"] == m["delta_i2c"] - m["delta_c2i"]


def test_empty_and_per_task():
    assert turn_metrics([])["acc_t1"] is None
    rows = [{"task": "a", "t1_correct": False, "t2_correct": True}, {"task": "b", "t1_correct": True, "t2_correct": True}]
    out = by_task(rows)
    assert out["overall"]["acc_t2"] == 1.0 and out["per_task"]["a"]["delta_i2c"] == 1.0
