"""From the ``metrics`` config to a feature network and reference statistics.

``build_feature_net(cfg)`` gives the configured :class:`FeatureNet` (training the classifier on
first use). ``load_reference(cfg, net)`` gives the :class:`Reference` that samples are scored
against: ``metrics.reference.path`` if set, else the cached statistics of
``metrics.reference.split``, computed once per dataset and feature network under a lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from barlab.config.instantiate import instantiate_checked, knob_names
from barlab.errors import ConfigError
from barlab.metrics.classifier_training import dataset_key, ensure_classifier, metrics_cache_dir
from barlab.metrics.feature_net import FeatureNet
from barlab.metrics.image_metrics import ImageMetrics
from barlab.metrics.reference import Reference, reference_from_npz, save_reference
from barlab.utils.image_grid import float_to_uint8
from barlab.utils.image_sets import images_to_tensor
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import progress, show_progress

log = logging.getLogger("barlab")

BACKENDS = ("classifier", "inception", "random")
# What the feature networks' errors name -> the knob: "" is a network as a whole (the backend chosen)
FEATURE_NET_KNOBS = {"": "metrics.backend", "backend": "metrics.backend", "path": "metrics.inception.path",
                     "logits_path": "metrics.inception.logits_path"}


def build_feature_net(cfg: DictConfig, device: torch.device | str = "cpu") -> FeatureNet:
    """The feature network named by ``metrics.backend``, in eval mode on ``device``."""
    backend = cfg.metrics.backend
    with knob_names(FEATURE_NET_KNOBS):
        if backend == "classifier":
            from barlab.metrics.classifier import ClassifierFeatures

            net = ClassifierFeatures(ensure_classifier(cfg))
        elif backend == "inception":
            from barlab.metrics.inception import TFInception

            net = TFInception(cfg.metrics.inception.get("path"), logits_path=cfg.metrics.inception.get("logits_path"))
        elif backend == "random":
            from barlab.metrics.random_net import RandomFeatures

            net = RandomFeatures()
        else:
            raise ConfigError("backend", f"unknown feature network {backend!r}; choose one of "
                              f"{', '.join(BACKENDS[:2])}", fix="backend=classifier")
    return net.eval().to(device)


def new_metrics(cfg: DictConfig, net: FeatureNet) -> ImageMetrics:
    m = cfg.metrics
    return ImageMetrics(net, k=m.k, max_pr_samples=m.max_pr_samples, kid_subset_size=m.kid_subset_size,
                        batch_size=m.batch_size)


def reference_path(cfg: DictConfig, net: FeatureNet, split: str, max_samples: int | None) -> Path:
    limit = f"_n{max_samples}" if max_samples else ""
    return metrics_cache_dir(cfg) / f"stats_{split}{limit}_{net.name}.npz"


def compute_split_reference(cfg: DictConfig, net: FeatureNet, split: str, max_samples: int | None) -> Reference:
    """Statistics of ``split`` of the configured dataset (images rounded to uint8, as samples are)."""
    datamodule = instantiate_checked(cfg.data, "data")
    metrics = new_metrics(cfg, net)
    batches = datamodule.eval_dataset(split, max_samples, batch_size=cfg.metrics.batch_size)
    for batch in progress(batches, f"reference statistics ({split})", unit="batch", enabled=show_progress(cfg)):
        metrics.add_real(float_to_uint8(batch["image"]))
    ref = metrics.real_statistics()
    ref.meta.update({"dataset": dataset_key(cfg), "split": split, "source": f"{dataset_key(cfg)}/{split}"})
    return ref


def load_reference(cfg: DictConfig, net: FeatureNet) -> Reference:
    """``metrics.reference.path`` (statistics, ADM batch or image npz), else cached split statistics."""
    ref_cfg = cfg.metrics.reference
    with knob_names(path="metrics.reference.path", backend="metrics.backend"):
        if ref_cfg.get("path"):
            return reference_from_file(cfg, net, Path(str(ref_cfg.path)))
        return split_reference(cfg, net, ref_cfg.split, ref_cfg.get("max_samples"))


def split_reference(cfg: DictConfig, net: FeatureNet, split: str, max_samples: int | None) -> Reference:
    """Statistics of a dataset split, computed once per feature network (under a lock) and cached."""
    path = reference_path(cfg, net, split, max_samples)
    with exclusive_lock(str(path) + ".lock", f"reference statistics {path.name}"):
        if path.is_file():
            ref, _ = reference_from_npz(path, net.name, net.backend)
            return ref
        log.info("computing reference statistics of %s/%s with %s", dataset_key(cfg), split, net.name)
        ref = compute_split_reference(cfg, net, split, max_samples)
        save_reference(path, ref)
        return ref


def reference_from_file(cfg: DictConfig, net: FeatureNet, path: Path) -> Reference:
    """Statistics from an npz (barlab statistics, ADM batch, or images) or a folder of images.

    Features of the file's images (if any) are computed: all statistics when it holds images only,
    else just the features for precision/recall (an ADM batch's ``arr_0``). Errors name ``path`` (and
    ``backend`` for statistics of another network): the caller names the knob (:func:`knob_names`)."""
    from barlab.utils.image_sets import iter_image_set

    if path.is_dir():
        metrics = new_metrics(cfg, net)
        batches = iter_image_set(path, batch_size=int(cfg.metrics.batch_size))
        for images, _ in progress(batches, "reference statistics", unit="batch", enabled=show_progress(cfg)):
            metrics.add_real(images)
        ref = metrics.real_statistics()
        ref.meta["source"] = str(path)
        return ref
    if not path.is_file():
        raise ConfigError("path", f"{path} does not exist",
                          fix="path=null (the dataset's cached statistics), or an existing npz / folder")
    ref, images = reference_from_npz(path, net.name, net.backend)
    if images is None:
        return ref
    metrics = new_metrics(cfg, net)
    metrics.add_real(images_to_tensor(images), stats=ref is None)
    if ref is None:
        ref = metrics.real_statistics()
        ref.meta["source"] = str(path)
    else:
        ref.features = torch.cat(metrics.real_features).numpy()
    return ref
