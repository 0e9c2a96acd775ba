"""Quantizers: STE, bit round trips, bit budgets, validation, memory for large k."""

from __future__ import annotations

import math

import pytest
import torch

from barlab.errors import ConfigError
from barlab.tokenizer.bit_stats import BitStatsAccumulator, bit_statistics
from barlab.tokenizer.quantizers import FSQ, BinaryFSQ, KLLatent, Quantizer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- binary FSQ


def test_binary_fsq_forward_values_are_exactly_pm1_and_bits_match():
    q = BinaryFSQ(latent_channels=8, bits=12)
    u = torch.randn(3, 12, 4, 5) * 2
    u[0, 0, 0, 0] = 0.0  # tie goes to +1
    values = q.quantize(u)
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(values, torch.where(u >= 0, 1.0, -1.0))
    assert values[0, 0, 0, 0] == 1.0

    out = q(torch.randn(3, 8, 4, 5))
    assert out.latent.shape == (3, 8, 4, 5)
    assert out.bits.shape == (3, 4, 5, 12) and out.codes.shape == (3, 4, 5, 12)
    assert set(out.bits.unique().tolist()) <= {0.0, 1.0}
    assert out.codes.dtype == torch.long and torch.equal(out.codes, out.bits.long())
    assert out.loss.item() == 0.0 and out.metrics == {}


def test_binary_fsq_ste_gradient_is_tanh_derivative():
    q = BinaryFSQ(latent_channels=4, bits=6)
    u = (torch.randn(2, 6, 3, 3) * 1.5).requires_grad_(True)
    weights = torch.randn(2, 6, 3, 3)
    (q.quantize(u) * weights).sum().backward()
    expected = weights * (1 - torch.tanh(u.detach()) ** 2)
    assert torch.count_nonzero(u.grad) == u.numel()
    torch.testing.assert_close(u.grad, expected)


def test_binary_fsq_gradient_reaches_encoder_side_input():
    """Through the whole bottleneck, dL/dz = W_in^T (sech^2(u) * W_out^T dL/dlatent), written out by hand."""
    q = BinaryFSQ(latent_channels=4, bits=6)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (q(z).latent * upstream).sum().backward()
    w_in, b_in = q.proj_in.weight.detach()[:, :, 0, 0], q.proj_in.bias.detach()   # (k, D), (k,)
    w_out = q.proj_out.weight.detach()[:, :, 0, 0]                                 # (D, k)
    u = torch.einsum("kd,bdhw->bkhw", w_in, z.detach()) + b_in.view(1, -1, 1, 1)
    grad_q = torch.einsum("dk,bdhw->bkhw", w_out, upstream)                       # dL/dq
    grad_u = grad_q * (1 - torch.tanh(u) ** 2)                                     # centred STE: sech^2(u)
    torch.testing.assert_close(z.grad, torch.einsum("kd,bkhw->bdhw", w_in, grad_u), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.proj_in.weight.grad[:, :, 0, 0], torch.einsum("bkhw,bdhw->kd", grad_u, z.detach()),
                               rtol=1e-5, atol=1e-6)


def test_binary_fsq_official_bound_matches_the_official_formula():
    """The official 2-level FSQ: threshold at u = -atanh(0.5 / 0.5005) ~= -3.80, dq/du = 1.001 sech^2(u + 3.80).

    Expected values derived by hand from official ``modeling/quantizer.py`` (bound, round_ste, the
    {-1, 0} -> {-1, +1} map), not from barlab.
    """
    q = BinaryFSQ(latent_channels=4, bits=5, bound="official")
    shift = math.atanh(0.5 / 0.5005)
    assert abs(shift - 3.8002) < 1e-3
    u = torch.tensor([-10.0, -3.9, -3.7, 0.0, 2.0]).view(1, 5, 1, 1).requires_grad_(True)
    values = q.quantize(u)
    assert values.flatten().tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]  # centred would give -1 at -3.7 and +1 at 0 only
    values.sum().backward()
    expected = 1.001 / torch.cosh(u.detach() + shift) ** 2
    torch.testing.assert_close(u.grad, expected, rtol=1e-4, atol=1e-7)  # the shift is float32, as officially
    assert u.grad.flatten()[3] < 3e-3  # at u = 0 the official STE passes almost nothing
    centred = BinaryFSQ(latent_channels=4, bits=5)
    assert centred.quantize(u.detach()).flatten().tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0]


