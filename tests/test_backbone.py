"""AR context model: shapes, causality, KV cache == recompute, token shuffling, RAR, sampler, CFG."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from barlab.errors import ConfigError
from barlab.generator import (
    ARBackbone,
    ARSampler,
    BitwiseHead,
    MBMHead,
    random_ratio,
    sample_orders,
    shuffle,
    unshuffle,
)

K, GRID, CLASSES, COND = 6, (4, 4), 10, 24
L = GRID[0] * GRID[1]


def tiny(seed: int = 0, double: bool = True, **kw) -> ARBackbone:
    """A d=32, 2-layer, 4-head backbone with every parameter random (adaLN gates nonzero)."""
    torch.manual_seed(seed)
    model = ARBackbone(K, GRID, CLASSES, width=32, depth=2, heads=4, cond_dim=COND, class_repeat=3, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.eval()
    return model.double() if double else model


def random_bits(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 2, (batch, L, K), generator=torch.Generator().manual_seed(seed)).double()


LABELS = torch.tensor([0, 4, CLASSES])  # the last is the null class


def test_forward_shape_and_causality():
    model = tiny()
    bits = random_bits()
    cond = model(bits, LABELS)
    assert cond.shape == (3, L, COND) and cond.dtype == torch.float64
    for j in (0, 5, L - 2):
        changed = bits.clone()
        changed[:, j] = 1 - changed[:, j]
        new = model(changed, LABELS)
        assert torch.equal(new[:, : j + 1], cond[:, : j + 1])  # cond[:, j] predicts token j: it must not see it
        assert not torch.allclose(new[:, j + 1:], cond[:, j + 1:])
    changed = bits.clone()
    changed[:, L - 1] = 1 - changed[:, L - 1]
    assert torch.equal(model(changed, LABELS), cond)  # the last token is never an input


def test_labels_change_every_condition():
    model = tiny()
    bits = random_bits()
    a, b = model(bits, LABELS), model(bits, torch.tensor([1, 4, CLASSES]))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1:], b[1:])


@pytest.mark.parametrize("rope,target_aware", [(True, True), (True, False), (False, True), (False, False)])
def test_kv_cache_matches_full_forward(rope, target_aware):
    model = tiny(rope=rope, target_aware_rope=target_aware, target_aware_pos=target_aware)
    bits = random_bits()
    full = model(bits, LABELS)
    cache = model.new_cache(3)
    assert cache.keys[0].shape == (3, 4, model.prefix_len + L - 1, 8)
    steps = [model.prefill(LABELS, cache)]
    for t in range(L - 1):
        steps.append(model.step(bits[:, t], t, cache))
    assert model.step(bits[:, L - 1], L - 1, cache) is None
    assert cache.length == model.max_len
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-10)


def test_random_order_conditions_depend_only_on_earlier_tokens():
    model = tiny()
    bits = random_bits()
    order = sample_orders(3, L, 1.0, torch.Generator().manual_seed(3))
    cond = model(bits, LABELS, order)
    assert not torch.allclose(cond, model(bits, LABELS))  # the order matters
    rows = torch.arange(3)
    for j in (0, 4, L - 3):
        changed = bits.clone()
        changed[rows, order[:, j + 1]] = 1 - changed[rows, order[:, j + 1]]
        new = model(changed, LABELS, order)
        assert torch.equal(new[:, : j + 2], cond[:, : j + 2])
        assert not torch.allclose(new[:, j + 2:], cond[:, j + 2:])


def test_raster_order_equals_no_order():
    model = tiny()
    bits = random_bits()
    raster = torch.arange(L).expand(3, L)
    assert torch.equal(model(bits, LABELS, raster), model(bits, LABELS))


def test_target_aware_rope_uses_the_order():
    """Two orders that agree on the first j+1 tokens but differ at j+1 give different cond[:, j]
    (the target position enters through the target embedding and the target-aware queries)."""
    model = tiny(target_aware_pos=False)
    bits = random_bits()
    a = torch.arange(L).expand(3, L).clone()
    b = a.clone()
    b[:, [2, 3]] = b[:, [3, 2]]
    ca, cb = model(bits, LABELS, a), model(bits, LABELS, b)
    assert torch.equal(ca[:, :2], cb[:, :2]) and not torch.allclose(ca[:, 2], cb[:, 2])
    plain = tiny(target_aware_pos=False, target_aware_rope=False)
    assert torch.equal(plain(bits, LABELS, a)[:, 2], plain(bits, LABELS, b)[:, 2])
    # only the seen tokens and the target matter: an order that agrees with b on its first 3 entries (two seen,
    # one target) gives the same cond[:, :3]
    c = b.clone()
    c[:, 3:] = c[:, 3:].flip(1)
    assert not torch.equal(b, c) and torch.equal(model(bits, LABELS, c)[:, :3], cb[:, :3])

    # the rotations the attention gets for order b, by hand: keys and the first heads // 2 query heads at
    # the slot's own grid position, the last heads // 2 query heads at the target's. Slot P + 1 holds token
    # b[1] = 1 (row 0, col 1) and predicts b[2] = 3 (row 0, col 3); head_dim 8: frequencies 1 and 0.01,
    # angles (row·f, col·f).
    seen = []
    rope_forward = model.rope.forward
    model.rope.forward = lambda current, target: seen.append((current, target)) or rope_forward(current, target)
    model(bits, LABELS, b)
    ((current, target),) = seen
    P = model.prefix_len
    assert torch.equal(current, torch.cat([torch.full((3, P), L), b[:, :-1]], dim=1))
    assert torch.equal(target, torch.cat([b[:, :1].expand(3, P - 1), b], dim=1))
    rotation = rope_forward(current, target)
    own = torch.tensor([0.0, 0.0, 1.0, 0.01]).cos()
    aimed = torch.tensor([0.0, 0.0, 3.0, 0.03]).cos()
    torch.testing.assert_close(rotation.k_cos[0, 0, P + 1], own, check_dtype=False)
    torch.testing.assert_close(rotation.q_cos[0, :2, P + 1], own.expand(2, 4), check_dtype=False)
    torch.testing.assert_close(rotation.q_cos[0, 2:, P + 1], aimed.expand(2, 4), check_dtype=False)
    aimed_sin = torch.tensor([0.0, 0.0, 3.0, 0.03]).sin()
    torch.testing.assert_close(rotation.q_sin[0, 2:, P + 1], aimed_sin.expand(2, 4), check_dtype=False)
    torch.testing.assert_close(rotation.k_cos[0, 0, 0], torch.ones(4), check_dtype=False)    # prefix: no rotation


def test_drop_labels():
    model = tiny()
    labels = torch.arange(8) % CLASSES
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.drop_labels(labels, 0.0, gen), labels)
    assert torch.equal(model.drop_labels(labels, 1.0, gen), torch.full_like(labels, CLASSES))
    assert model.null_class == CLASSES


def test_bad_config_raises():
    with pytest.raises(ConfigError) as err:
        ARBackbone(K, GRID, CLASSES, width=32, heads=5)
    assert err.value.knob == "heads" and err.value.fix == "heads=4"
    with pytest.raises(ConfigError) as err:
        ARBackbone(K, GRID, CLASSES, width=24, heads=4)  # head_dim 6: no 2D RoPE
    assert err.value.knob == "heads" and err.value.fix == "rope=false"


def test_bad_config_names_the_generator_knobs(compose_train):
    from barlab.pipeline.generator_stage import build_backbone_and_head

    cfg = compose_train(["experiment=smoke", "generator.backbone.heads=5"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        build_backbone_and_head(cfg, 16, (4, 4), 4)
    assert str(err.value) == "generator.backbone.heads: must divide width 32, got 5 (fix: generator.backbone.heads=4)"
    cfg = compose_train(["experiment=smoke", "generator.backbone.width=24", "generator.backbone.heads=4"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        build_backbone_and_head(cfg, 16, (4, 4), 4)
    assert err.value.knob == "generator.backbone.heads" and err.value.fix == "generator.backbone.rope=false"
    cfg = compose_train(["experiment=smoke", "generator.token_shuffle=3"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        build_backbone_and_head(cfg, 16, (4, 4), 4)
    assert str(err.value) == ("generator.token_shuffle: factor 3 must divide the token grid 4x4 "
                              "(fix: generator.token_shuffle=1)")


@pytest.mark.parametrize("head_kind", ["mbm", "bitwise"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampler_kv_cache_equals_recompute(head_kind, guidance):
    model = tiny()
    torch.manual_seed(5)
    head = MBMHead(COND, K, width=16, depth=1, steps=3) if head_kind == "mbm" else BitwiseHead(COND, K)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    sampler = ARSampler(model, head)
    labels = torch.tensor([1, 7])
    model.train()
    runs = [sampler.sample(labels, guidance=guidance, temperature=1.0, generator=torch.Generator().manual_seed(9),
                           use_kv_cache=cache) for cache in (True, False)]
    assert model.training and head.training  # sample() restores the modes
    assert runs[0].shape == (2, L, K) and set(runs[0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(runs[0], runs[1])


def test_guidance_one_skips_uncond_rows():
    model = tiny()
    head = BitwiseHead(COND, K)
    calls = []
    original = head.sample

    def spy(cond, uncond, guidance, **kw):
        calls.append((cond.shape[0], uncond is None))
        return original(cond, uncond, guidance, **kw)

    head.sample = spy
    ARSampler(model, head).sample(torch.tensor([1, 2]), guidance=1.0)
    assert calls == [(2, True)] * L
    calls.clear()
    ARSampler(model, head).sample(torch.tensor([1, 2]), guidance=2.0)
    assert calls == [(2, False)] * L


@pytest.mark.parametrize("p,grid", [(1, (4, 4)), (2, (4, 4)), (4, (4, 4)), (2, (8, 8)), (4, (8, 8))])
def test_token_shuffle_round_trip(p, grid):
    bits = torch.randint(0, 2, (2, grid[0] * grid[1], 5)).float()
    merged = shuffle(bits, grid, p)
    assert merged.shape == (2, grid[0] * grid[1] // p**2, 5 * p * p)
    assert torch.equal(unshuffle(merged, grid, p), bits)


def test_token_shuffle_layout():
    """Step (i, j) of the merged grid holds tokens (p·i + sh, p·j + sw) in (sh, sw, k) order."""
    height, width, p, k = 8, 8, 2, 3
    bits = torch.randn(1, height * width, k)
    merged = shuffle(bits, (height, width), p)
    grid = rearrange(bits, "b (h w) k -> b h w k", h=height)
    for i, j in [(0, 0), (1, 2), (3, 3)]:
        expected = torch.cat([grid[0, p * i + sh, p * j + sw] for sh in range(p) for sw in range(p)])
        assert torch.equal(merged[0, i * (width // p) + j], expected)


def test_token_shuffle_refuses_non_divisor():
    with pytest.raises(ConfigError) as err:
        shuffle(torch.zeros(1, 36, 4), (6, 6), 4)
    assert err.value.knob == "p"  # the function's argument: generator.token_shuffle through the wiring


def test_rar_schedule():
    total = 1000
    values = [random_ratio(s, total) for s in (0, 0.5 * total, 0.625 * total, 0.75 * total, total)]
    assert values == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_orders(4, 9, 0.0, gen), torch.arange(9).expand(4, 9))
    orders = sample_orders(64, 9, 1.0, gen)
    assert torch.equal(orders.sort(dim=1).values, torch.arange(9).expand(64, 9))
    assert (orders != torch.arange(9)).any(dim=1).float().mean() > 0.9
