"""SeededSampler (per-row seeded sampling in the transformers backend) draws from the right distribution."""

import math

import pytest
import torch

from reflectevo.backends.hf import SeededSampler


def _draw(logits_row, n, temperature=1.0, top_p=1.0, seed0=0):
    scores = torch.tensor([logits_row] * n, dtype=torch.float32)
    out = SeededSampler(range(seed0, seed0 + n), temperature, top_p)(None, scores)
    assert torch.isfinite(out).sum(dim=1).eq(1).all()          # exactly one token left per row
    return out.argmax(dim=1)


def test_frequencies_match_softmax_with_temperature():
    logits = [2.0, 1.0, 0.0, -1.0, float("-inf")]
    n = 20000
    for temperature in (1.0, 0.5):
        picks = _draw(logits, n, temperature)
        assert not (picks == 4).any()                         # zero-probability token never drawn
        p = torch.tensor(logits[:4]).div(temperature).softmax(0)
        freq = torch.bincount(picks, minlength=5)[:4].float() / n
        tol = 4 * torch.sqrt(p * (1 - p) / n)                 # 4 sigma
        assert ((freq - p).abs() <= tol).all(), (freq, p)


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    picks = _draw(p.log().tolist(), 5000, top_p=0.7)          # {0.5, 0.3} reaches 0.7
    assert set(picks.tolist()) == {0, 1}
    share0 = (picks == 0).float().mean().item()
    assert abs(share0 - 0.5 / 0.8) < 4 * math.sqrt(0.625 * 0.375 / 5000)


@pytest.mark.parametrize("batch_order", [[0, 1, 2], [2, 0, 1]])
def test_a_row_draw_depends_on_its_seed_only(batch_order):
    torch.manual_seed(1)
    rows = torch.randn(3, 1000)
    seeds = [11, 22, 33]
    alone = [int(SeededSampler([seeds[i]], 0.9)(None, rows[i:i + 1]).argmax()) for i in range(3)]
    together = SeededSampler([seeds[i] for i in batch_order], 0.9)(None, rows[batch_order]).argmax(dim=1).tolist()
    assert together == [alone[i] for i in batch_order]
