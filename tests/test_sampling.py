"""Sampling, pinned to hand-computed values: the per-step CFG scale the AR sampler hands the head under
each schedule, the rows it guides with, and the MBM head's unmasking (selection rule, temperature decay
and the mask ratio fed at each step), against a plain re-implementation of the paper's pseudo-code."""

from __future__ import annotations

import math

import pytest
import torch

from barlab.generator import ARBackbone, ARSampler, BitwiseHead, MBMHead
from barlab.generator.heads import mbm as mbm_module

K, GRID, CLASSES, COND = 3, (2, 3), 5, 8
L = GRID[0] * GRID[1]


def tiny_backbone() -> ARBackbone:
    torch.manual_seed(0)
    model = ARBackbone(K, GRID, CLASSES, width=16, depth=1, heads=2, cond_dim=COND, class_repeat=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval().double()


def expected_scale(t: int, g: float, schedule: str, power: float) -> float:
    """The three schedules written out: constant g; linear 1 -> g; power-cosine 1 -> g."""
    if schedule == "constant":
        return g
    if schedule == "linear":
        return 1 + (g - 1) * t / L
    return 1 + (g - 1) * (1 - math.cos(math.pi * (t / L) ** power)) / 2


@pytest.mark.parametrize("use_kv_cache", [True, False])
@pytest.mark.parametrize("schedule, power", [("constant", 1.0), ("linear", 1.0), ("power-cosine", 1.0),
                                             ("power-cosine", 2.5)])
def test_sampler_hands_the_head_the_scheduled_guidance_and_null_class_rows(schedule, power, use_kv_cache):
    model = tiny_backbone()
    head = BitwiseHead(COND, K).double()
    seen = []

    def spy(cond, uncond, guidance, temperature=1.0, generator=None):
        seen.append((cond.clone(), None if uncond is None else uncond.clone(), guidance, temperature))
        return torch.zeros(cond.shape[0], K, dtype=cond.dtype)  # every token all-zero bits

    head.sample = spy
    labels = torch.tensor([1, 3])
    g = 4.0
    out = ARSampler(model, head).sample(labels, guidance=g, schedule=schedule, power=power, temperature=0.7,
                                        use_kv_cache=use_kv_cache)
    assert torch.equal(out, torch.zeros(2, L, K))
    assert [s[2] for s in seen] == pytest.approx([expected_scale(t, g, schedule, power) for t in range(L)])
    assert all(s[3] == 0.7 for s in seen)
    # tokens stay all-zero, so the conditions are the teacher-forced ones of zero bits: labels vs the null class
    zeros = torch.zeros(2, L, K, dtype=torch.float64)
    with torch.no_grad():
        z_c, z_u = model(zeros, labels), model(zeros, torch.full_like(labels, CLASSES))
    for t, (cond, uncond, _, _) in enumerate(seen):
        torch.testing.assert_close(cond, z_c[:, t])
        torch.testing.assert_close(uncond, z_u[:, t])


# ---------------------------------------------------------------- MBM unmasking, by hand

def reference_mbm(logits_at, alloc, k, n, temperature, noise):
    """The paper's MBM sampler in plain Python: at step s (of S) with tau_s = T (1 - s/S), sample every
    still-masked bit as argmax(l + tau_s g); then keep the cum[s+1] most confident bits (confidence: the
    chosen bit's logit + tau_s g', fixed bits infinitely confident) and mask the rest again."""
    steps = len(alloc)
    cum = [sum(alloc[:i]) for i in range(steps + 1)]
    b = [[2] * k for _ in range(n)]
    trace = []
    for s in range(steps):
        tau = temperature * (1 - s / steps)
        logits = logits_at(s, b)
        g_logit, g_conf = noise[s] if tau > 0 else (torch.zeros(n, k, 2), torch.zeros(n, k))
        new = []
        for r in range(n):
            x, conf = [], []
            for j in range(k):
                if b[r][j] != 2:
                    x.append(b[r][j])
                    conf.append(math.inf)
                else:
                    v = [float(logits[r, j, c] + tau * g_logit[r, j, c]) for c in (0, 1)]
                    pick = 1 if v[1] > v[0] else 0
                    x.append(pick)
                    conf.append(float(logits[r, j, pick] + tau * g_conf[r, j]))
            if s < steps - 1:
                lowest = sorted(range(k), key=lambda j: conf[j])[: k - cum[s + 1]]
                x = [2 if j in lowest else x[j] for j in range(k)]
            new.append(x)
        b = new
        trace.append([row[:] for row in b])
    return torch.tensor(b, dtype=torch.float32), trace


@pytest.mark.parametrize("temperature", [0.0, 2.0])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("fused", [True, False])
def test_mbm_sampler_keeps_the_most_confident_bits_with_decaying_temperature(monkeypatch, temperature, guidance,
                                                                            fused):
    k, n, d, alloc = 6, 5, 4, (1, 2, 3)
    head = MBMHead(d, k, width=16, depth=1, allocation=alloc)
    head.fuse_cfg = fused  # under CFG: one forward over [cond; uncond] rows, or two forwards
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(len(alloc), n, k, 2, generator=gen) * 2     # one logit table per step
    slope = torch.randn(len(alloc), n, k, 2, generator=gen)
    cond = torch.randn(n, d, generator=gen)
    uncond = torch.randn(n, d, generator=gen)
    calls = []
    per_step = 1 if guidance == 1.0 or fused else 2
    rows = 2 if guidance != 1.0 and fused else 1  # the stacked halves of one fused call

    def stub(bits, c, ratio):  # logits depend on the step and (linearly) on the condition's first entry
        s = len(calls) // per_step
        calls.append((bits.clone(), c.clone(), ratio.clone()))
        return base[s].repeat(rows, 1, 1) + c[:, :1, None] * slope[s].repeat(rows, 1, 1)

    monkeypatch.setattr(head, "forward", stub)
    noise = [(torch.randn(n, k, 2, generator=gen) * 3, torch.randn(n, k, generator=gen) * 3) for _ in alloc]
    queue = [t for pair in noise for t in pair]
    monkeypatch.setattr(mbm_module, "gumbel", lambda shape, generator, device: queue.pop(0))

    def logits_at(s, b):
        l_c = base[s] + cond[:, :1, None] * slope[s]
        l_u = base[s] + uncond[:, :1, None] * slope[s]
        return l_c if guidance == 1.0 else l_u + guidance * (l_c - l_u)

    expected, trace = reference_mbm(logits_at, alloc, k, n, temperature, noise)
    got = head.sample(cond, uncond, guidance, temperature=temperature,
                      on_step=lambda s, b: None)
    assert torch.equal(got, expected)
    assert queue == ([] if temperature > 0 else [t for pair in noise for t in pair])
    # what the network saw at each step: the bits fixed so far ([M] = 2 elsewhere) and ratio 1 - cum[s]/k
    cum = (0, 1, 3)
    assert len(calls) == per_step * len(alloc)
    for i, (bits, c, ratio) in enumerate(calls):
        s = i // per_step
        before = torch.full((n, k), 2) if s == 0 else torch.tensor(trace[s - 1])
        assert torch.equal(bits, before.repeat(rows, 1)), (s, bits, before)
        assert torch.equal(ratio, torch.full((rows * n,), 1 - cum[s] / k))
        seen = torch.cat([cond, uncond]) if rows == 2 else (cond if i % per_step == 0 else uncond)
        assert torch.equal(c, seen)
    for s, b in enumerate(trace[:-1]):
        assert (torch.tensor(b) != 2).sum(-1).tolist() == [cum[s + 1]] * n


def test_mbm_selection_rule_on_a_hand_made_table(monkeypatch):
    """One token, k = 4, allocation (1, 1, 2), tau = 0, a fixed logit table (logit of 0, logit of 1):
    bit 0: (0, 3) -> 1, conf 3;  bit 1: (2, 0) -> 0, conf 2;  bit 2: (0, 5) -> 1, conf 5;  bit 3: (1, 0) -> 0, conf 1.
    Step 0 keeps bit 2 only; step 1 keeps bit 0 too; step 2 fixes the rest: [1, 0, 1, 0]."""
    head = MBMHead(2, 4, width=16, depth=1, allocation=(1, 1, 2))
    table = torch.tensor([[[0.0, 3.0], [2.0, 0.0], [0.0, 5.0], [1.0, 0.0]]])
    monkeypatch.setattr(head, "forward", lambda bits, c, ratio: table)
    trace = []
    out = head.sample(torch.zeros(1, 2), None, 1.0, temperature=0.0, on_step=lambda s, b: trace.append(b.tolist()))
    assert trace == [[[2, 2, 1, 2]], [[1, 2, 1, 2]], [[1, 0, 1, 0]]]
    assert out.tolist() == [[1.0, 0.0, 1.0, 0.0]]
