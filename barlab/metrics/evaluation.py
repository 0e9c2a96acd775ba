"""End-of-run evaluation: rFID of a tokenizer, gFID & co. of a generator.

- ``evaluate_tokenizer``: reconstructions against the originals of the validation split (their
  statistics are cached like any reference): rFID, KID, precision/recall.
- ``evaluate_generator``: those samples against the reference statistics (training split by
  default): gFID, class accuracy, IS, precision/recall, KID (and sFID with the standard Inception);
  the samples are kept as an ADM npz.

Every returned dict carries ``metrics_backend`` and ``metrics_label`` (what produced the numbers).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig

from barlab.config.instantiate import instantiate_checked
from barlab.metrics.class_balanced import sample_to_npz
from barlab.metrics.feature_net import FeatureNet
from barlab.metrics.metric_setup import build_feature_net, load_reference, new_metrics, split_reference
from barlab.metrics.reference import Reference
from barlab.utils.devices import pick_device
from barlab.utils.image_grid import float_to_uint8
from barlab.utils.image_sets import images_to_tensor, read_npz
from barlab.utils.progress import progress, show_progress

log = logging.getLogger("barlab")

HEADLINE = ("fid", "kid", "precision", "recall", "inception_score", "class_accuracy", "sfid")


def headline(prefix: str, result: dict) -> dict[str, Any]:
    """The numbers a sweep table shows, flat: ``rfid`` (``prefix="r"``, tokenizers: + kid, precision,
    recall) or ``gfid`` (``"g"``, generators: + class accuracy, IS and sFID), with the backend and its label."""
    keys = HEADLINE if prefix == "g" else HEADLINE[:4]
    out = {(f"{prefix}fid" if k == "fid" else k): result[k] for k in keys if k in result}
    out["metrics_backend"] = result.get("backend")
    out["metrics_label"] = result.get("feature_label")
    return out


def eval_device(cfg: DictConfig) -> torch.device:
    """CUDA when the trainer may use a GPU and one is there, else the CPU."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return pick_device("auto") if accelerator in ("gpu", "cuda", "auto") else torch.device("cpu")


@torch.no_grad()
def evaluate_tokenizer(cfg: DictConfig, tokenizer: torch.nn.Module) -> dict[str, Any]:
    """rFID (+ KID, precision/recall) of ``tokenizer``: reconstructions of the validation split
    against the (cached) statistics of the same validation images."""
    start = time.time()
    device = eval_device(cfg)
    net = build_feature_net(cfg, device)
    limit = cfg.metrics.rfid.get("max_samples")
    reference = split_reference(cfg, net, "val", limit)
    tokenizer = tokenizer.to(device).eval()
    metrics = new_metrics(cfg, net)
    metrics.set_reference(reference)
    datamodule = instantiate_checked(cfg.data, "data")
    batches = datamodule.eval_dataset("val", limit, batch_size=cfg.metrics.batch_size)
    for batch in progress(batches, "rFID", unit="batch", enabled=show_progress(cfg)):
        recon, _ = tokenizer(batch["image"].to(device))
        metrics.add_fake(float_to_uint8(recon.float().cpu()))
    result = metrics.compute()
    result["split"] = "val"
    result["wall_time_s"] = round(time.time() - start, 1)
    log.info("rFID %.3f on %d validation images (%s)", result["fid"], result["num_samples"], result["feature_label"])
    return result


def score_images(cfg: DictConfig, net: FeatureNet, reference: Reference,
                 chunks: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, Any]:
    """Score uint8 image chunks ``(images (B, C, H, W), labels (B,) or None)`` against ``reference``:
    FID, sFID, KID, IS, P/R, class accuracy (each with what produced it: ``feature_label``, ``sfid_label``,
    ``inception_score_label``, ``pr_label``, ``kid_label``), plus the reference and the classifier's own accuracy."""
    metrics = new_metrics(cfg, net)
    metrics.set_reference(reference)
    for images, labels in chunks:
        metrics.add_fake(images, labels, show_bar=show_progress(cfg))
    result = {"reference": reference.source, **metrics.compute()}
    if getattr(net, "val_accuracy", None) is not None:
        result["classifier_val_accuracy"] = net.val_accuracy
    return result


def evaluate_samples(cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor | None,
                     device: torch.device | None = None) -> dict[str, Any]:
    """Score uint8 samples (N, C, H, W) against ``load_reference(cfg)``."""
    net = build_feature_net(cfg, device or eval_device(cfg))
    return score_images(cfg, net, load_reference(cfg, net), [(images, labels)])


def evaluate_generator(cfg: DictConfig, generate: Callable[..., torch.Tensor], num_classes: int,
                       run_dir: Path, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Class-balanced samples (``metrics.gfid.per_class`` per class) → ``<run>/samples.npz`` + scores.

    rank, world: the processes of a DDP job share the sampling (each its own chunks, see
    :func:`barlab.metrics.class_balanced.sample_to_npz`); rank 0 joins them and scores, the other
    ranks return ``{}``. The npz is the one a single process writes.
    """
    start = time.time()
    gfid = cfg.metrics.gfid
    npz = sample_to_npz(generate, num_classes, gfid.per_class, Path(run_dir) / "samples.npz", gfid.batch_size,
                        seed=cfg.seed, rank=rank, world=world, show_bar=show_progress(cfg) and rank == 0)
    if rank != 0:
        return {}
    sampling_s = time.time() - start
    data = read_npz(npz)
    images, labels = images_to_tensor(data["arr_0"]), torch.from_numpy(data["arr_1"])
    result = evaluate_samples(cfg, images, labels)
    result.update({"samples": str(npz), "sampling_s": round(sampling_s, 1),
                   "images_per_s": round(result["num_samples"] / max(sampling_s, 1e-9), 2),
                   "wall_time_s": round(time.time() - start, 1)})
    log.info("gFID %.3f, class accuracy %.3f on %d samples (%s)", result["fid"],
             result.get("class_accuracy", float("nan")),
             result["num_samples"], result["feature_label"])
    return result
