"""``WebDatasetDataModule``: ``ImageShardDataModule`` over existing WebDataset shards (the official BAR layout).

The official BAR recipe reads ImageNet as WebDataset tar shards named by brace patterns, e.g.
``/data/imagenet-train-{000000..000320}.tar`` (its ``dataset.params.train_shards_path_or_url`` and
``eval_shards_path_or_url``). Each sample is a group of tar members ``KEY.<ext>``: an image under the
first present of ``jpg``, ``png``, ``jpeg``, ``webp`` and its label under ``cls`` (ASCII integer).
These shards are read as they are, with no re-sharding and no manifest: the patterns are expanded
(``braceexpand``), and the sample counts a manifest would hold are the knobs ``train_samples`` (the
epoch length) and ``val_samples`` (spread evenly over the val shards, to find the first
``max_val_samples``). Everything else, batches included, is ``ImageShardDataModule``'s: the same
pipelines split the shards over ranks and loader workers, and corrupt samples, samples without an
image member and damaged shards are counted as skipped, not fatal.

Before any work, a pattern that names a missing file, or a file that is not readable, is refused in
one line naming the knob and the first such file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from braceexpand import braceexpand

from barlab.data.image_datamodule import ImageShardDataModule
from barlab.errors import ConfigError
from barlab.utils.integers import check_int

_REMOTE = ("://", "pipe:")


def expand_urls(patterns: str | Iterable[str] | None, knob: str) -> list[str]:
    """The shard files (absolute paths) of one brace pattern, or of a list of them, in order; each must be a
    readable local file.

    ``expand_urls("/d/train-{000000..000002}.tar", "train_urls")`` -> ``["/d/train-000000.tar", ...]``.
    Raises ConfigError on ``knob`` (one line, naming the first missing or unreadable file) before any is read.
    """
    fix = f"{knob}=/path/to/imagenet-train-{{000000..000320}}.tar"
    items = [patterns] if isinstance(patterns, str) else list(patterns or [])
    urls: list[str] = []
    for pattern in items:
        pattern = str(pattern).strip()
        if any(tag in pattern for tag in _REMOTE):
            raise ConfigError(knob, f"{pattern!r}: only local shard files are read (no URLs or pipes)",
                              fix=f"{knob}=<local copy of the shards>")
        urls += [os.path.abspath(os.path.expanduser(url)) for url in braceexpand(pattern) if url]
    if not urls:
        raise ConfigError(knob, "names no shard files", fix=fix)
    missing = [url for url in urls if not os.path.exists(url)]
    if missing:
        which = "no file" if len(missing) == len(urls) else f"{len(missing)} missing of {len(urls)} files"
        raise ConfigError(knob, f"{which}: {missing[0]} does not exist", fix=fix)
    for url in urls:
        if not os.path.isfile(url) or not os.access(url, os.R_OK):
            raise ConfigError(knob, f"{url} is not a readable file", fix=fix)
    return urls


def even_sizes(total: int, count: int) -> list[int]:
    """``total`` samples spread over ``count`` shards as evenly as possible (the first ones get the remainder)."""
    return [total // count + (i < total % count) for i in range(count)]


class WebDatasetDataModule(ImageShardDataModule):
    """Loaders over existing WebDataset shards given by brace patterns (module docstring).

    Args (the ``data=webdataset`` config group): ``train_urls`` / ``val_urls`` a brace pattern or a
    list of them; ``num_classes`` labels 0..num_classes-1; ``train_samples`` the samples of an epoch
    (over all ranks); ``val_samples`` the stored samples of the val shards; the rest as for
    ``ImageShardDataModule``. Batches: ``{"image": float32 (B, channels, image_size, image_size) in
    [-1, 1], "label": int64 (B,), "skipped": int}``; splits ``train`` and ``val``.
    """

    def __init__(self, train_urls: str | list[str], val_urls: str | list[str], image_size: int = 256,
                 channels: int = 3, num_classes: int = 1000, train_samples: int = 1281167, val_samples: int = 50000,
                 batch_size: int = 32, val_batch_size: int | None = None, num_workers: int = 8,
                 shuffle_buffer: int = 5000, flip: bool = True, random_crop: bool = True,
                 max_val_samples: int | None = None, seed: int = 0, pin_memory: bool = False):
        if channels not in (1, 3):
            raise ConfigError("channels", f"must be 1 or 3, got {channels!r}", fix="channels=3")
        train_samples = check_int(train_samples, "train_samples", fix="train_samples=1281167")
        val_samples = check_int(val_samples, "val_samples", fix="val_samples=50000")
        num_classes = check_int(num_classes, "num_classes", fix="num_classes=1000")
        splits = {"train": (expand_urls(train_urls, "train_urls"), train_samples),
                  "val": (expand_urls(val_urls, "val_urls"), val_samples)}
        super().__init__(os.path.dirname(splits["train"][0][0]) or ".", image_size=image_size, channels=channels,
                         batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers,
                         epoch_length=train_samples, shuffle_buffer=shuffle_buffer, flip=flip,
                         random_crop=random_crop, max_val_samples=max_val_samples, seed=seed, pin_memory=pin_memory)
        self.train_urls, self.val_urls = splits["train"][0], splits["val"][0]
        self._manifest = {
            "source": "webdataset",
            "num_classes": num_classes,
            "class_names": [str(i) for i in range(num_classes)],
            "channels": int(channels),
            "splits": {split: {"num_samples": size, "shards": urls, "shard_sizes": even_sizes(size, len(urls))}
                       for split, (urls, size) in splits.items()},
        }

    def _ensure_shards(self) -> dict:
        """Nothing to prepare: the manifest is made from the knobs."""
        return self._manifest
