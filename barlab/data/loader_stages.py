"""Loader pipeline stages over tar shards: (shuffle), decode + transform, batch; reading is in ``tar_samples``.

Each stage is a callable ``stage(iterator) -> iterator`` usable in ``webdataset.DataPipeline``.
Bad data never crashes a stage: a corrupt sample (bad or missing image, bad or missing ``.cls``) or an
unreadable / truncated shard is logged, counted in a ``SkipCounter`` and skipped. Batches are
``{"image": float32 (B, C, H, W) in [-1, 1], "label": int64 (B,), "skipped": int}`` where
``skipped`` is the number of samples (plus unreadable shard tails) this worker skipped since
its previous batch.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import random
from multiprocessing.context import get_spawning_popen
from typing import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from barlab.data.transforms import ImageTransform, uint8_to_float

log = logging.getLogger(__name__)

_LOG_FIRST, _LOG_EVERY = 10, 1000


class SkipCounter:
    """Counts skipped samples. ``local``: this process; ``total``: this process and its loader workers.

    The cross-process total lives in a ``multiprocessing.Value`` that forked or spawned DataLoader
    workers inherit; it is dropped when the counter is pickled any other way.
    """

    def __init__(self, shared: bool = True):
        self.local = 0
        # a spawn-context Value works in forked *and* spawned workers (a fork-context one only in forked)
        self._shared = multiprocessing.get_context("spawn").Value("q", 0) if shared else None

    def skip(self, what: str, reason: object) -> None:
        self.local += 1
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared.value += 1
        if self.local <= _LOG_FIRST or self.local % _LOG_EVERY == 0:
            more = " (further skips logged every 1000)" if self.local == _LOG_FIRST else ""
            log.warning("skipping %s: %s [%d skipped in pid %d]%s", what, reason, self.local, os.getpid(), more)

    @property
    def total(self) -> int:
        return self.local if self._shared is None else int(self._shared.value)

    def __getstate__(self):
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            state["_shared"] = None
        return state


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed if initialised, else env RANK / WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_shards(urls: list[str], what: str) -> list[str]:
    """This rank's training shards: ``urls[rank::world]`` when there are enough for every rank to get
    its own, else all of them (every rank then draws its own resampled stream, seeded by rank)."""
    rank, world = rank_and_world()
    mine = list(urls[rank::world]) if len(urls) >= world else list(urls)
    if world > 1:
        log.info("rank %d/%d reads %s shards %s", rank, world, what, " ".join(os.path.basename(u) for u in mine))
    return mine


def worker_and_count() -> tuple[int, int]:
    """(DataLoader worker id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def worker_seed() -> int:
    """A seed distinct per (rank, worker); used for ``webdataset.ResampledShards``."""
    return rank_and_world()[0] * 1000 + worker_and_count()[0]


def _stream_rng(seed: int, salt: int, calls: int) -> random.Random:
    return random.Random(f"{seed}/{salt}/{worker_seed()}/{calls}")


class RankSlice:
    """Every ``world``-th sample from the ``rank``-th on: each rank of a DDP validation gets its own share.

    Splitting by shard instead would leave a rank without data whenever there are fewer shards
    than ranks, and Lightning's end-of-epoch reductions would then wait forever for that rank.
    Here every rank gets samples as long as there are at least as many samples as ranks, and the
    shares differ by at most one.
    """

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        rank, world = rank_and_world()
        for index, sample in enumerate(src):
            if index % world == rank:
                yield sample


class LimitPerShard:
    """Keep at most ``limits[url]`` samples of each shard (shards not in ``limits`` are unlimited)."""

    def __init__(self, limits: dict[str, int]):
        self.limits = limits

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        seen: dict[str, int] = {}
        for sample in src:
            url = sample["__url__"]
            seen[url] = seen.get(url, 0) + 1
            if seen[url] <= self.limits.get(url, seen[url]):
                yield sample


class Shuffle:
    """Shuffle buffer of ``bufsize`` samples, seeded per (seed, rank, worker, iteration).

    Why not ``webdataset.shuffle``: given a seed it uses that one seed in every rank and loader
    worker and every epoch (the same permutation of each stream everywhere), and without one it
    seeds from pid and clock (no run can be replayed). Here each (rank, worker) draws its own
    seeded order over its own shards, each new pass (epoch) a new one, and a resumed run, whose
    ``seed`` is ``stream_seed(seed, step)``, a fresh but seeded one; and the order for a given
    seed stays the one earlier results were made with.
    """

    def __init__(self, bufsize: int, seed: int):
        self.bufsize, self.seed, self._calls = int(bufsize), int(seed), 0

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        rng = _stream_rng(self.seed, 1, self._calls)
        self._calls += 1
        buf: list = []
        for sample in src:
            if len(buf) < self.bufsize:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf


# image members a sample may hold (the first present one is used), with the one PIL format each may be
IMAGE_KEYS = {"jpg": "JPEG", "png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Decode:
    """Sample dicts -> ``(uint8 array (C, H, W), label)`` via PIL + ``transform.array``; bad samples are skipped.

    The image is the first of the members ``jpg``, ``png``, ``jpeg``, ``webp`` the sample has (barlab's
    own shards hold ``png``; the official BAR / ImageNet WebDataset shards ``jpg``), decoded as that
    format only; the label is ``cls`` (ASCII integer). A sample with no image member is a bad sample.
    """

    def __init__(self, transform: ImageTransform, num_classes: int, counter: SkipCounter, seed: int = 0):
        self.transform, self.num_classes, self.counter = transform, int(num_classes), counter
        self.seed, self._calls = int(seed), 0

    def _parse(self, sample: dict) -> tuple[Image.Image, int]:
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or "cls" not in sample:
            raise KeyError(f"needs a .jpg/.png/.jpeg/.webp and a .cls member, "
                           f"has {sorted(k for k in sample if not k.startswith('__'))}")
        label = int(sample["cls"].decode("ascii").strip())
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside 0..{self.num_classes - 1}")
        img = Image.open(io.BytesIO(sample[key]), formats=(IMAGE_KEYS[key],))
        img.load()
        return img, label

    def __call__(self, src: Iterable[dict]) -> Iterator[tuple[np.ndarray, int]]:
        rng = _stream_rng(self.seed, 2, self._calls)
        self._calls += 1
        for sample in src:
            try:
                img, label = self._parse(sample)
            except (OSError, ValueError, SyntaxError, KeyError, EOFError, Image.DecompressionBombError) as err:
                self.counter.skip(f"sample {sample.get('__key__')} of {sample.get('__url__')}",
                                  f"{type(err).__name__}: {err}")
                continue
            yield self.transform.array(img, rng), label


class Batch:
    """``(array, label)`` stream -> batch dicts; ``partial``: emit a short last batch.

    Images by default: ``{"image": float (B, C, H, W) in [-1, 1], "label", "skipped"}`` (see the
    module docstring). Subclasses change ``key`` and :meth:`stack` (token bits use ``"bits"``).
    """

    key = "image"

    def __init__(self, batch_size: int, counter: SkipCounter, partial: bool = True):
        self.batch_size, self.counter, self.partial = int(batch_size), counter, partial

    def stack(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return uint8_to_float(np.stack(arrays))

    def _emit(self, arrays: list, labels: list, since: int) -> dict:
        return {self.key: self.stack(arrays), "label": torch.tensor(labels, dtype=torch.long),
                "skipped": self.counter.local - since}

    def __call__(self, src: Iterable[tuple[np.ndarray, int]]) -> Iterator[dict]:
        arrays, labels, since = [], [], self.counter.local
        for array, label in src:
            arrays.append(array)
            labels.append(label)
            if len(arrays) == self.batch_size:
                yield self._emit(arrays, labels, since)
                arrays, labels, since = [], [], self.counter.local
        if arrays and self.partial:
            yield self._emit(arrays, labels, since)


class SizedPipeline(wds.DataPipeline):
    """A ``webdataset.DataPipeline`` whose ``len()`` is ``num_batches`` (picklable, unlike ``.with_length``).

    Lightning reads it as the number of batches per epoch on this rank.
    """

    def __init__(self, *stages, num_batches: int):
        super().__init__(*stages)
        self.num_batches = int(num_batches)

    def __len__(self) -> int:
        return self.num_batches
