"""Reference statistics: what generated (or reconstructed) images are compared against.

A :class:`Reference` holds the Gaussian statistics (mu, sigma) of real features for FID, those of
the spatial features for ADM's sFID (mu_s, sigma_s; standard Inception only) and, when available, a
set of real features (≤ ``max_pr_samples``) for precision/recall and KID. It is read from

- a **barlab statistics file** (``.npz`` with ``mu``, ``sigma``, ``num_samples``, ``features``,
  ``feature_net``, ...), cached per dataset, split and feature network by ``ensure_reference``;
  a file made with another feature network is refused;
- an **ADM reference batch** (``VIRTUAL_imagenet256_labeled.npz``: ``mu``/``sigma`` of Inception
  pool3 and ``mu_s``/``sigma_s`` of its mixed_6/conv spatial features over the training set, plus 10k
  reference images ``arr_0``): FID and sFID use its statistics, precision/recall use features of its
  ``arr_0`` images (as ADM's evaluator does);
- an **image npz** (``arr_0`` only, N×H×W×3 uint8) or an image folder: statistics are computed.

A file without ``mu_s``/``sigma_s`` (statistics of another network, or barlab statistics written before
it kept them) gives no sFID, and the result says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from barlab.errors import ConfigError, DataError
from barlab.utils.image_sets import read_npz
from barlab.utils.io import atomic_write_bytes

FORMAT = "barlab.fid_stats/1"


@dataclass
class Reference:
    """mu (D,), sigma (D, D) float64; num_samples behind them; features (M, D) float32 or None;
    mu_s (S,), sigma_s (S, S) float64 of the spatial (sFID) features, or None."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int
    features: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))


def save_reference(path: str | os.PathLike, ref: Reference) -> Path:
    """Write a barlab statistics npz atomically (float64 mu/sigma and mu_s/sigma_s, float32 features)."""
    import io

    buffer = io.BytesIO()
    meta = {f"meta_{k}": np.asarray(str(v)) for k, v in ref.meta.items()}
    arrays = {"mu": ref.mu.astype(np.float64), "sigma": ref.sigma.astype(np.float64),
              "num_samples": np.asarray(ref.num_samples), "format": np.asarray(FORMAT), **meta}
    if ref.features is not None:
        arrays["features"] = ref.features.astype(np.float32)
    if ref.mu_s is not None:
        arrays["mu_s"], arrays["sigma_s"] = ref.mu_s.astype(np.float64), ref.sigma_s.astype(np.float64)
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def statistics_pair(data: dict, path: str | os.PathLike, mu_key: str,
                    sigma_key: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``data[mu_key]`` (D,) and ``data[sigma_key]`` (D, D) as float64, (None, None) when both are absent."""
    if mu_key not in data and sigma_key not in data:
        return None, None
    if mu_key not in data or sigma_key not in data:
        raise DataError(f"{path} has one of {mu_key}, {sigma_key} without the other")
    mu, sigma = data[mu_key].astype(np.float64), data[sigma_key].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{path}: {mu_key} {mu.shape} and {sigma_key} {sigma.shape} do not match")
    return mu, sigma


def reference_from_npz(path: str | os.PathLike, feature_net_name: str,
                       backend: str) -> tuple[Reference | None, np.ndarray | None]:
    """Read a statistics / ADM / image npz (``mu_s``/``sigma_s`` too, when it has them).

    Returns ``(reference or None, images or None)``: the statistics found in the file (checked
    against the feature network) and its ``arr_0`` images when it has any (uint8 N×H×W×C), whose
    features the caller computes (all statistics when the reference is None, else for P/R only).
    """
    data = read_npz(path)
    images = data.get("arr_0")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4):
        raise DataError(f"{path}: arr_0 must be uint8 N×H×W×C images, got {images.dtype} {images.shape}")
    if "mu" not in data:
        if images is None:
            raise DataError(f"{path} has neither statistics (mu, sigma) nor images (arr_0)")
        return None, images
    made_by = str(data["meta_feature_net"]) if "meta_feature_net" in data else None
    if made_by is None and backend != "inception":  # ADM files hold Inception pool3 statistics
        raise ConfigError("backend", f"{path} holds Inception pool3 statistics (an ADM reference batch), "
                          f"but the feature network is {backend}", fix="backend=inception")
    if made_by is not None and made_by != feature_net_name:
        raise ConfigError("backend", f"{path} was computed with feature network {made_by}, "
                          f"not {feature_net_name}", fix="use statistics of the same network, or delete the file")
    meta = {k[len("meta_"):]: str(v) for k, v in data.items() if k.startswith("meta_")}
    meta.setdefault("source", str(path))
    mu, sigma = statistics_pair(data, path, "mu", "sigma")
    mu_s, sigma_s = statistics_pair(data, path, "mu_s", "sigma_s")
    ref = Reference(mu=mu, sigma=sigma, num_samples=int(data.get("num_samples", np.asarray(0))),
                    features=data.get("features"), meta=meta, mu_s=mu_s, sigma_s=sigma_s)
    return ref, (images if ref.features is None else None)
