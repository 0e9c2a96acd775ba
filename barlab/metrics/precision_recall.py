"""Improved precision and recall (Kynkäänniemi et al., 2019), as in ADM's evaluator.

Each set's manifold is the union of balls around its points, the radius of a ball being the
distance to the point's k-th nearest neighbour in its own set (k = 3). Precision is the share of
generated samples inside the real manifold; recall the share of real samples inside the generated
one. Distances are computed in row blocks, so 10k × 10k sets fit in a few hundred MB.
"""

from __future__ import annotations

import torch


def knn_radii(points: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """points (N, D) → (N,) distance of each point to its k-th nearest neighbour (itself excluded)."""
    if points.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples, got {points.shape[0]}")
    radii = []
    for start in range(0, points.shape[0], block):
        dist = torch.cdist(points[start:start + block], points)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself
    return torch.cat(radii)


def coverage_share(queries: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> float:
    """Share of ``queries`` (M, D) inside any ball (manifold (N, D), radii (N,))."""
    inside = 0
    for start in range(0, queries.shape[0], block):
        dist = torch.cdist(queries[start:start + block], manifold)
        inside += int((dist <= radii[None, :]).any(dim=1).sum())
    return inside / max(queries.shape[0], 1)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """real (N, D), fake (M, D) features → ``{"precision": p, "recall": r}``."""
    real, fake = real.double(), fake.double()
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    return {"precision": coverage_share(fake, real, real_radii), "recall": coverage_share(real, fake, fake_radii)}
