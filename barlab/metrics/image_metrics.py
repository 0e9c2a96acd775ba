"""FID, KID, Inception-Score-style score, improved precision/recall and class accuracy from one pass.

Each image goes through the :class:`FeatureNet` once; its features (and logits) then feed
torchmetrics' ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore``
(built with a pass-through ``feature=`` module, so the network is not run three times) and
barlab's precision/recall. Reference statistics from a file enter the torchmetrics FID state
exactly (sum = n·mu, cov_sum = (n−1)·sigma + n·mu·muᵀ).

Every result dict names its feature network (``backend``, ``feature_net``, ``feature_label``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from barlab.metrics.feature_net import FeatureNet
from barlab.metrics.precision_recall import precision_recall
from barlab.metrics.reference import Reference
from barlab.utils.progress import progress

# torchmetrics warns that KID and IS keep their inputs; here those are features, bounded by max_pr_samples.
warnings.filterwarnings("ignore", message=r".*will save all extracted features in buffer.*")


class Passthrough(nn.Module):
    """Hands precomputed features to torchmetrics: (N, D) → (N, D)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# Scoring runs in one process (rank 0 of a DDP job) that sees every sample: never gather across ranks.
# torchmetrics would otherwise sync on compute whenever a process group exists, and wait for ranks
# that are busy elsewhere.
LOCAL = {"sync_on_compute": False}


