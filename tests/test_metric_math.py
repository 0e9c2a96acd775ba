"""FID, KID, Inception Score and precision/recall through barlab's ImageMetrics against independent references:

- FID on covariances that do not commute (random rotations of diagonal ones), against numpy + scipy.linalg.sqrtm,
  from features on both sides and with the real side given as file statistics;
- KID against the unbiased polynomial-kernel MMD² written as loops;
- IS against the per-split formula (the shuffle before the split pinned to the identity);
- precision/recall against brute-force k-NN balls, ties on a ball's surface counted as inside.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from barlab.metrics.feature_net import FeatureNet, Features
from barlab.metrics.image_metrics import ImageMetrics
from barlab.metrics.precision_recall import knn_radii, precision_recall
from barlab.metrics.reference import Reference


class Rows(FeatureNet):
    """The 'images' are rows of a table: the first ``num_features`` columns are the features, the rest logits."""

    backend, name, label = "random", "rows", "test rows"

    def __init__(self, num_features: int, num_classes: int = 0):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes

    def extract(self, images):
        x = images.double()
        logits = x[:, self.num_features:].float() if self.num_classes else None
        return Features(x[:, :self.num_features].float(), logits)


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def gaussian_rows(n: int, mean: np.ndarray, scales: np.ndarray, seed: int) -> np.ndarray:
    """n samples of N(mean, R diag(scales²) Rᵀ), a random rotation R; rounded to float32 (what the metrics keep)."""
    rng = np.random.default_rng(seed)
    rot = rotation(len(mean), seed + 100)
    x = mean + (rng.standard_normal((n, len(mean))) * scales) @ rot.T
    return x.astype(np.float32).astype(np.float64)


def fid_scipy(mu1, s1, mu2, s2) -> float:
    root = scipy.linalg.sqrtm(s1 @ s2)
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_fid_of_non_commuting_covariances_matches_scipy_sqrtm():
    d = 5
    real = gaussian_rows(300, np.array([0.0, 1.0, -1.0, 0.5, 2.0]), np.array([3.0, 1.0, 0.5, 2.0, 0.2]), seed=1)
    fake = gaussian_rows(200, np.array([0.5, 0.0, -1.5, 0.0, 1.0]), np.array([0.3, 2.5, 1.5, 0.7, 1.0]), seed=2)
    mu_r, s_r = real.mean(0), np.cov(real, rowvar=False)
    mu_f, s_f = fake.mean(0), np.cov(fake, rowvar=False)
    assert np.abs(s_r @ s_f - s_f @ s_r).max() > 0.5                     # they do not commute
    want = fid_scipy(mu_r, s_r, mu_f, s_f)
    # the commuting shortcut tr(S1) + tr(S2) - 2 tr(sqrt(S1) sqrt(S2)) would give another number
    shortcut = float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f)
                     - 2 * np.trace(scipy.linalg.sqrtm(s_r) @ scipy.linalg.sqrtm(s_f)).real)
    assert abs(shortcut - want) > 1e-2 * want

    metrics = ImageMetrics(Rows(d), kid_subset_size=50)
    metrics.add_real(torch.from_numpy(real))
    metrics.add_fake(torch.from_numpy(fake))
    out = metrics.compute()
    assert out["fid"] == pytest.approx(want, rel=1e-6)
    stats = metrics.real_statistics()
    np.testing.assert_allclose(stats.mu, mu_r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, s_r, rtol=1e-10, atol=1e-12)
    assert stats.num_samples == 300

    # the real side as file statistics: an exact (population) covariance, not a sample one
    sigma = rotation(d, 7) @ np.diag([4.0, 0.5, 1.0, 2.0, 0.1]) @ rotation(d, 7).T
    mu = np.array([1.0, -1.0, 0.0, 0.5, 0.25])
    via_file = ImageMetrics(Rows(d))
    via_file.set_reference(Reference(mu=mu, sigma=sigma, num_samples=1000))
    via_file.add_fake(torch.from_numpy(fake))
    assert via_file.compute()["fid"] == pytest.approx(fid_scipy(mu, sigma, mu_f, s_f), rel=1e-6)
    back = via_file.real_statistics()
    np.testing.assert_allclose(back.mu, mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.sigma, sigma, rtol=0, atol=1e-10)


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³, as loops."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_over_the_whole_sets():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((7, 3)).astype(np.float32).astype(np.float64)
    fake = (rng.standard_normal((7, 3)) * 1.5 + 0.7).astype(np.float32).astype(np.float64)
    metrics = ImageMetrics(Rows(3), kid_subset_size=1000)            # capped at 7: every subset is the whole set
    metrics.add_real(torch.from_numpy(real))
    metrics.add_fake(torch.from_numpy(fake))
    out = metrics.compute()
    want = polynomial_mmd(real, fake)
    assert want > 0.1
    assert out["kid"] == pytest.approx(want, rel=1e-9)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-9)


def test_inception_score_is_the_mean_over_splits_of_exp_mean_kl(monkeypatch):
    n, c, splits = 12, 5, 3
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(n, c, generator=gen) * 2).float()
    metrics = ImageMetrics(Rows(1, c), is_splits=splits)
    metrics.add_real(torch.zeros(4, 1 + c))
    metrics.add_fake(torch.cat([torch.zeros(n, 1), logits], 1).double())
    monkeypatch.setattr(torch, "randperm", lambda size, *a, **k: torch.arange(size))   # splits = consecutive rows
    out = metrics.compute()
    scores = []
    for part in logits.double().chunk(splits):
        p = part.softmax(dim=1)
        marginal = p.mean(dim=0)
        kl = [sum(float(p[i, j] * math.log(p[i, j] / marginal[j])) for j in range(c)) for i in range(len(part))]
        scores.append(math.exp(sum(kl) / len(kl)))
    mean = sum(scores) / splits
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (splits - 1))
    assert len(set(round(s, 6) for s in scores)) == splits                 # the splits really differ
    assert out["inception_score"] == pytest.approx(mean, rel=1e-5)
    assert out["inception_score_std"] == pytest.approx(std, rel=1e-4)


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points):
        out = []
        for i, p in enumerate(points):
            dists = sorted(math.dist(p, q) for j, q in enumerate(points) if j != i)
            out.append(dists[k - 1])
        return out

    def share(queries, manifold, r):
        return sum(any(math.dist(q, m) <= rad for m, rad in zip(manifold, r)) for q in queries) / len(queries)

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_precision_recall_matches_brute_force_knn_balls(seed):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((20, 3))
    fake = rng.standard_normal((15, 3)) * 0.7 + 0.8
    want = brute_precision_recall(real, fake, 3)
    got = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3)
    assert (got["precision"], got["recall"]) == pytest.approx(want, abs=1e-12)
    assert 0 < want[0] < 1 and 0 < want[1] < 1


def test_precision_recall_by_hand_with_points_on_the_ball_surfaces():
    """Real points 0, 1, 2, 3, 4 on a line, k = 2: radii (distance to the 2nd nearest other point) 2, 1, 1, 1, 2.
    Fake points 6 (distance 2 from 4: on its ball's surface, inside), 6.5 (outside), -2 (on 0's surface), 10.
    Precision = 2/4. Fakes among themselves: 6 -> {6.5: .5, -2: 8, 10: 4} radius 4; 6.5 -> radius 3.5;
    -2 -> {6: 8, 6.5: 8.5, 10: 12} radius 8.5; 10 -> radius 4. Every real point lies within 8.5 of -2: recall 1."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[6.0], [6.5], [-2.0], [10.0]])
    assert knn_radii(real.double(), k=2).tolist() == [2.0, 1.0, 1.0, 1.0, 2.0]
    assert knn_radii(fake.double(), k=2).tolist() == [4.0, 3.5, 8.5, 4.0]
    assert precision_recall(real, fake, k=2) == {"precision": 0.5, "recall": 1.0}
    assert brute_precision_recall(real.numpy(), fake.numpy(), 2) == (0.5, 1.0)
    # the same through ImageMetrics (k = 2)
    metrics = ImageMetrics(Rows(1), k=2)
    metrics.add_real(real)
    metrics.add_fake(fake)
    out = metrics.compute()
    assert (out["precision"], out["recall"], out["pr_k"]) == (0.5, 1.0, 2)
