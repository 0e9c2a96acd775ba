"""The MBM head's training mask at the ends of its range: the mask ratio r = 1 − t is clamped to [1/k', 1], and
the number of masked bits is max(1, round(k'·r)), never 0 and never more than k'."""

from __future__ import annotations

import pytest
import torch

from barlab.generator import MBMHead


@pytest.mark.parametrize("k", [1, 4, 7, 16])
def test_extreme_draws_clamp_the_ratio_and_the_mask_count(k):
    # std 60: t = sigmoid(N(0, 60²)) is ~0 or ~1 for almost every token, so r sits at either clamp
    head = MBMHead(4, k, width=8, depth=1, mask_ratio_std=60.0, fourier_dim=4, steps=1)
    n = 2000
    bits = torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(0)).float()
    masked, mask, ratio = head.mask_tokens(bits, torch.Generator().manual_seed(1))
    t = torch.sigmoid(torch.randn(n, generator=torch.Generator().manual_seed(1)) * 60.0)
    torch.testing.assert_close(ratio, (1 - t).clamp(1 / k, 1.0))
    at_floor = (ratio - 1 / k).abs() < 1e-6
    at_top = ratio == 1.0
    assert int(at_floor.sum()) > n // 4 and int(at_top.sum()) > n // 4
    counts = mask.sum(dim=-1)
    assert torch.equal(counts[at_floor], torch.ones(int(at_floor.sum()), dtype=torch.long))
    assert torch.equal(counts[at_top], torch.full((int(at_top.sum()),), k))
    assert counts.min() >= 1 and counts.max() <= k
    assert torch.equal(counts, torch.round(k * ratio).long().clamp(min=1))
    assert torch.equal(masked == 2, mask)


def test_mask_counts_round_half_to_even_on_exact_ratios(monkeypatch):
    """r chosen so that k·r is exactly 2.5 and 3.5: torch.round goes to the even count (2 and 4)."""
    k = 8
    head = MBMHead(4, k, width=8, depth=1, fourier_dim=4)
    targets = torch.tensor([2.5 / k, 3.5 / k, 1.0, 0.01])            # the last is clamped up to 1/k
    logits_of_t = torch.logit(1 - targets.clamp(max=1 - 1e-7)) / head.mask_ratio_std
    monkeypatch.setattr(torch, "randn", lambda *a, **kw: logits_of_t.clone())
    _, mask, ratio = head.mask_tokens(torch.zeros(4, k), torch.Generator().manual_seed(0))
    assert ratio[:2].tolist() == pytest.approx([2.5 / k, 3.5 / k], abs=1e-6)
    assert ratio[3].item() == pytest.approx(1 / k)
    assert mask.sum(dim=-1).tolist() == [2, 4, 8, 1]
