"""2-D RoPE: the angle table against the formula, barlab's (i, i + D/2) pairing, which heads see the target,
and q·k after rotation depending only on the (row, column) offset of the two positions.

The row/column assignment matters: with the rows and columns of the table swapped every generator test
still passes (a transposed grid is just another consistent embedding), so these tests pin it down by value.
"""

from __future__ import annotations

import math

import pytest
import torch

from barlab.generator.rope import Rope2D, rotate


def expected_angles(head_dim: int, grid: tuple[int, int], base: float = 10000.0) -> torch.Tensor:
    """The documented table in float64: row p < L holds [row(p)·f_0 .. row(p)·f_{D/4-1}, col(p)·f_0 ..],
    f_i = base^(-i / (D/4)), row(p) = p // w, col(p) = p % w; row L (the prefix slots) is all zeros."""
    quarter = head_dim // 4
    h, w = grid
    rows = []
    for p in range(h * w):
        r, c = divmod(p, w)
        freqs = [base ** (-i / quarter) for i in range(quarter)]
        rows.append([r * f for f in freqs] + [c * f for f in freqs])
    rows.append([0.0] * (2 * quarter))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("head_dim,grid,base", [(8, (3, 5), 10000.0), (16, (4, 4), 10000.0), (12, (2, 6), 100.0)])
