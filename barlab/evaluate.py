"""``python -m barlab.evaluate``: score an image set (npz or folder) against a reference.

    python -m barlab.evaluate samples=<run>/samples_500/samples.npz
    python -m barlab.evaluate samples=<folder of PNGs> metrics.backend=inception
    python -m barlab.evaluate samples=samples.npz ref=VIRTUAL_imagenet256_labeled.npz metrics.backend=inception

Writes JSON with FID, KID, an Inception Score, improved precision/recall (k = 3) and class accuracy
(when the set has labels and the feature network a classifier), and with ``metrics.backend=inception``
ADM's sFID (and ADM's Inception Score, given ``metrics.inception.logits_path``), always next to
``backend`` / ``feature_net`` / ``feature_label`` and each metric's ``*_label``: an FID from barlab's
classifier says it is not comparable to an Inception FID, a metric not computed says why.

    python -m barlab.evaluate samples=samples_50k.npz ref=VIRTUAL_imagenet256_labeled.npz \
        metrics.backend=inception metrics.inception.logits_path=pt_inception-2015-12-05-6726825d.pth \
        metrics.max_pr_samples=null
    python -m barlab.evaluate tokenizer_ckpt=tokenizer.pt data=webdataset ... metrics.backend=inception   # rFID

``tokenizer_ckpt=`` scores a tokenizer instead: rFID (+ KID, precision/recall) of its reconstructions of
the validation split of ``data`` (ImageNet's 50,000 with ``data=webdataset``) against the same images.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from barlab.cli import hydra_tool, require
from barlab.errors import ConfigError
from barlab.utils.devices import pick_device
from barlab.utils.io import atomic_write_json

log = logging.getLogger("barlab")


def default_out(samples: Path) -> Path:
    return samples / "metrics.json" if samples.is_dir() else samples.with_suffix(".metrics.json")


def run(cfg: DictConfig) -> dict:
    from barlab.config.instantiate import knob_names
    from barlab.metrics.evaluation import score_images
    from barlab.metrics.metric_setup import build_feature_net, load_reference, reference_from_file
    from barlab.metrics.reference import Reference
    from barlab.utils.image_sets import iter_image_set

    if cfg.get("tokenizer_ckpt"):
        return run_rfid(cfg)
    require(cfg, "samples", "samples=/path/to/samples.npz (or a folder of images), or tokenizer_ckpt=... for rFID")
    samples = Path(str(cfg.samples))
    if not samples.exists():
        raise ConfigError("samples", f"{samples} does not exist", fix="samples=/path/to/samples.npz or a folder")
    start = time.time()
    device = pick_device(str(cfg.device))
    net = build_feature_net(cfg, device)
    if cfg.ref is None:
        reference: Reference = load_reference(cfg, net)
    else:
        with knob_names(path="ref", backend="metrics.backend"):
            reference = reference_from_file(cfg, net, Path(str(cfg.ref)))
    chunks = iter_image_set(samples, batch_size=int(cfg.metrics.batch_size))
    result = {"samples": str(samples), **score_images(cfg, net, reference, chunks)}
    result["wall_time_s"] = round(time.time() - start, 1)
    out = Path(str(cfg.out)) if cfg.out else default_out(samples)
    atomic_write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "class_accuracy_per_class"}, indent=2))
    log.info("metrics written to %s", out)
    return result


def run_rfid(cfg: DictConfig) -> dict:
    """rFID of ``tokenizer_ckpt``: its reconstructions of the validation split of ``data`` (all of it, or
    ``metrics.rfid.max_samples``) against the same images, as the tokenizer stage scores itself."""
    from barlab.metrics.evaluation import evaluate_tokenizer
    from barlab.tokenizer.checkpoint import load_tokenizer

    if not OmegaConf.is_missing(cfg, "samples") and cfg.samples is not None:
        raise ConfigError("samples", "give samples=... (score an image set) or tokenizer_ckpt=... (rFID), not both",
                          fix="drop one of them")
    tokenizer, info = load_tokenizer(str(cfg.tokenizer_ckpt))
    if info.get("image_size") not in (None, cfg.data.image_size):
        raise ConfigError("data.image_size", f"is {cfg.data.image_size}, but {cfg.tokenizer_ckpt} was made for "
                          f"{info['image_size']} px images", fix=f"data.image_size={info['image_size']}")
    result = {"tokenizer": str(cfg.tokenizer_ckpt), **evaluate_tokenizer(cfg, tokenizer)}
    out = Path(str(cfg.out)) if cfg.out else Path(str(cfg.tokenizer_ckpt)).with_suffix(".rfid.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    log.info("rFID written to %s", out)
    return result


main = hydra_tool("evaluate", run)

if __name__ == "__main__":
    main()