def test_binary_fsq_official_threshold_is_the_float32_one():
    """The official shift is atanh(0.5 / 0.5005) computed in float32 (3.8006849), not in float64
    (3.8007011): pre-activations between the two thresholds give bit 0 officially (the official FSQ, run
    on u = -s64 and -s64 + 1e-5, gave bit 0 for both, where a float64 shift gives 1)."""
    q = BinaryFSQ(latent_channels=4, bits=3, bound="official")
    s32 = float(torch.atanh(torch.tensor(0.5, dtype=torch.float32) / torch.tensor(0.5005, dtype=torch.float32)))
    s64 = math.atanh(0.5 / 0.5005)
    assert 1.5e-5 < s64 - s32 < 1.7e-5
    u = torch.tensor([-s64 + 1e-6, -s32 - 1e-6, -s32 + 1e-6], dtype=torch.float32).view(1, 3, 1, 1)
    assert q.quantize(u).flatten().tolist() == [-1.0, -1.0, 1.0]


def test_binary_fsq_official_bound_round_trips_and_refuses_unknown_bounds():
    q = BinaryFSQ(latent_channels=8, bits=6, bound="official").eval()
    z = torch.randn(2, 8, 3, 3) * 3
    out = q(z)
    assert torch.equal(q.encode_bits(z), out.bits)
    torch.testing.assert_close(q.decode_bits(out.bits), out.latent)
    with pytest.raises(ConfigError) as err:
        BinaryFSQ(latent_channels=8, bits=6, bound="tanh")
    assert err.value.knob == "bound" and err.value.fix == "bound=centred"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.long])
def test_binary_fsq_bits_round_trip_is_exact(dtype):
    q = BinaryFSQ(latent_channels=16, bits=10).eval()
    z = torch.randn(4, 16, 3, 5)
    bits = q.encode_bits(z)
    assert bits.shape == (4, 3, 5, 10) and bits.dtype == torch.float32
    assert set(bits.unique().tolist()) <= {0.0, 1.0}
    out = q(z)
    assert torch.equal(bits, out.bits)
    assert torch.equal(q.decode_bits(bits.to(dtype)), out.latent)


def test_binary_fsq_decode_bits_rejects_wrong_k():
    q = BinaryFSQ(latent_channels=8, bits=16)
    with pytest.raises(ConfigError) as err:
        q.decode_bits(torch.zeros(1, 2, 2, 8))
    assert err.value.knob == "bits"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8", None, 8.0])
def test_binary_fsq_rejects_bad_bits(bad):
    with pytest.raises(ConfigError) as err:
        BinaryFSQ(latent_channels=8, bits=bad)
    assert err.value.knob == "bits"  # its own argument: the config layer names the knob (below)
    assert str(err.value) == f"bits: must be a positive integer, got {bad!r} (fix: bits=16)"