def test_table_is_cos_and_sin_of_row_then_column_angles(head_dim, grid, base):
    rope = Rope2D(head_dim, grid, heads=2, base=base)
    angles = expected_angles(head_dim, grid, base)
    assert rope.cos.shape == (grid[0] * grid[1] + 1, head_dim // 2) and rope.cos.dtype == torch.float32
    torch.testing.assert_close(rope.cos.double(), angles.cos(), rtol=0, atol=1e-7)
    torch.testing.assert_close(rope.sin.double(), angles.sin(), rtol=0, atol=1e-7)


def test_first_half_follows_the_row_and_second_half_the_column():
    """Position (0, 1) has row 0: the first D/4 angles are 0. Position (1, 0) has column 0: the last D/4 are 0."""
    head_dim, grid = 8, (3, 5)
    rope = Rope2D(head_dim, grid, heads=2)
    q = head_dim // 4
    right, below = 1, grid[1]            # raster indices of (0, 1) and (1, 0)
    assert torch.equal(rope.sin[right, :q], torch.zeros(q)) and rope.sin[right, q] == pytest.approx(math.sin(1.0))
    assert torch.equal(rope.sin[below, q:], torch.zeros(q)) and rope.sin[below, 0] == pytest.approx(math.sin(1.0))
    # the last raster position (2, 4): row angle 2·f_0, column angle 4·f_0
    assert rope.sin[grid[0] * grid[1] - 1, 0] == pytest.approx(math.sin(2.0))
    assert rope.sin[grid[0] * grid[1] - 1, q] == pytest.approx(math.sin(4.0))


def test_rotate_turns_each_pair_i_and_i_plus_half_by_its_angle():
    gen = torch.Generator().manual_seed(0)
    d = 8
    x = torch.randn(2, 3, 5, d, generator=gen, dtype=torch.float64)
    theta = torch.randn(2, 1, 5, d // 2, generator=gen, dtype=torch.float64)
    out = rotate(x, theta.cos(), theta.sin())
    by_hand = torch.empty_like(x)
    for i in range(d // 2):
        a, b, t = x[..., i], x[..., i + d // 2], theta[..., i]
        by_hand[..., i] = a * t.cos() - b * t.sin()
        by_hand[..., i + d // 2] = a * t.sin() + b * t.cos()
    torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))   # a rotation keeps the length


def _score(rope: Rope2D, q: torch.Tensor, k: torch.Tensor, pq: int, pk: int) -> float:
    """q·k after rotating q at raster position pq and k at pk (keys' rotation, head 0)."""
    rot = rope(torch.tensor([[pq, pk]]), torch.tensor([[pq, pk]]))
    qr = rotate(q.view(1, 1, 1, -1), rot.k_cos[:, :, :1], rot.k_sin[:, :, :1])
    kr = rotate(k.view(1, 1, 1, -1), rot.k_cos[:, :, 1:], rot.k_sin[:, :, 1:])
    return float((qr * kr).sum())


def test_scores_depend_only_on_the_row_and_column_offsets():
    h, w, d = 5, 7, 16
    rope = Rope2D(d, (h, w), heads=1, target_aware=False)
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    at = lambda r, c: r * w + c  # noqa: E731
    pairs = [((1, 2), (3, 1)), ((0, 0), (2, 5)), ((2, 6), (0, 3)), ((1, 1), (1, 1))]
    for (r1, c1), (r2, c2) in pairs:
        base = _score(rope, q, k, at(r1, c1), at(r2, c2))
        for dr, dc in [(1, 0), (0, 1), (2, -1), (-1, -3)]:
            a, b = (r1 + dr, c1 + dc), (r2 + dr, c2 + dc)
            if not all(0 <= r < h and 0 <= c < w for r, c in (a, b)):
                continue
            assert _score(rope, q, k, at(*a), at(*b)) == pytest.approx(base, abs=1e-5), ((r1, c1), (r2, c2), dr, dc)
    # the score changes when the offset does, along either axis; and a row offset is not a column offset
    ref = _score(rope, q, k, at(2, 2), at(2, 2))
    down, right = _score(rope, q, k, at(2, 2), at(3, 2)), _score(rope, q, k, at(2, 2), at(2, 3))
    assert abs(down - ref) > 1e-3 and abs(right - ref) > 1e-3 and abs(down - right) > 1e-3


def test_score_of_a_row_offset_matches_the_formula():
    """Only the first half of the pairs turns for a pure row offset: q·R(Δ)k with angle Δr·f_i on pair i."""
    h, w, d = 4, 6, 8
    rope = Rope2D(d, (h, w), heads=1, target_aware=False)
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    quarter = d // 4
    freqs = [10000.0 ** (-i / quarter) for i in range(quarter)]
    for dr, dc in [(2, 0), (0, 3), (1, 4)]:
        got = _score(rope, q.float(), k.float(), 0, dr * w + dc)
        # pair i (i, i + D/2): q_i k_i + q_j k_j turns by the angle of k minus that of q
        angles = [dr * f for f in freqs] + [dc * f for f in freqs]
        want = 0.0
        for i, a in enumerate(angles):
            j = i + d // 2
            want += (q[i] * k[i] + q[j] * k[j]) * math.cos(a) + (q[i] * k[j] - q[j] * k[i]) * -math.sin(a)
        assert got == pytest.approx(float(want), abs=1e-5), (dr, dc)


def test_target_aware_queries_turn_the_last_half_of_the_heads_by_the_target():
    rope = Rope2D(8, (3, 3), heads=4, target_aware=True)
    current, target = torch.tensor([[0, 4, 9]]), torch.tensor([[4, 8, 0]])
    rot = rope(current, target)
    assert rot.q_cos.shape == (1, 4, 3, 4) and rot.k_cos.shape == (1, 1, 3, 4)
    for head in range(4):
        src = current if head < 2 else target
        assert torch.equal(rot.q_cos[0, head], rope.cos[src[0]]) and torch.equal(rot.q_sin[0, head], rope.sin[src[0]])
    assert torch.equal(rot.k_cos[0, 0], rope.cos[current[0]]) and torch.equal(rot.k_sin[0, 0], rope.sin[current[0]])
    plain = Rope2D(8, (3, 3), heads=4, target_aware=False)(current, target)
    assert torch.equal(plain.q_cos, plain.k_cos) and torch.equal(plain.q_cos[0, 0], rope.cos[current[0]])
    # index L (= 9, the prefix slots) is the identity rotation
    assert torch.equal(rope.cos[9], torch.ones(4)) and torch.equal(rope.sin[9], torch.zeros(4))
