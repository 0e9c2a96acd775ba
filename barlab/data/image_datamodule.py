"""``ImageShardDataModule``: Lightning loaders over the tar shards written by ``image_shards``.

Batches are dicts::

    {"image": float32 (B, C, H, W) in [-1, 1], "label": int64 (B,), "skipped": int}

``skipped`` is how many samples the producing worker dropped as corrupt since its previous batch
(summing it over batches gives the skips up to the last batch of each worker). ``dm.skipped`` is
the total dropped by this process and its loader workers so far (shared counter; includes skips
after a worker's last batch).

Train and val are the pipelines of :mod:`barlab.data.loaders`: train with random crop/flip, val
one fixed-order pass without augmentation over (optionally) the first ``max_val_samples``
stored samples of the split, shared out over the ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from barlab.data.image_shards import ensure_shards
from barlab.data.loader_stages import Batch, Decode, SkipCounter
from barlab.data.loaders import eval_pipeline, train_pipeline
from barlab.data.transforms import ImageTransform
from barlab.errors import ConfigError, DataError
from barlab.utils.integers import check_int


class ImageShardDataModule(L.LightningDataModule):
    """Loaders over ``shards_dir`` (prepared from ``source`` on first use if it has no manifest).

    Args mirror the ``data`` config group; see the module docstring for the batch format.
    ``num_classes``, ``class_names``, ``channels``, ``manifest`` are available right after
    construction (they read, and if needed prepare, the shards). ``shard_workers``: processes writing
    the shards on first use (the same shards for any number); not in the configs, so that they and the
    cache keys stay as they were: set it with ``+data.shard_workers=N``.
    """

    def __init__(self, shards_dir: str, source=None, image_size: int = 32, channels: int | None = None,
                 batch_size: int = 64, val_batch_size: int | None = None, num_workers: int = 1,
                 epoch_length: int = 60000, shuffle_buffer: int = 2000, flip: bool = True,
                 random_crop: bool = True, max_val_samples: int | None = None, seed: int = 0,
                 pin_memory: bool = False, shard_size: int = 2000,
                 shard_workers: int = 1):
        super().__init__()
        if not shards_dir:
            raise ConfigError("shards_dir", "is empty", fix="shards_dir=/path/to/shards")
        if isinstance(source, Mapping) and "_target_" in source:
            from hydra.utils import instantiate  # a config node passed without recursive instantiation

            source = instantiate(source)
        if channels not in (None, 1, 3):
            raise ConfigError("channels", f"must be 1, 3 or null, got {channels!r}", fix="channels=null")
        self.shards_dir = os.path.abspath(os.path.expanduser(str(shards_dir)))
        self.source = source
        self.image_size = check_int(image_size, "image_size", fix="image_size=32")
        self._channels = channels
        self.batch_size = check_int(batch_size, "batch_size", fix="batch_size=64")
        self.val_batch_size = check_int(val_batch_size, "val_batch_size", allow_none=True, fix="val_batch_size=null")
        self.num_workers = check_int(num_workers, "num_workers", minimum=0, fix="num_workers=1")
        self.epoch_length = check_int(epoch_length, "epoch_length", fix="epoch_length=60000")
        self.shuffle_buffer = check_int(shuffle_buffer, "shuffle_buffer", minimum=0, fix="shuffle_buffer=2000")
        self.max_val_samples = check_int(max_val_samples, "max_val_samples", allow_none=True,
                                         fix="max_val_samples=null")
        self.flip, self.random_crop = bool(flip), bool(random_crop)
        self.seed, self.pin_memory = int(seed), bool(pin_memory)
        self.shard_size = check_int(shard_size, "shard_size", fix="shard_size=2000")
        self.shard_workers = check_int(shard_workers, "shard_workers", fix="shard_workers=1")
        self._manifest: dict | None = None
        self._counters: list[SkipCounter] = []

    # ---- metadata -------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        """The shards' manifest.json (prepares the shards from ``source`` if missing)."""
        if self._manifest is None:
            self._manifest = self._ensure_shards()
        return self._manifest

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def channels(self) -> int:
        """Channels of the batches: the ``channels`` argument, else the shards'."""
        return int(self._channels or self.manifest["channels"])

    @property
    def skipped(self) -> int:
        """Corrupt samples / shard tails skipped so far by this process and its loader workers."""
        return sum(c.total for c in self._counters)

    def _ensure_shards(self) -> dict:
        """:func:`ensure_shards` of ``shards_dir``; its errors on ``out_dir`` name ``shards_dir``."""
        try:
            return ensure_shards(self.shards_dir, self.source, maxcount=self.shard_size,
                                 workers=self.shard_workers)
        except ConfigError as err:
            raise (err.renamed("shards_dir") if err.knob == "out_dir" else err) from None

    def prepare_data(self) -> None:
        self._ensure_shards()

    def setup(self, stage: str | None = None) -> None:
        # a no-op if prepare_data made them
        self._manifest = self._ensure_shards()

    # ---- loaders --------------------------------------------------------------------------
    def split_shards(self, split: str) -> tuple[list[str], list[int | None]]:
        """``(shard paths, stored samples of each or None)`` of ``split``, in manifest order."""
        return self._urls(split)

    def _urls(self, split: str) -> tuple[list[str], list[int | None]]:
        entry = self.manifest["splits"].get(split)
        if entry is None:
            raise DataError(f"{self.shards_dir}: manifest has no {split!r} split; re-run python -m barlab.shard")
        urls = [os.path.join(self.shards_dir, name) for name in entry["shards"]]
        return urls, list(entry.get("shard_sizes") or [None] * len(urls))

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def _counter(self) -> SkipCounter:
        counter = SkipCounter()
        self._counters.append(counter)
        return counter

    def train_dataset(self) -> wds.DataPipeline:
        """Infinite resampled stream cut into epochs of ``len(dataset)`` batches per rank."""
        urls, _ = self._urls("train")
        if not urls:
            raise DataError(f"{self.shards_dir}: the train split is empty; re-shard with a source that has train data")
        counter = self._counter()
        transform = ImageTransform(self.image_size, self.channels, train=True,
                                   random_crop=self.random_crop, flip=self.flip)
        decode = Decode(transform, self.num_classes, counter, seed=self.seed)
        return train_pipeline(urls, "train image", counter, decode, Batch(self.batch_size, counter, partial=False),
                              seed=self.seed,
                              shuffle_buffer=self.shuffle_buffer, epoch_length=self.epoch_length,
                              num_workers=self.num_workers)

    def val_dataset(self) -> wds.DataPipeline:
        """This rank's share of one deterministic pass over the val shards (first ``max_val_samples``)."""
        return self.eval_dataset("val", self.max_val_samples, per_rank=True)

    def eval_dataset(self, split: str, max_samples: int | None = None, batch_size: int | None = None,
                     per_rank: bool = False, shards: list[int] | None = None) -> wds.DataPipeline:
        """One deterministic, unaugmented pass over ``split`` (e.g. to pretokenize the train split).

        max_samples: only the first that many stored samples of the split (over all ranks together).
        per_rank: only this rank's share of the samples (Lightning's validation under DDP); off, the
        whole split, whatever the rank (scoring runs on rank 0 alone).
        shards: only these shards of the split (indices into :meth:`split_shards`, in this order);
        ``max_samples`` then counts from the first of them (a rank's part of a pretokenization).
        """
        urls, sizes = self._urls(split)
        if shards is not None:
            urls, sizes = [urls[i] for i in shards], [sizes[i] for i in shards]
        counter = self._counter()
        transform = ImageTransform(self.image_size, self.channels, train=False)
        return eval_pipeline(urls, sizes, counter, Decode(transform, self.num_classes, counter),
                             Batch(batch_size or self.val_batch_size or self.batch_size, counter, partial=True),
                             max_samples=max_samples, per_rank=per_rank, where=self.shards_dir)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset())
