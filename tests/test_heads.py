"""Generator heads (linear, bitwise, MBM), MBM allocation schedule, and CFG schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from barlab.errors import ConfigError
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads import (
    BitwiseHead,
    LinearHead,
    MBMHead,
    check_allocation,
    cosine_allocation,
    linear_head_params,
)
from barlab.generator.heads import linear as linear_module
from barlab.generator.heads.allocation import cumulative


def make_heads(cond_dim: int, k: int) -> dict[str, torch.nn.Module]:
    return {
        "linear": LinearHead(cond_dim, k),
        "bitwise": BitwiseHead(cond_dim, k, hidden=32),
        "mbm": MBMHead(cond_dim, k, width=32, depth=2, steps=4),
    }


def randomize(head: torch.nn.Module, scale: float = 1.0) -> None:
    """Large random weights everywhere (undo MBM's zero init) so logits are far from zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, scale)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("cls", [LinearHead, BitwiseHead, MBMHead])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bits_per_step_validated(cls, bad):
    with pytest.raises(ConfigError) as err:
        cls(8, bad)
    assert err.value.knob == "bits_per_step"  # the head's own argument; the wiring names the knob (below)


def test_head_errors_name_the_knob_a_user_sets(compose_train):
    from barlab.config.instantiate import instantiate_checked
    from barlab.pipeline.generator_stage import build_backbone_and_head

    cfg = compose_train(["experiment=smoke", "head=mbm", "head.mask_ratio_std=0"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        instantiate_checked(cfg.head, "head", cond_dim=32, bits_per_step=16)
    assert str(err.value) == "head.mask_ratio_std: must be positive, got 0 (fix: head.mask_ratio_std=0.8)"
    cfg = compose_train(["experiment=smoke", "head=bitwise"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        build_backbone_and_head(cfg, 0, (4, 4), 4)           # the bits per step come from tokenizer.bits
    assert str(err.value) == "tokenizer.bits: must be a positive integer, got 0 (fix: tokenizer.bits=16)"


@pytest.mark.parametrize("knob, bad", [("mask_ratio_dist", "gaussian"), ("mask_ratio_dist", None),
                                       ("mask_ratio_mean", float("nan")), ("mask_ratio_mean", "0"),
                                       ("mask_ratio_mean", True), ("full_mask_share", -0.1),
                                       ("full_mask_share", 1.5), ("full_mask_share", float("nan")),
                                       ("masked_fill", "zeros"), ("masked_fill", "MASK")])
def test_mbm_ablation_knobs_validated(knob, bad):
    """The §5.4 masking knobs refuse a bad value naming the argument, with the official value as the fix."""
    with pytest.raises(ConfigError) as err:
        MBMHead(8, 16, width=16, depth=1, **{knob: bad})
    assert err.value.knob == knob
    official = {"mask_ratio_dist": "logit_normal", "mask_ratio_mean": 0.0, "full_mask_share": 0.0,
                "masked_fill": "mask"}
    assert err.value.fix == f"{knob}={official[knob]}"


def test_mbm_ablation_knob_errors_name_the_head_knob(compose_train):
    from barlab.config.instantiate import instantiate_checked

    cfg = compose_train(["experiment=smoke", "head=mbm", "head.mask_ratio_dist=gaussian"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        instantiate_checked(cfg.head, "head", cond_dim=32, bits_per_step=16)
    assert str(err.value) == ("head.mask_ratio_dist: must be one of logit_normal, uniform, cosine, got 'gaussian' "
                              "(fix: head.mask_ratio_dist=logit_normal)")


def test_linear_head_guard_refuses_before_allocating(monkeypatch):
    def no_linear(*args, **kwargs):
        raise AssertionError("nn.Linear must not be built when the guard refuses")

    monkeypatch.setattr(linear_module.nn, "Linear", no_linear)
    with pytest.raises(ConfigError) as err:
        LinearHead(64, 40)
    assert err.value.knob == ""  # the head as a whole: the config check names it `head` (test_fidelity)
    assert "head=mbm" in str(err.value)
    assert f"{2**40 * 65:,}" in str(err.value)
    assert linear_head_params(64, 40) == 2**40 * 65
    monkeypatch.undo()
    head = LinearHead(64, 8)
    assert sum(p.numel() for p in head.parameters()) == linear_head_params(64, 8) == 256 * 65


# ---------------------------------------------------------------- MBM masking and loss

def test_mbm_mask_statistics():
    k, n = 16, 20000
    head = MBMHead(8, k, width=16, depth=1)
    bits = torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(1)).float()
    masked, mask, ratio = head.mask_tokens(bits, torch.Generator().manual_seed(2))
    assert masked.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(dim=-1).min() >= 1  # at least one masked bit per token
    assert torch.all(masked[mask] == 2)
    assert torch.equal(masked[~mask], bits.long()[~mask])
    assert torch.equal(mask.sum(dim=-1), torch.round(k * ratio).long().clamp(min=1))
    assert ratio.min() >= 1 / k - 1e-7 and ratio.max() <= 1.0
    # Monte-Carlo estimate of E[clamp(1 − sigmoid(N(0, 0.8²)), 1/k, 1)] with an independent seed
    z = torch.randn(200000, generator=torch.Generator().manual_seed(3)) * 0.8
    expected = (1 - torch.sigmoid(z)).clamp(1 / k, 1).mean().item()
    assert abs(mask.float().mean().item() - expected) < 0.02
    assert abs(ratio.mean().item() - expected) < 0.01
    # positions are uniform: every bit position is masked about equally often
    per_pos = mask.float().mean(dim=0)
    assert (per_pos - per_pos.mean()).abs().max() < 0.02


def test_mbm_loss_weights(monkeypatch):
    k, n = 8, 6
    head = MBMHead(4, k, width=16, depth=1, unmasked_weight=0.1)
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (n, k), generator=gen).float()
    cond = torch.randn(n, 4, generator=gen)
    logits = torch.randn(n, k, 2, generator=gen) * 3
    monkeypatch.setattr(head, "forward", lambda b, c, r: logits)
    _, mask, _ = head.mask_tokens(bits, torch.Generator().manual_seed(5))
    out = head.loss(cond, bits, generator=torch.Generator().manual_seed(5))
    ce = -torch.log_softmax(logits, dim=-1).gather(-1, bits.long().unsqueeze(-1)).squeeze(-1)
    w = mask.float() * 1.0 + (~mask).float() * 0.1
    expected = (ce * w).sum() / w.sum()   # one weighted mean over the batch (official mbm_head.py)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert 0 < mask.sum() < mask.numel()
    acc = ((logits.argmax(-1) == bits.long()) & mask).sum() / mask.sum()
    assert torch.allclose(out.bit_accuracy, acc)


def test_mbm_loss_weight_values_exact(monkeypatch):
    """Known per-bit CE values softplus(gap): the loss is their 1.0 / 0.1 weighted mean."""
    k = 4
    head = MBMHead(4, k, width=16, depth=1, unmasked_weight=0.1)
    bits = torch.zeros(1, k)
    gap = torch.tensor([0.0, 1.0, 2.0, 3.0])  # logit of the wrong class (1) minus the right one (0)
    logits = torch.stack([torch.zeros(k), gap], dim=-1)[None]
    monkeypatch.setattr(head, "forward", lambda b, c, r: logits)
    _, mask, _ = head.mask_tokens(bits, torch.Generator().manual_seed(11))
    out = head.loss(torch.zeros(1, 4), bits, generator=torch.Generator().manual_seed(11))
    ce = F.softplus(gap)
    m = mask[0].float()
    expected = (ce * m).sum() + 0.1 * (ce * (1 - m)).sum()
    expected = expected / (m.sum() + 0.1 * (1 - m).sum())
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-6)


# ---------------------------------------------------------------- MBM allocation

def test_cosine_allocation():
    assert cosine_allocation(16, 4) == (2, 3, 5, 6)
    for k, steps in [(16, 4), (64, 4), (256, 4), (10, 4), (2, 2), (4, 4), (5, 4), (16, 1), (3, 2)]:
        alloc = cosine_allocation(k, steps)
        assert len(alloc) == steps and sum(alloc) == k and min(alloc) >= 1
    with pytest.raises(ConfigError):
        cosine_allocation(3, 4)


@pytest.mark.parametrize("bad", [[2, 2, 5, 6], [2, 2, 5, 8], [0, 4, 5, 7], [2.0, 2, 5, 7], [], "2257", [-1, 3, 5, 9]])
def test_bad_allocation_raises(bad):
    with pytest.raises(ConfigError) as err:
        MBMHead(8, 16, width=16, depth=1, allocation=bad)
    assert err.value.knob == "allocation" and err.value.fix.startswith("allocation=null")
    with pytest.raises(ConfigError):
        check_allocation(bad, 16)


@pytest.mark.parametrize("allocation", [(2, 2, 5, 7), None])
def test_mbm_sampler_follows_allocation(allocation):
    k, n = 16, 32
    head = MBMHead(8, k, width=32, depth=1, allocation=allocation, steps=4)
    randomize(head)
    alloc = (2, 2, 5, 7) if allocation is not None else cosine_allocation(16, 4)
    assert head.allocation == alloc
    cum = cumulative(alloc)
    trace: list[torch.Tensor] = []
    cond = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    out = head.sample(cond, None, 1.0, temperature=1.5, generator=torch.Generator().manual_seed(1),
                      on_step=lambda s, b: trace.append(b.clone()))
    assert len(trace) == len(alloc)
    for s, b in enumerate(trace):
        assert torch.all((b != 2).sum(dim=-1) == cum[s + 1]), s
        if s > 0:  # bits fixed earlier are kept
            prev = trace[s - 1]
            assert torch.equal(b[prev != 2], prev[prev != 2])
    assert torch.equal(out, trace[-1].float())
    assert set(out.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- CFG

@pytest.mark.parametrize("name", ["linear", "bitwise", "mbm"])
def test_cfg_unit_guidance_is_conditional_path(name):
    k, n, d = 8, 64, 16
    head = make_heads(d, k)[name]
    randomize(head, scale=2.0)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ref = head.sample(cond, None, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(7))
    same = head.sample(cond, uncond, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(7))
    per_row = head.sample(cond, uncond, torch.ones(n), temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ref, same) and torch.equal(ref, per_row)
    guided = head.sample(cond, uncond, 4.0, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert (guided != ref).any(dim=-1).sum() > 0
    if name != "mbm":  # one draw per token: at τ = 0 the bits are the argmax of l_u + 4 (l_c - l_u), by hand
        from barlab.generator.heads.base import code_to_bits

        with torch.no_grad():
            lc, lu = head.logits(cond), head.logits(uncond)
            mixed = lu + 4.0 * (lc - lu)
        by_hand = code_to_bits(mixed.argmax(-1), k) if name == "linear" else mixed.argmax(-1)
        greedy = head.sample(cond, uncond, 4.0, temperature=0.0)
        assert torch.equal(greedy.float(), by_hand.float())
        assert not torch.equal(greedy, head.sample(cond, None, 1.0, temperature=0.0))   # g = 4 is not g = 1
    # per-row scales: rows with g == 1 stay exactly on the conditional path
    mixed_g = torch.where(torch.arange(n) % 2 == 0, 1.0, 4.0)
    mixed = head.sample(cond, uncond, mixed_g, temperature=0.0)
    ref0 = head.sample(cond, None, 1.0, temperature=0.0)
    assert torch.equal(mixed[0::2], ref0[0::2])
    assert not torch.equal(mixed[1::2], ref0[1::2])


@pytest.mark.parametrize("name", ["linear", "bitwise", "mbm"])
def test_fused_cfg_gives_the_two_forward_logits_and_samples(name):
    """``fuse_cfg`` (one forward over the stacked 2N rows) against the previous two forwards of N rows:
    the same guided logits up to float rounding, the same bits at τ = 0 and at τ > 0 (same noise)."""
    k, n, d = 8, 48, 16
    head = make_heads(d, k)[name]
    randomize(head, scale=2.0)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    rows = torch.rand(n, generator=g)
    calls = []

    def logits_fn(c, r):  # a per-row input (like MBM's ratio) must follow its row into the stack
        calls.append(c.shape[0])
        if name == "mbm":
            return head(torch.full((c.shape[0], k), 2), c, r)
        logits = head.logits(c)
        return logits * r.view(-1, *[1] * (logits.ndim - 1))

    results = {}
    for fused in (False, True):
        head.fuse_cfg = fused
        calls.clear()
        results[fused] = (head._guided(logits_fn, cond, uncond, 3.0, rows), list(calls),
                          head.sample(cond, uncond, 3.0, temperature=0.0),
                          head.sample(cond, uncond, 3.0, temperature=1.5, generator=torch.Generator().manual_seed(5)))
    assert results[False][1] == [n, n] and results[True][1] == [2 * n]
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[True][2], results[False][2]) and torch.equal(results[True][3], results[False][3])
    assert (results[True][0] != head._guided(logits_fn, cond, None, 3.0, rows)).any()  # guidance changed them


# ---------------------------------------------------------------- learning

@pytest.mark.parametrize("name", ["linear", "bitwise", "mbm"])
def test_head_learns_toy_mapping(name):
    torch.manual_seed(0)
    k, classes = 8, 4
    codes = torch.randint(0, 2, (classes, k), generator=torch.Generator().manual_seed(3)).float()
    head = make_heads(classes, k)[name]
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    labels = torch.arange(classes).repeat(16)
    cond, bits = F.one_hot(labels, classes).float(), codes[labels]
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        out = head.loss(cond, bits, generator=gen) if name == "mbm" else head.loss(cond, bits)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.bit_accuracy.item() > 0.95, out
    eye = torch.eye(classes)
    assert torch.equal(head.sample(eye, None, 1.0, temperature=0.0), codes)
    assert torch.equal(head.sample(eye, None, 1.0, temperature=1e-3, generator=torch.Generator().manual_seed(1)),
                       codes)


# ---------------------------------------------------------------- sizes

def test_paper_mbm_head_parameter_count():
    counts = {}
    for k in (16, 64, 256):
        with torch.device("meta"):
            head = MBMHead(cond_dim=2048, bits_per_step=k, width=2048, depth=3)
        counts[k] = sum(p.numel() for p in head.parameters())
    assert counts[16] == 156_375_454
    assert abs(counts[16] - 156e6) / 156e6 < 0.01
    w, h = 2048, 5461
    block = w + (w * 3 * w + 3 * w) + 2 * (w * h + h) + (h * w + w)
    expected = (3 * 128 + 128 * 16 * w + w) + (512 * w + w + w * w + w) + w + 3 * block + w + (w * 2 * w + 2 * w) + (
        w * 32 + 32)
    assert counts[16] == expected
    assert counts[64] == 156_571_870 and counts[256] == 157_358_614


# ---------------------------------------------------------------- guidance schedules

def test_guidance_schedules():
    L, g = 256, 5.0
    assert [guidance_scale(t, L, g, "constant") for t in (0, L // 2, L)] == [5.0, 5.0, 5.0]
    assert [guidance_scale(t, L, g, "linear") for t in (0, L // 2, L)] == [1.0, 3.0, 5.0]
    pc = [guidance_scale(t, L, g, "power-cosine", power=1.0) for t in (0, L // 2, L)]
    assert pc == pytest.approx([1.0, 3.0, 5.0])
    # power 2 at the midpoint: 1 + 4·(1 − cos(π/4))/2
    assert guidance_scale(L // 2, L, g, "power-cosine", power=2.0) == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 4)))
    with pytest.raises(ConfigError) as err:
        guidance_scale(0, L, g, "cosine")
    assert err.value.knob == "schedule" and err.value.fix == "schedule=linear"


# ---------------------------------------------------------------- CFG at g != 1, by hand

def gumbel_by_hand(shape, seed):
    """Standard Gumbel noise -log(-log u) from torch.rand on a fresh CPU generator (u clamped into (0, 1))."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    u = u.clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - 2.0**-24)
    return -torch.log(-torch.log(u))


@pytest.mark.parametrize("name", ["linear", "bitwise"])
@pytest.mark.parametrize("g", [3.0, 0.5, -1.0])
def test_cfg_samples_from_l_u_plus_g_times_l_c_minus_l_u(name, g):
    k, n, d = 4, 40, 8
    head = LinearHead(d, k) if name == "linear" else BitwiseHead(d, k)  # one Linear: logits written out below
    randomize(head)
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    w, b = (head.proj.weight, head.proj.bias) if name == "linear" else (head.net.weight, head.net.bias)
    l_c, l_u = cond @ w.detach().T + b.detach(), uncond @ w.detach().T + b.detach()   # the head's logits, by hand
    if name == "bitwise":
        l_c, l_u = l_c.view(n, k, 2), l_u.view(n, k, 2)                               # (bit, class) pairs
    guided = l_u + g * (l_c - l_u)

    def to_bits(idx):
        if name == "linear":  # code -> bits, bit j of weight 2^j
            return torch.stack([(idx >> j) & 1 for j in range(k)], dim=-1).float()
        return idx.float()

    assert torch.equal(head.sample(cond, uncond, g, temperature=0.0), to_bits(guided.argmax(-1)))
    tau = 1.7
    noisy = guided + tau * gumbel_by_hand(tuple(guided.shape), 3)
    got = head.sample(cond, uncond, g, temperature=tau, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, to_bits(noisy.argmax(-1)))
    # the guidance really changes the draw here (so the check above is not the conditional path in disguise)
    assert not torch.equal(head.sample(cond, uncond, g, temperature=0.0), to_bits(l_c.argmax(-1)))


def test_apply_cfg_scalar_and_per_row_by_hand():
    from barlab.generator.heads.base import apply_cfg

    l_c = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    l_u = torch.tensor([[0.0, 4.0], [2.0, 1.0], [1.0, -1.0]])
    # g = 2: l_u + 2 (l_c - l_u) = 2 l_c - l_u
    assert torch.equal(apply_cfg(l_c, l_u, 2.0), torch.tensor([[2.0, 0.0], [-2.0, -3.0], [5.0, 7.0]]))
    # per row g = (1, 0, 0.5): l_c; l_u; (l_c + l_u) / 2
    assert torch.equal(apply_cfg(l_c, l_u, torch.tensor([1.0, 0.0, 0.5])),
                       torch.tensor([[1.0, 2.0], [2.0, 1.0], [2.0, 1.0]]))
    # (N, k, 2) logits with per-row g broadcast over the trailing axes
    l_c3, l_u3 = l_c[:, None, :].expand(3, 4, 2), l_u[:, None, :].expand(3, 4, 2)
    out = apply_cfg(l_c3, l_u3, torch.tensor([3.0, 1.0, -1.0]))
    assert torch.equal(out[0], (l_u[0] + 3 * (l_c[0] - l_u[0])).expand(4, 2))
    assert torch.equal(out[1], l_c[1].expand(4, 2))
    assert torch.equal(out[2], (2 * l_u[2] - l_c[2]).expand(4, 2))


# ---------------------------------------------------------------- loss at initialisation

@pytest.mark.parametrize("name", ["linear", "bitwise", "mbm"])
def test_loss_with_a_zero_output_layer_is_the_uniform_cross_entropy(name):
    """All logits 0: softmax over 2^k codes gives ln(2^k) = k ln 2 per token; per-bit heads give ln 2 per bit
    (MBM: a weighted mean of ln 2 values is ln 2 whatever the mask); accuracy of argmax 0 = share of 0 bits."""
    k, n, d = 6, 50, 8
    head = make_heads(d, k)[name]
    out_layer = {"linear": lambda h: h.proj, "bitwise": lambda h: h.net[-1], "mbm": lambda h: h.out}[name](head)
    with torch.no_grad():
        out_layer.weight.zero_()
        out_layer.bias.zero_()
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(n, d, generator=gen)
    bits = torch.randint(0, 2, (n, k), generator=gen).float()
    out = head.loss(cond, bits, generator=gen) if name == "mbm" else head.loss(cond, bits)
    expected = k * math.log(2) if name == "linear" else math.log(2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "bitwise", "mbm"])
def test_loss_at_the_heads_own_init_is_near_the_uniform_cross_entropy(name, compose_train):
    """With the smoke config's heads and backbone at init the logits are small (|l| < ~0.2): the CE is the
    uniform one plus a second-order term (E[(l - mean l)^2] / 2 for the softmax), well under 0.05."""
    from hydra.utils import instantiate

    from barlab.generator import ARBackbone

    torch.manual_seed(0)
    k = 6
    cfg = compose_train(["experiment=smoke", f"head={name}", f"tokenizer.bits={k}"])
    backbone = instantiate(cfg.generator.backbone, bits_per_step=k, grid=(4, 4), num_classes=4)
    assert isinstance(backbone, ARBackbone)
    head = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=k)
    bits = torch.randint(0, 2, (16, 16, k), generator=torch.Generator().manual_seed(1)).float()
    cond = backbone(bits, torch.arange(16) % 4).reshape(-1, cfg.generator.backbone.cond_dim)
    targets = bits.reshape(-1, k)
    out = head.loss(cond, targets, generator=torch.Generator().manual_seed(2)) if name == "mbm" else \
        head.loss(cond, targets)
    expected = k * math.log(2) if name == "linear" else math.log(2)
    assert expected <= out.loss.item() + 1e-3 and out.loss.item() - expected < 0.05, (out.loss.item(), expected)


# ---------------------------------------------------------------- MBM training path

def test_mbm_training_feeds_the_network_mask_tokens_and_the_matching_ratio():
    k, n, d = 8, 64, 6
    head = MBMHead(d, k, width=16, depth=1)
    seen = {}
    head.register_forward_pre_hook(lambda m, args: seen.update(bits=args[0].clone(), ratio=args[2].clone()))
    head.fourier.register_forward_pre_hook(lambda m, args: seen.update(fourier_in=args[0].clone()))
    head.bit_embed.register_forward_pre_hook(lambda m, args: seen.update(embedded=args[0].clone()))
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (n, k), generator=gen).float()
    out = head.loss(torch.randn(n, d, generator=gen), bits, generator=torch.Generator().manual_seed(4))
    fed, ratio = seen["bits"], seen["ratio"]
    # the documented draw, redone from the same seed: t ~ sigmoid(N(0, 0.8^2)), r = clamp(1 - t, 1/k, 1)
    t = torch.sigmoid(torch.randn(n, generator=torch.Generator().manual_seed(4)) * 0.8)
    torch.testing.assert_close(ratio, (1 - t).clamp(1 / k, 1.0))
    masked = fed == 2
    # the number of [M] bits in each row is max(1, round(k r)), the others are the true bits
    assert torch.equal(masked.sum(-1), torch.round(k * ratio).long().clamp(min=1))
    assert torch.equal(fed[~masked], bits.long()[~masked])
    assert set(fed.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(seen["embedded"], fed)           # the [M] value (2) reaches the bit embedding
    assert torch.equal(seen["fourier_in"], ratio)       # the ratio embedding sees that same ratio
    assert out.metrics["mask_ratio"].item() == pytest.approx(ratio.mean().item())
    assert out.metrics["masked_fraction"].item() == pytest.approx(masked.float().mean().item())
