"""The evaluation classifier: trained once per dataset on first use, then cached.

``ensure_classifier(cfg)`` returns the checkpoint path, training it under a file lock if it does
not exist yet (parallel sweep jobs and DDP ranks train it once; the others wait, then load it).
``python -m barlab.train stage=classifier`` trains (or finds) it explicitly.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from barlab.config.instantiate import instantiate_checked, knob_names
from barlab.metrics.classifier import FORMAT, SmallCNN
from barlab.metrics.classifier_module import ClassifierModule
from barlab.utils.integers import check_int
from barlab.utils.io import atomic_torch_save
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import bars_shown

log = logging.getLogger("barlab")
# the classifier's settings, named in errors as their knobs
CLASSIFIER_KNOBS = {name: f"metrics.classifier.{name}" for name in ("max_steps", "batch_size", "width", "path")}


def dataset_name(cfg: DictConfig) -> str:
    """The data's folder name: barlab's shards folder (``data.shards_dir``), or the folder of the shards
    ``data.train_urls`` names (existing WebDataset shards, ``data=webdataset``)."""
    folder = cfg.data.get("shards_dir") or Path(str(cfg.data.get("train_urls"))).parent
    return Path(str(folder)).name


def dataset_key(cfg: DictConfig) -> str:
    """Names the dataset as prepared: ``<shards folder>_<size>px`` (e.g. ``fashion_mnist_32px``)."""
    name, size = dataset_name(cfg), f"{cfg.data.image_size}px"
    return name if name.endswith(size) else f"{name}_{size}"


def metrics_cache_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.metrics.cache_dir)) / dataset_key(cfg)


def classifier_path(cfg: DictConfig) -> Path:
    clf = cfg.metrics.classifier
    if clf.get("path"):
        return Path(str(clf.path))
    return metrics_cache_dir(cfg) / f"classifier_w{clf.width}_s{clf.max_steps}.pt"


def train_classifier(cfg: DictConfig, path: Path) -> dict[str, Any]:
    """Train :class:`SmallCNN` on the train split, measure val accuracy, save to ``path``."""
    clf = cfg.metrics.classifier
    with knob_names(CLASSIFIER_KNOBS):
        steps = check_int(clf.get("max_steps"), "max_steps", fix="max_steps=800")
        width = check_int(clf.get("width"), "width", fix="width=32")
        datamodule = instantiate_checked(cfg.data, "data", batch_size=check_int(
            clf.get("batch_size"), "batch_size", fix="batch_size=128"))
    config = {"in_channels": datamodule.channels, "num_classes": datamodule.num_classes, "width": width,
              "image_size": int(cfg.data.image_size)}
    torch.manual_seed(int(cfg.get("seed", 0)))
    module = ClassifierModule(SmallCNN(**config), lr=float(clf.lr))
    accelerator = cfg.trainer.get("accelerator", "auto")
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator=accelerator, devices=1, precision="32-true",
                        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=bars_shown(cfg.trainer.get("enable_progress_bar", True)),
                        enable_model_summary=False)
    log.info("training the evaluation classifier (%d steps) -> %s", steps, path)
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    module.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in datamodule.eval_dataset("val", batch_size=500):
            _, logits = module.net(batch["image"].to(module.device))
            correct += int((logits.argmax(1).cpu() == batch["label"]).sum())
            seen += int(batch["label"].shape[0])
    accuracy = correct / max(seen, 1)
    payload = {"format": FORMAT, "id": uuid.uuid4().hex[:10], "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in module.net.state_dict().items()},
               "val_accuracy": accuracy, "val_samples": seen, "dataset": dataset_key(cfg),
               "train": OmegaConf.to_container(clf, resolve=True)}
    atomic_torch_save(payload, path)
    log.info("evaluation classifier: %.4f accuracy on %d validation images", accuracy, seen)
    return {"path": str(path), "val_accuracy": accuracy, "val_samples": seen}


def ensure_classifier(cfg: DictConfig) -> Path:
    """The classifier checkpoint for this dataset; trained (once, under a lock) if missing."""
    path = classifier_path(cfg)
    if path.is_file():
        return path
    if cfg.metrics.classifier.get("path"):
        from barlab.errors import ConfigError

        with knob_names(CLASSIFIER_KNOBS):
            raise ConfigError("path", f"{path} does not exist", fix="path=null (train and cache one automatically)")
    with exclusive_lock(str(path) + ".lock", "the evaluation classifier"):
        if not path.is_file():
            train_classifier(cfg, path)
    return path


def run_classifier_stage(cfg: DictConfig) -> dict[str, Any]:
    """``stage=classifier``: make sure the classifier exists; report its accuracy."""
    from barlab.metrics.classifier import ClassifierFeatures

    path = ensure_classifier(cfg)
    net = ClassifierFeatures(path)
    return {"stage": "classifier", "classifier": str(path), "feature_net": net.name,
            "classifier_val_accuracy": net.val_accuracy}
