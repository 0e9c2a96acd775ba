"""Attention's three mask paths against a reference written with explicit loops, and the KV cache.

- no cache, or an empty one, n > 1 slots (the prefix, a teacher-forced sequence): causal;
- a chunk of n > 1 slots after ``offset`` cached ones (several slots forming one AR step): slot i sees
  keys 0 .. offset + i, a boolean mask built by hand here;
- one slot after a filled cache: every cached key and itself.

Decoding slot by slot (or chunk by chunk) through the cache equals the full recompute.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import barlab.generator.attention as attention_module
from barlab.generator.attention import Attention
from barlab.generator.kv_cache import KVCache
from barlab.generator.rope import Rope2D

WIDTH, HEADS = 16, 2
HEAD_DIM = WIDTH // HEADS


def tiny_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(WIDTH, HEADS).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


def reference(attn: Attention, x: torch.Tensor, allowed: torch.Tensor, rotation=None) -> torch.Tensor:
    """Attention of every slot of x (B, S, d) with ``allowed[i, j]`` (S, S) saying query i may see key j,
    written out: per batch row, head and query a softmax over the allowed keys."""
    from barlab.generator.rope import rotate

    batch, slots, _ = x.shape
    qkv = attn.qkv(x).view(batch, slots, 3, HEADS, HEAD_DIM)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))              # (B, H, S, e)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rotation is not None:
        q, k = rotate(q, rotation.q_cos, rotation.q_sin), rotate(k, rotation.k_cos, rotation.k_sin)
    out = torch.zeros(batch, HEADS, slots, HEAD_DIM, dtype=x.dtype)
    for b in range(batch):
        for h in range(HEADS):
            for i in range(slots):
                keys = [j for j in range(slots) if allowed[i, j]]
                scores = torch.stack([q[b, h, i] @ k[b, h, j] for j in keys]) / math.sqrt(HEAD_DIM)
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, keys))
    return attn.proj(out.transpose(1, 2).reshape(batch, slots, WIDTH))


def causal(slots: int) -> torch.Tensor:
    return torch.tensor([[j <= i for j in range(slots)] for i in range(slots)])


def test_full_sequence_is_causal():
    attn = tiny_attention()
    x = torch.randn(2, 6, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference(attn, x, causal(6)), rtol=0, atol=1e-10)


def test_full_sequence_with_rope_is_causal():
    attn = tiny_attention(3)
    x = torch.randn(2, 6, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rope = Rope2D(HEAD_DIM, (2, 3), HEADS).double()
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 0, 5, 2, 1, 3]])
    rotation = rope(positions, (positions + 1) % 7)
    torch.testing.assert_close(attn(x, rotation), reference(attn, x, causal(6), rotation), rtol=0, atol=1e-10)


@pytest.mark.parametrize("offset,chunk", [(1, 2), (3, 4), (2, 1), (5, 3)])
def test_a_chunk_after_cached_slots_sees_the_cache_and_its_own_earlier_slots(offset, chunk, monkeypatch):
    attn = tiny_attention()
    slots = offset + chunk
    x = torch.randn(3, slots, WIDTH, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cache = KVCache(1, 3, HEADS, slots + 2, HEAD_DIM, dtype=torch.float64)
    first = attn(x[:, :offset], cache=cache)
    cache.advance(offset)

    masks = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        masks.append((attn_mask, is_causal, k.shape[2]))
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    second = attn(x[:, offset:], cache=cache)
    (mask, is_causal, keys), = masks
    assert keys == slots and not is_causal
    if chunk > 1:
        by_hand = torch.zeros(chunk, slots, dtype=torch.bool)
        for i in range(chunk):
            by_hand[i, : offset + i + 1] = True
        assert mask is not None and mask.dtype == torch.bool and torch.equal(mask, by_hand)
    else:
        assert mask is None                       # one slot sees every filled key: no mask needed
    want = reference(attn, x, causal(slots))
    torch.testing.assert_close(first, want[:, :offset], rtol=0, atol=1e-10)
    torch.testing.assert_close(second, want[:, offset:], rtol=0, atol=1e-10)


def test_decoding_slot_by_slot_or_in_chunks_equals_the_full_recompute():
    attn = tiny_attention(5)
    slots = 9
    x = torch.randn(2, slots, WIDTH, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full = attn(x)
    for sizes in ([1] * slots, [3, 1, 2, 3], [4, 5], [2, 2, 2, 2, 1]):
        cache = KVCache(1, 2, HEADS, slots, HEAD_DIM, dtype=torch.float64)
        outs, start = [], 0
        for n in sizes:
            outs.append(attn(x[:, start:start + n], cache=cache))
            cache.advance(n)
            start += n
        torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-10)


def test_kv_cache_writes_each_layer_at_the_fill_index_and_moves_only_on_advance():
    cache = KVCache(depth=2, batch=1, heads=1, max_len=5, head_dim=2)
    k1, v1 = torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 1, 2, 2)
    keys, values = cache.append(0, k1, v1)
    assert keys.shape == (1, 1, 2, 2) and torch.equal(keys, k1) and torch.equal(values, v1)
    assert cache.length == 0                          # the other blocks still append these slots
    keys, values = cache.append(1, 3 * k1, 4 * v1)
    assert torch.equal(keys, 3 * k1) and torch.equal(values, 4 * v1)
    cache.advance(2)
    assert cache.length == 2
    k2, v2 = 5 * torch.ones(1, 1, 1, 2), 6 * torch.ones(1, 1, 1, 2)
    keys, values = cache.append(0, k2, v2)
    assert keys.shape == (1, 1, 3, 2)
    assert keys[0, 0, :, 0].tolist() == [1.0, 1.0, 5.0] and values[0, 0, :, 0].tolist() == [2.0, 2.0, 6.0]
    assert cache.keys[1][0, 0, :, 0].tolist() == [3.0, 3.0, 0.0, 0.0, 0.0]     # layer 1 untouched
    cache.advance(1)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(0, torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    cache.class_vec = torch.ones(1, 4)
    cache.reset()
    assert cache.length == 0 and cache.class_vec is None
    keys, _ = cache.append(0, 7 * torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert keys[0, 0, :, 0].tolist() == [7.0]          # overwritten from slot 0