@pytest.mark.parametrize("bad", [0, 2.5])
def test_binary_fsq_bad_bits_name_tokenizer_bits_through_the_config(compose_train, bad):
    from barlab.config.instantiate import instantiate_checked

    cfg = compose_train(["experiment=smoke", f"tokenizer.bits={bad}"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert str(err.value) == f"tokenizer.bits: must be a positive integer, got {bad!r} (fix: tokenizer.bits=16)"
    cfg = compose_train(["experiment=smoke", "tokenizer.quantizer.bound=tanh"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert err.value.knob == "tokenizer.quantizer.bound" and err.value.fix == "tokenizer.quantizer.bound=centred"


@pytest.mark.parametrize("k", [64, 256])
def test_binary_fsq_large_k_is_small_in_memory(k):
    d = 64
    q = BinaryFSQ(latent_channels=d, bits=k)
    assert list(q.buffers()) == []
    n_params = sum(p.numel() for p in q.parameters())
    assert n_params == 2 * d * k + k + d  # two 1x1 convs: O(D * k), nothing of size 2^k
    assert n_params < 4 * d * k
    assert all(p.numel() <= d * k for p in q.parameters())
    z = torch.randn(2, d, 8, 8)
    out = q(z)
    assert out.bits.shape == (2, 8, 8, k)
    assert out.latent.shape == (2, d, 8, 8)
    assert torch.equal(q.decode_bits(q.encode_bits(z)), out.latent)
    assert q.bits_per_image((16, 16)) == 16 * 16 * k


def test_binary_fsq_k256_peak_memory_is_tiny():
    """Run forward+backward for k=256 under the torch CPU profiler and bound every allocation."""
    q = BinaryFSQ(latent_channels=64, bits=256)
    z = torch.randn(2, 64, 8, 8, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = q(z)
        out.latent.sum().backward()
        bit_statistics(out.bits)
    biggest = max(abs(e.cpu_memory_usage) for e in prof.key_averages())
    assert 0 < biggest < 4 << 20  # < 4 MiB: a 2^256 table, or even a 2^32 one, could never fit


# ---------------------------------------------------------------- bit budgets


def test_bit_budgets_match_paper_formulas():
    assert BinaryFSQ(8, 16).bits_per_image((16, 16)) == 4096
    assert BinaryFSQ(8, 256).bits_per_image((16, 16)) == 65536
    fsq = FSQ(8, [8, 8, 8, 5, 5, 5])
    assert fsq.codebook_size == 64000
    assert fsq.bits_per_token == 16 == math.ceil(math.log2(64000))
    assert fsq.bits_per_image((16, 16)) == 4096
    kl = KLLatent(8, channels=16)
    assert kl.bits_per_token == 256
    assert kl.bits_per_image((16, 16)) == 65536
    assert KLLatent(8, channels=4).bits_per_image((32, 32)) == 65536  # SD-VAE f8 row of the table
    for q in (BinaryFSQ(8, 16), fsq, kl):
        assert isinstance(q, Quantizer)
        assert type(q.bits_per_image((16, 16))) is int


def test_bit_budgets_are_exact_python_ints_for_huge_codebooks():
    # 2^62 levels of 2 (product 2^62 overflows nothing yet), and a product far beyond int64.
    assert FSQ(4, [2] * 62).bits_per_token == 62
    huge = FSQ(4, [7] * 40)  # 7^40 ~ 6.4e33
    assert huge.codebook_size == 7**40
    assert huge.bits_per_token == math.ceil(40 * math.log2(7)) == 113
    assert huge.bits_per_image((256, 256)) == 256 * 256 * 113
    assert FSQ(4, [2, 2, 2, 2]).bits_per_token == 4  # exact power of two: no off-by-one
    assert FSQ(4, [3]).bits_per_token == 2
    assert BinaryFSQ(4, 256).bits_per_image((1024, 1024)) == 1024 * 1024 * 256
    with pytest.raises(ConfigError) as err:
        huge.encode_bits(torch.randn(1, 4, 2, 2))
    assert err.value.knob == "levels"


# ---------------------------------------------------------------- FSQ


def test_fsq_values_on_grid_and_codes_in_range():
    levels = [8, 5, 4, 3, 2]
    q = FSQ(latent_channels=6, levels=levels)
    u = torch.randn(3, 5, 4, 4) * 4
    values, codes = q.quantize(u)
    for i, lv in enumerate(levels):
        half = lv // 2
        grid = torch.tensor([(c - half) / half for c in range(lv)])
        v = values[:, i].flatten()
        assert torch.isin(v, grid).all(), f"channel {i} off the grid"
        c = codes[:, i]
        assert c.min() >= 0 and c.max() < lv
        assert torch.equal(values[:, i], (c.float() - half) / half)
    # extreme inputs reach both ends of every channel
    _, codes_hi = q.quantize(torch.full((1, 5, 1, 1), 50.0))
    _, codes_lo = q.quantize(torch.full((1, 5, 1, 1), -50.0))
    assert codes_hi.flatten().tolist() == [lv - 1 for lv in levels]
    assert codes_lo.flatten().tolist() == [0] * len(levels)


def test_fsq_uses_every_level():
    q = FSQ(latent_channels=2, levels=[8, 5])
    u = torch.linspace(-6, 6, 2001).view(1, 1, 1, -1).expand(1, 2, 1, -1)
    _, codes = q.quantize(u)
    assert codes[0, 0].unique().tolist() == list(range(8))
    assert codes[0, 1].unique().tolist() == list(range(5))


def test_fsq_ste_gradient_and_forward_output(monkeypatch):
    q = FSQ(latent_channels=6, levels=[8, 8, 8, 5, 5, 5])
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 6, 4, 4)
    out = q(z)
    assert out.bits is None
    assert out.codes.shape == (2, 4, 4, 6) and out.codes.dtype == torch.long
    assert out.loss.item() == 0.0
    (out.latent * upstream).sum().backward()
    # straight through: the gradient of the whole module (projections included) is that of the same module
    # with the rounding taken out, while its forward value is not
    soft_z = z.detach().clone().requires_grad_(True)
    monkeypatch.setattr(torch, "round", lambda x: x)
    soft = q(soft_z)
    (soft.latent * upstream).sum().backward()
    assert z.grad.abs().sum() > 0 and torch.equal(z.grad, soft_z.grad)
    assert not torch.allclose(soft.latent, out.latent)


@pytest.mark.parametrize("levels", [[8, 5, 4, 3, 2], [7, 6]])
def test_fsq_ste_gradient_is_the_bound_derivative_over_the_half_width(levels):
    """value = round(b(u)) / (L // 2) with b(u) = h tanh(u + s) - o, h = (L - 1)(1 + 1e-3) / 2,
    o = 0.5 for even L (else 0), s = atanh(o / h): the STE gradient is g * h sech^2(u + s) / (L // 2)."""
    q = FSQ(latent_channels=4, levels=levels)
    n = len(levels)
    u = (torch.randn(3, n, 2, 2) * 1.5).requires_grad_(True)
    upstream = torch.randn(3, n, 2, 2)
    values, _ = q.quantize(u)
    (values * upstream).sum().backward()
    expected = torch.empty_like(u)
    for i, lv in enumerate(levels):
        h = (lv - 1) * (1 + 1e-3) / 2
        o = 0.5 if lv % 2 == 0 else 0.0
        s = math.atanh(o / h)
        expected[:, i] = upstream[:, i] * h * (1 - torch.tanh(u.detach()[:, i] + s) ** 2) / (lv // 2)
        # and the forward value itself, by hand
        by_hand = torch.round(h * torch.tanh(u.detach()[:, i] + s) - o) / (lv // 2)
        torch.testing.assert_close(values.detach()[:, i], by_hand)
    torch.testing.assert_close(u.grad, expected)


def test_fsq_bits_round_trip_is_exact():
    q = FSQ(latent_channels=6, levels=[8, 8, 8, 5, 5, 5]).eval()
    z = torch.randn(3, 6, 4, 4) * 3
    bits = q.encode_bits(z)
    assert bits.shape == (3, 4, 4, 16)
    assert set(bits.unique().tolist()) <= {0.0, 1.0}
    out = q(z)
    assert torch.equal(q.decode_bits(bits), out.latent)
    # bits are the little-endian mixed-radix index of the codes
    basis = torch.tensor([1, 8, 64, 512, 2560, 12800])
    index = (out.codes * basis).sum(-1)
    from_bits = (bits.long() << torch.arange(16)).sum(-1)
    assert torch.equal(index, from_bits)
    assert index.max() < 64000


@pytest.mark.parametrize("bad", [[8, 1], [0], [2.5, 4], [True, 4], ["8"], [], "885"])
def test_fsq_rejects_bad_levels(bad):
    with pytest.raises(ConfigError) as err:
        FSQ(latent_channels=4, levels=bad)
    assert err.value.knob == "levels" and err.value.fix == "levels=[8,8,8,5,5,5]"


# ---------------------------------------------------------------- KL


def test_kl_latent_eval_deterministic_train_stochastic_and_loss():
    q = KLLatent(latent_channels=8, channels=4, kl_weight=1e-3)
    z = torch.randn(2, 8, 4, 4)
    q.eval()
    a, b = q(z), q(z)
    assert torch.equal(a.latent, b.latent)
    assert a.bits is None and a.codes is None
    assert a.metrics["kl"] > 0 and a.loss > 0
    torch.testing.assert_close(a.loss, 1e-3 * a.metrics["kl"])
    # hand check of the normalisation: sum over latent dims, mean over batch
    mean, logvar = q.proj_in(z).chunk(2, dim=1)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(a.metrics["kl"], kl)
    q.train()
    c, d = q(z), q(z)
    assert not torch.equal(c.latent, d.latent)
    assert q.bits_per_token == 16 * 4
    with pytest.raises(ConfigError) as err:
        q.encode_bits(z)
    assert err.value.knob == ""  # the quantizer as a whole


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "16"])
def test_kl_rejects_bad_channels(bad):
    with pytest.raises(ConfigError) as err:
        KLLatent(latent_channels=8, channels=bad)
    assert err.value.knob == "channels"


def test_kl_rejects_negative_weight():
    with pytest.raises(ConfigError) as err:
        KLLatent(latent_channels=8, channels=4, kl_weight=-1.0)
    assert err.value.knob == "kl_weight"


def test_kl_and_fsq_errors_name_their_knobs_through_the_config(compose_train):
    from barlab.config.instantiate import instantiate_checked

    cfg = compose_train(["experiment=smoke", "tokenizer/quantizer=kl", "tokenizer.quantizer.kl_weight=-1"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert str(err.value) == ("tokenizer.quantizer.kl_weight: must be a non-negative number, got -1 "
                              "(fix: tokenizer.quantizer.kl_weight=1e-6)")
    cfg = compose_train(["experiment=smoke", "tokenizer/quantizer=fsq", "tokenizer.quantizer.levels=[8,1]"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert err.value.knob == "tokenizer.quantizer.levels"
    assert err.value.fix == "tokenizer.quantizer.levels=[8,8,8,5,5,5]"


# ---------------------------------------------------------------- bit statistics


def test_bit_statistics_hand_made():
    bits = torch.tensor(
        [
            [1, 0, 0, 1],
            [1, 0, 1, 1],
            [1, 0, 0, 1],
            [1, 0, 1, 0],
        ],
        dtype=torch.float32,
    )
    stats = bit_statistics(bits)
    torch.testing.assert_close(stats["usage"], torch.tensor([1.0, 0.0, 0.5, 0.75], dtype=torch.float64))
    h075 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    torch.testing.assert_close(stats["entropy"], torch.tensor([0.0, 0.0, 1.0, h075], dtype=torch.float64))
    assert stats["min_entropy"].item() == 0.0
    assert stats["mean_entropy"].item() == pytest.approx((1.0 + h075) / 4)
    assert stats["unique_fraction"].item() == pytest.approx(3 / 4)
    assert stats["num_tokens"] == 4


def test_bit_statistics_leading_dims_and_k256():
    bits = torch.zeros(2, 3, 4, 256)
    bits[0, 0, 0, 200] = 1  # one token differs only in a high bit
    stats = bit_statistics(bits)
    assert stats["num_tokens"] == 24
    assert stats["unique_fraction"].item() == pytest.approx(2 / 24)
    assert stats["usage"].shape == (256,)
    assert stats["usage"][200].item() == pytest.approx(1 / 24)
    # balanced random bits: entropy close to 1 everywhere, almost all codes distinct
    rand = (torch.rand(4096, 256) > 0.5).float()
    s = bit_statistics(rand)
    assert s["min_entropy"] > 0.95 and s["unique_fraction"].item() == 1.0


def test_bit_stats_accumulator_matches_one_shot():
    a = (torch.rand(5, 4, 4, 16) > 0.3).float()
    b = (torch.rand(3, 4, 4, 16) > 0.6).float()
    acc = BitStatsAccumulator(16)
    acc.update(a)
    acc.update(b)
    got = acc.compute()
    want = bit_statistics(torch.cat([a.reshape(-1, 16), b.reshape(-1, 16)]))
    torch.testing.assert_close(got["usage"], want["usage"])
    torch.testing.assert_close(got["entropy"], want["entropy"])
    assert got["num_tokens"] == want["num_tokens"] == 128
    per_batch = (bit_statistics(a)["unique_fraction"] + bit_statistics(b)["unique_fraction"]) / 2
    torch.testing.assert_close(got["unique_fraction"], per_batch)
    acc.reset()
    with pytest.raises(RuntimeError):
        acc.compute()
