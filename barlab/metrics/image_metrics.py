"""FID, sFID, KID, Inception Score, improved precision/recall and class accuracy from one pass.

Each image goes through the :class:`FeatureNet` once; its features (and logits, and spatial
features) then feed torchmetrics' ``FrechetInceptionDistance`` (twice: pool3 features for FID,
spatial features for ADM's sFID), ``KernelInceptionDistance`` and ``InceptionScore`` (built with a
pass-through ``feature=`` module, so the network is not run again) and barlab's precision/recall.
Reference statistics from a file enter the torchmetrics FID states exactly
(sum = n·mu, cov_sum = (n−1)·sigma + n·mu·muᵀ).

The Inception Score has two definitions, by backend: the standard Inception's is ADM's
(:func:`adm_inception_score`: consecutive splits of 5000, no shuffle, the mean over splits); the
classifier's is torchmetrics' (shuffled, ``is_splits`` splits) and labelled as the classifier's.

Every result dict names its feature network (``backend``, ``feature_net``, ``feature_label``), and each
number not defined by the features alone has its own label (``sfid_label``, ``inception_score_label``,
``pr_label``, ``kid_label``); a metric the network cannot give has a ``<metric>_label`` saying why.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from barlab.metrics.feature_net import FeatureNet, Features
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
ADM_IS_SPLIT = 5000   # ADM's evaluator: Inception Score over consecutive splits of 5000 samples
KID_SUBSETS = 50


def adm_inception_score(logits: torch.Tensor, split_size: int = ADM_IS_SPLIT) -> tuple[float, float, int]:
    """logits (N, C) → (mean, std, number of splits) of exp(mean_i KL(p_i || mean_j p_j)) over consecutive
    splits of ``split_size`` rows (the last one may be shorter), p = softmax(logits), as ADM's
    ``compute_inception_score``; std (ddof 0, as improved-GAN's) is not in ADM's output. float64."""
    scores = []
    for part in logits.double().split(split_size):
        log_p = part.log_softmax(dim=1)
        log_marginal = torch.logsumexp(log_p, dim=0) - math.log(part.shape[0])
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False)), len(scores)


def new_fid(num_features: int) -> FrechetInceptionDistance:
    """A torchmetrics FID on precomputed (N, num_features) features, the real side kept across resets."""
    return FrechetInceptionDistance(feature=Passthrough(num_features), reset_real_features=False, **LOCAL)


class ImageMetrics:
    """Accumulate real and generated images, then :meth:`compute` every metric the inputs allow.

    net: the feature network. k: neighbourhood size of precision/recall (3, as in ADM).
    max_pr_samples: at most this many features per side are kept for precision/recall and KID (past
    it a seeded uniform subset, see ``_keep``); None keeps all (ADM: all samples against all
    reference images).
    kid_subset_size: KID subset size (capped by the sample counts). is_splits: IS splits of the
    classifier's score. is_split_size: rows per split of the standard Inception's (ADM) score.
    """

    def __init__(self, net: FeatureNet, k: int = 3, max_pr_samples: int | None = 10_000,
                 kid_subset_size: int = 1000, is_splits: int = 10, batch_size: int = 256,
                 is_split_size: int = ADM_IS_SPLIT):
        self.net = net
        self.k, self.max_pr_samples, self.kid_subset_size = k, max_pr_samples, kid_subset_size
        self.is_splits, self.is_split_size, self.batch_size = is_splits, is_split_size, batch_size
        self.fid = new_fid(net.num_features)
        self.sfid = new_fid(net.num_spatial) if net.num_spatial else None
        self.real_features: list[torch.Tensor] = []
        self.fake_features: list[torch.Tensor] = []
        self.fake_logits: list[torch.Tensor] = []
        self.fake_labels: list[torch.Tensor] = []
        self.reference: Reference | None = None
        self._kept = {"real": 0, "fake": 0}
        self._seen = {"real": 0, "fake": 0}
        self._keys: dict[str, list[torch.Tensor]] = {"real": [], "fake": []}
        self._subset_rng = {side: torch.Generator().manual_seed(seed) for side, seed in (("real", 0), ("fake", 1))}

    # ------------------------------------------------------------------ inputs
    def _keep(self, side: str, feats: torch.Tensor, store: list) -> None:
        """Keep ``feats`` (B, D) for precision/recall and KID: all of them up to ``max_pr_samples`` per
        side; past it, a uniform random subset of everything seen (the ``max_pr_samples`` smallest of
        one seeded random key per row, kept in stream order), so a class-ordered set (ADM's 50k
        samples, an ImageFolder split) is not cut down to its first classes."""
        self._seen[side] += feats.shape[0]
        keys = torch.rand(feats.shape[0], generator=self._subset_rng[side], dtype=torch.float64)
        store.append(feats.cpu())
        self._keys[side].append(keys)
        if self.max_pr_samples is not None and self._seen[side] > self.max_pr_samples:
            pooled, pooled_keys = torch.cat(store), torch.cat(self._keys[side])
            kept = pooled_keys.topk(self.max_pr_samples, largest=False).indices.sort().values
            store[:] = [pooled[kept]]
            self._keys[side][:] = [pooled_keys[kept]]
        self._kept[side] = sum(x.shape[0] for x in store)

    def _file_statistics(self, ref: Reference) -> list[tuple[str, FrechetInceptionDistance, np.ndarray, np.ndarray]]:
        """(what, metric, mu, sigma) for FID and, when both the network and ``ref`` have them, sFID."""
        pairs = [("features", self.fid, ref.mu, ref.sigma)]
        if self.sfid is not None and ref.mu_s is not None:
            pairs.append(("spatial features", self.sfid, ref.mu_s, ref.sigma_s))
        return pairs

    def set_reference(self, ref: Reference) -> None:
        """Use file statistics for FID and sFID (and its stored features, if any, for P/R and KID)."""
        for what, fid, mu, sigma in self._file_statistics(ref):
            mu = torch.from_numpy(mu).double()
            sigma = torch.from_numpy(sigma).double()
            width = fid.real_features_sum.shape[0]
            if mu.shape[0] != width:
                raise ValueError(f"reference has {mu.shape[0]}-d statistics of {what}, the feature network gives "
                                 f"{width}-d {what}")
            n = max(int(ref.num_samples), 2)
            fid.real_features_sum = mu * n
            fid.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
            fid.real_features_num_samples = torch.tensor(n, dtype=torch.long)
        self.reference = ref
        if ref.features is not None:
            self._keep("real", torch.from_numpy(np.asarray(ref.features)).float(), self.real_features)

    def _update_statistics(self, out: Features, real: bool) -> torch.Tensor:
        """Add ``out``'s features (N, D) (and spatial features (N, S)) to one side of FID (and sFID);
        returns the features as float32 on the CPU, where the metric states live (in float64)."""
        feats = out.features.detach().float().cpu()
        self.fid.update(feats.double(), real=real)
        if self.sfid is not None:
            self.sfid.update(out.spatial.detach().cpu().double(), real=real)
        return feats

    def add_real_features(self, out: Features, stats: bool = True) -> None:
        """Real features for FID/sFID statistics (``stats``) and for P/R and KID."""
        feats = self._update_statistics(out, real=True) if stats else out.features.detach().float().cpu()
        self._keep("real", feats, self.real_features)

    @torch.no_grad()
    def add_real(self, images: torch.Tensor, stats: bool = True) -> None:
        """images uint8 (N, C, H, W): real images (originals for rFID, a reference set, ...)."""
        for chunk in images.split(self.batch_size):
            self.add_real_features(self.net.extract(chunk), stats=stats)

    @torch.no_grad()
    def add_fake(self, images: torch.Tensor, labels: torch.Tensor | None = None, show_bar: bool = False) -> None:
        """images uint8 (N, C, H, W): generated or reconstructed images; labels (N,) their classes.
        ``show_bar``: a progress bar over the chunks (on a terminal only)."""
        starts = range(0, images.shape[0], self.batch_size)
        for start in progress(starts, "scoring", unit="batch", enabled=show_bar):
            chunk = images[start:start + self.batch_size]
            out = self.net.extract(chunk)
            self._keep("fake", self._update_statistics(out, real=False), self.fake_features)
            if out.logits is not None:
                self.fake_logits.append(out.logits.cpu())
                if labels is not None and self.net.class_logits:
                    self.fake_labels.append(labels[start:start + self.batch_size].cpu())

    # ------------------------------------------------------------------ outputs
    @property
    def num_fake(self) -> int:
        return int(self.fid.fake_features_num_samples)

    @property
    def num_real(self) -> int:
        return int(self.fid.real_features_num_samples)

    def real_statistics(self) -> Reference:
        """mu/sigma (mu_s/sigma_s of the spatial features, if any; and kept features) of the real images
        added so far."""
        n = self.num_real
        if n < 2:
            raise ValueError("statistics need at least 2 real images")
        stats = {}
        for mu_key, sigma_key, fid in (("mu", "sigma", self.fid), ("mu_s", "sigma_s", self.sfid)):
            if fid is not None:
                mu = fid.real_features_sum / n
                sigma = (fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
                stats[mu_key], stats[sigma_key] = mu.numpy(), sigma.numpy()
        feats = torch.cat(self.real_features).numpy() if self.real_features else None
        return Reference(**stats, num_samples=n, features=feats,
                         meta={"feature_net": self.net.name, "backend": self.net.backend, "label": self.net.label})

    def spatial_fid(self) -> dict:
        """``sfid`` and ``sfid_label``, or only the label saying why there is no sFID."""
        if self.sfid is None:
            return {}                                   # the network has none: FeatureNet.not_computed says so
        if int(self.sfid.real_features_num_samples) < 2:
            source = self.reference.source if self.reference is not None else "the reference"
            return {"sfid_label": f"not computed: {source} holds no spatial statistics (mu_s, sigma_s)"}
        return {"sfid": float(self.sfid.compute()), "sfid_label": self.net.spatial_label}

    def pr_label(self) -> str:
        """What precision/recall were computed on, and whether that is ADM's whole sets."""
        text = (f"improved precision/recall, k={self.k}, on {self._kept['real']} reference and "
                f"{self._kept['fake']} generated feature vectors")
        capped = [f"a random {self._kept[side]} of {self._seen[side]} {name}" for side, name in
                  (("real", "reference"), ("fake", "generated")) if self._seen[side] > self._kept[side]]
        return text + (f" ({', '.join(capped)}: max_pr_samples; ADM uses all)" if capped else "")

    def compute(self) -> dict:
        """FID always; sFID when the network and the reference have spatial statistics; KID and
        precision/recall when real features exist; IS and class accuracy when the network has logits
        (and they are the dataset's classes, and labels were given)."""
        out: dict = {**self.net.describe(), "num_samples": self.num_fake, "num_reference": self.num_real}
        if self.num_fake < 2 or self.num_real < 2:
            raise ValueError(f"FID needs at least 2 images per side (real {self.num_real}, generated {self.num_fake})")
        out["fid"] = float(self.fid.compute())
        out.update(self.spatial_fid())
        if self.real_features and self.fake_features:
            real, fake = torch.cat(self.real_features), torch.cat(self.fake_features)
            if min(real.shape[0], fake.shape[0]) > self.k:
                out.update(precision_recall(real, fake, k=self.k))
                out["pr_k"] = self.k
                out["pr_num_samples"] = [int(real.shape[0]), int(fake.shape[0])]
                out["pr_label"] = self.pr_label()
            subset = min(self.kid_subset_size, real.shape[0], fake.shape[0])
            if subset >= 2:
                kid = KernelInceptionDistance(feature=Passthrough(self.net.num_features), subset_size=subset,
                                              subsets=KID_SUBSETS, **LOCAL)
                kid.update(real.double(), real=True)
                kid.update(fake.double(), real=False)
                mean, std = kid.compute()
                out["kid"], out["kid_std"] = float(mean), float(std)
                out["kid_label"] = f"torchmetrics KID, {KID_SUBSETS} subsets of {subset} (not in ADM's evaluator)"
        if self.fake_logits:
            logits = torch.cat(self.fake_logits)
            if self.net.backend == "inception":
                mean, std, splits = adm_inception_score(logits, self.is_split_size)
                label = f"{self.net.inception_score_label}, {splits} split(s) of {self.is_split_size}"
            else:
                splits = max(1, min(self.is_splits, logits.shape[0] // 2))
                score = InceptionScore(feature=Passthrough(logits.shape[1]), splits=splits, **LOCAL)
                score.update(logits)
                mean, std = score.compute()
                label = f"from {self.net.label}"
            out["inception_score"], out["inception_score_std"] = float(mean), float(std)
            out["inception_score_label"] = label
            if self.fake_labels:
                labels = torch.cat(self.fake_labels)
                pred = logits[: labels.shape[0]].argmax(dim=1)
                out["class_accuracy"] = float((pred == labels).float().mean())
                per_class = {}
                for c in labels.unique().tolist():
                    mask = labels == c
                    per_class[int(c)] = float((pred[mask] == c).float().mean())
                out["class_accuracy_per_class"] = per_class
        out.update({f"{metric}_label": f"not computed: {why}" for metric, why in self.net.not_computed().items()})
        return out