class ImageMetrics:
    """Accumulate real and generated images, then :meth:`compute` every metric the inputs allow.

    net: the feature network. k: neighbourhood size of precision/recall (3, as in ADM).
    max_pr_samples: at most this many features per side are kept for precision/recall and KID.
    kid_subset_size: KID subset size (capped by the sample counts). is_splits: IS splits.
    """

    def __init__(self, net: FeatureNet, k: int = 3, max_pr_samples: int = 10_000, kid_subset_size: int = 1000,
                 is_splits: int = 10, batch_size: int = 256):
        self.net = net
        self.k, self.max_pr_samples, self.kid_subset_size = k, max_pr_samples, kid_subset_size
        self.is_splits, self.batch_size = is_splits, batch_size
        self.fid = FrechetInceptionDistance(feature=Passthrough(net.num_features), reset_real_features=False,
                                            **LOCAL)
        self.real_features: list[torch.Tensor] = []
        self.fake_features: list[torch.Tensor] = []
        self.fake_logits: list[torch.Tensor] = []
        self.fake_labels: list[torch.Tensor] = []
        self.reference: Reference | None = None
        self._kept = {"real": 0, "fake": 0}

    # ------------------------------------------------------------------ inputs
    def _keep(self, side: str, feats: torch.Tensor, store: list) -> None:
        room = self.max_pr_samples - self._kept[side]
        if room > 0:
            store.append(feats[:room].cpu())
            self._kept[side] += min(room, feats.shape[0])

    def set_reference(self, ref: Reference) -> None:
        """Use file statistics for FID (and its stored features, if any, for P/R and KID)."""
        mu = torch.from_numpy(ref.mu).double()
        sigma = torch.from_numpy(ref.sigma).double()
        if mu.shape[0] != self.net.num_features:
            raise ValueError(f"reference has {mu.shape[0]}-d statistics, the feature network gives "
                             f"{self.net.num_features}-d features")
        n = max(int(ref.num_samples), 2)
        self.fid.real_features_sum = mu * n
        self.fid.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
        self.fid.real_features_num_samples = torch.tensor(n, dtype=torch.long)
        self.reference = ref
        if ref.features is not None:
            self._keep("real", torch.from_numpy(np.asarray(ref.features)).float(), self.real_features)

    def add_real_features(self, feats: torch.Tensor, stats: bool = True) -> None:
        """feats (N, D): real features for FID statistics (``stats``) and for P/R and KID."""
        feats = feats.detach().float().cpu()  # the metric states live on the CPU, in float64
        if stats:
            self.fid.update(feats.double(), real=True)
        self._keep("real", feats, self.real_features)

    @torch.no_grad()
    def add_real(self, images: torch.Tensor, stats: bool = True) -> None:
        """images uint8 (N, C, H, W): real images (originals for rFID, a reference set, ...)."""
        for chunk in images.split(self.batch_size):
            self.add_real_features(self.net.extract(chunk).features, stats=stats)

    @torch.no_grad()
    def add_fake(self, images: torch.Tensor, labels: torch.Tensor | None = None, show_bar: bool = False) -> None:
        """images uint8 (N, C, H, W): generated or reconstructed images; labels (N,) their classes.
        ``show_bar``: a progress bar over the chunks (on a terminal only)."""
        starts = range(0, images.shape[0], self.batch_size)
        for start in progress(starts, "scoring", unit="batch", enabled=show_bar):
            chunk = images[start:start + self.batch_size]
            out = self.net.extract(chunk)
            feats = out.features.detach().float().cpu()
            self.fid.update(feats.double(), real=False)
            self._keep("fake", feats, self.fake_features)
            if out.logits is not None:
                self.fake_logits.append(out.logits.cpu())
                if labels is not None:
                    self.fake_labels.append(labels[start:start + self.batch_size].cpu())

    # ------------------------------------------------------------------ outputs
    @property
    def num_fake(self) -> int:
        return int(self.fid.fake_features_num_samples)

    @property
    def num_real(self) -> int:
        return int(self.fid.real_features_num_samples)

    def real_statistics(self) -> Reference:
        """mu/sigma (and kept features) of the real images added so far."""
        n = self.num_real
        if n < 2:
            raise ValueError("statistics need at least 2 real images")
        mu = self.fid.real_features_sum / n
        sigma = (self.fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
        feats = torch.cat(self.real_features).numpy() if self.real_features else None
        return Reference(mu=mu.numpy(), sigma=sigma.numpy(), num_samples=n, features=feats,
                         meta={"feature_net": self.net.name, "backend": self.net.backend, "label": self.net.label})

    def compute(self) -> dict:
        """FID always; KID and precision/recall when real features exist; IS and class accuracy
        when the network has logits (and labels were given)."""
        out: dict = {**self.net.describe(), "num_samples": self.num_fake, "num_reference": self.num_real}
        if self.num_fake < 2 or self.num_real < 2:
            raise ValueError(f"FID needs at least 2 images per side (real {self.num_real}, generated {self.num_fake})")
        out["fid"] = float(self.fid.compute())
        if self.real_features and self.fake_features:
            real, fake = torch.cat(self.real_features), torch.cat(self.fake_features)
            if min(real.shape[0], fake.shape[0]) > self.k:
                out.update(precision_recall(real, fake, k=self.k))
                out["pr_k"] = self.k
                out["pr_num_samples"] = [int(real.shape[0]), int(fake.shape[0])]
            subset = min(self.kid_subset_size, real.shape[0], fake.shape[0])
            if subset >= 2:
                kid = KernelInceptionDistance(feature=Passthrough(self.net.num_features), subset_size=subset,
                                              subsets=50, **LOCAL)
                kid.update(real.double(), real=True)
                kid.update(fake.double(), real=False)
                mean, std = kid.compute()
                out["kid"], out["kid_std"] = float(mean), float(std)
        if self.fake_logits:
            logits = torch.cat(self.fake_logits)
            splits = max(1, min(self.is_splits, logits.shape[0] // 2))
            score = InceptionScore(feature=Passthrough(logits.shape[1]), splits=splits, **LOCAL)
            score.update(logits)
            mean, std = score.compute()
            out["inception_score"], out["inception_score_std"] = float(mean), float(std)
            out["inception_score_label"] = f"from {self.net.label}" if self.net.backend != "inception" else ""
            if self.fake_labels:
                labels = torch.cat(self.fake_labels)
                pred = logits[: labels.shape[0]].argmax(dim=1)
                out["class_accuracy"] = float((pred == labels).float().mean())
                per_class = {}
                for c in labels.unique().tolist():
                    mask = labels == c
                    per_class[int(c)] = float((pred[mask] == c).float().mean())
                out["class_accuracy_per_class"] = per_class
        return out
