"""Pretokenization: image shards → token shards, with a trained tokenizer.

Every training image is stored twice, as itself and as its horizontal flip (as in the paper);
validation images once. Images go through the evaluation transform (resize + centre crop).
:class:`PretokenizeLimits` can limit both splits to their first images and drop the flips; by
default everything is encoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from barlab.data.image_datamodule import ImageShardDataModule
from barlab.data.token_shards import write_token_shards
from barlab.errors import ConfigError
from barlab.utils.integers import check_int
from barlab.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretokenizeLimits:
    """What pretokenization encodes: the first ``train_images`` training images (None: all), each also
    as its horizontal flip when ``flip``, and the first ``val_images`` validation images (None: all).

    The default (all, with flips) is the paper's; any other setting is recorded in the token manifest
    and names its own token folder in the tokenizer cache (:meth:`folder_suffix`).
    """

    train_images: int | None = None
    val_images: int | None = None
    flip: bool = True

    def __post_init__(self) -> None:
        check_int(self.train_images, "train_images", allow_none=True, fix="train_images=null")
        check_int(self.val_images, "val_images", allow_none=True, fix="val_images=null")
        if not isinstance(self.flip, bool):
            raise ConfigError("flip", f"must be true or false, got {self.flip!r}", fix="flip=true")

    def as_dict(self) -> dict:
        return asdict(self)

    def folder_suffix(self) -> str:
        """``""`` for the default, else e.g. ``"_train20000_val2000_noflip"``: the tokenizer cache keeps
        token shards of different limits apart (``tokens_<shard size><suffix>``)."""
        parts = [f"_train{self.train_images}" if self.train_images is not None else "",
                 f"_val{self.val_images}" if self.val_images is not None else "",
                 "" if self.flip else "_noflip"]
        return "".join(parts)

    def check_manifest(self, manifest: dict, where: str) -> None:
        """Refuse the token shards in ``where`` if they were written with other limits (a manifest
        without a record of them was written with the default)."""
        stored = PretokenizeLimits(**manifest.get("pretokenize", {}))
        if stored != self:
            raise ConfigError("limits", f"the token shards in {where} were pretokenized with "
                              f"{stored.as_dict()}, not {self.as_dict()}",
                              fix="write the shards to a new folder, or ask for the limits they have")


@torch.no_grad()
def _encode_split(tokenizer, images: ImageShardDataModule, split: str, flip: bool, device: torch.device,
                  batch_size: int, max_images: int | None = None) -> Iterator[tuple[str, np.ndarray, int]]:
    dataset = images.eval_dataset(split, max_images, batch_size=batch_size)
    index, start = 0, time.monotonic()
    with progress_bar(f"pretokenizing {split}", unit="img") as bar:
        for batch in DataLoader(dataset, batch_size=None, num_workers=min(1, images.num_workers)):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)  # ~25% faster convs on CPU
            views = [x, x.flip(-1)] if flip else [x]
            encoded = [tokenizer.encode_bits(v).to(torch.uint8).cpu().numpy() for v in views]
            for i, label in enumerate(batch["label"].tolist()):
                for aug, bits in enumerate(encoded):
                    yield f"{split}_{index + i:07d}_{aug}", bits[i], label
            index += x.shape[0]
            bar.update(x.shape[0])
            if index % (20 * batch_size) < x.shape[0]:
                log.info("pretokenize %s: %d images (%.0f/s)", split, index, index / (time.monotonic() - start))
    log.info("pretokenize %s: %d images, %d sequences", split, index, index * len(views) if index else 0)


def pretokenize(tokenizer, images: ImageShardDataModule, out_dir: str, meta: dict | None = None,
                batch_size: int = 256, device: str | torch.device = "cpu", shard_size: int = 20000,
                limits: PretokenizeLimits | None = None) -> dict:
    """Encode the ``train`` (original + flip) and ``val`` splits of ``images`` into token shards.

    tokenizer: a discrete :class:`barlab.tokenizer.Tokenizer` in eval mode.
    shard_size: sequences per token shard (more shards than ranks lets every rank read its own).
    limits: the first images of each split only, flips or not (default: everything, with flips).
    Returns the token manifest (``seq_len``, ``bits``, ``grid``, class names, ...).
    """
    limits = limits or PretokenizeLimits()
    device = torch.device(device)
    tokenizer = tokenizer.to(device).eval()
    tokenizer.encoder.to(memory_format=torch.channels_last)
    grid = tokenizer.grid_size(images.image_size)
    manifest_meta = {
        "seq_len": grid[0] * grid[1],
        "bits": tokenizer.bits_per_token,
        "grid": list(grid),
        "image_size": images.image_size,
        "channels": images.channels,
        "num_classes": images.num_classes,
        "class_names": images.class_names,
        "augmentations": {"train": ["original", "hflip"] if limits.flip else ["original"], "val": ["original"]},
        **({"pretokenize": limits.as_dict()} if limits != PretokenizeLimits() else {}),
        **(meta or {}),
    }
    splits = {
        "train": _encode_split(tokenizer, images, "train", limits.flip, device, batch_size, limits.train_images),
        "val": _encode_split(tokenizer, images, "val", False, device, batch_size, limits.val_images),
    }
    return write_token_shards(splits, out_dir, manifest_meta, maxcount=shard_size)
