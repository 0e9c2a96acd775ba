"""The two loader pipelines every shard folder gets (images and tokens alike).

``train_pipeline``: shards resampled with replacement forever (this rank's share, see
``rank_shards``), seeded per rank and worker; a shuffle buffer; ``decode``; ``batch`` (full
batches only); an epoch of ``ceil(epoch_length / (world_size * workers * batch_size))`` batches
per worker, i.e. about ``epoch_length`` samples per epoch over all ranks.

``eval_pipeline``: every shard once in manifest order, split over loader workers; at most the
first ``max_samples`` samples of the split (stored samples, counted in shard order over all
ranks together, corrupt ones included, using the manifest's ``shard_sizes``); with ``per_rank``
every ``world``-th of them from the rank-th on; ``decode``; ``batch`` (a short last batch too).
"""

from __future__ import annotations

import logging
import math

import webdataset as wds

from barlab.data.loader_stages import (
    Batch,
    LimitPerShard,
    RankSlice,
    Shuffle,
    SizedPipeline,
    SkipCounter,
    rank_and_world,
    rank_shards,
    worker_seed,
)
from barlab.data.tar_samples import TarSamples

log = logging.getLogger(__name__)


def train_pipeline(urls: list[str], what: str, counter: SkipCounter, decode, batch: Batch, *, seed: int,
                   shuffle_buffer: int, epoch_length: int, num_workers: int) -> SizedPipeline:
    """The training stream (module docstring); ``what`` names the shards in the per-rank log line."""
    world = rank_and_world()[1]
    workers = max(num_workers, 1)
    per_worker = max(1, math.ceil(epoch_length / (world * workers * batch.batch_size)))
    pipeline = SizedPipeline(
        wds.ResampledShards(rank_shards(urls, what), seed=seed, worker_seed=worker_seed, deterministic=True),
        TarSamples(counter),
        Shuffle(shuffle_buffer, seed) if shuffle_buffer > 1 else None,
        decode,
        batch,
        num_batches=per_worker * workers,
    )
    return pipeline.with_epoch(per_worker)


def first_samples(urls: list[str], sizes: list[int | None], max_samples: int | None,
                  where: str) -> tuple[list[str], dict[str, int]]:
    """``(shards, per-shard limits)`` holding the first ``max_samples`` stored samples (all if None)."""
    if max_samples is None:
        return urls, {}
    if None in sizes:
        log.warning("%s: manifest has no shard_sizes, so the sample limit is ignored", where)
        return urls, {}
    left, kept, limits = max_samples, [], {}
    for url, size in zip(urls, sizes):
        if left <= 0:
            break
        kept.append(url)
        limits[url] = min(size, left)
        left -= size
    return kept, limits


def eval_pipeline(urls: list[str], sizes: list[int | None], counter: SkipCounter, decode, batch: Batch, *,
                  max_samples: int | None, per_rank: bool, where: str) -> wds.DataPipeline:
    """One deterministic pass (module docstring); ``where`` names the folder in warnings."""
    urls, limits = first_samples(urls, sizes, max_samples, where)
    return wds.DataPipeline(
        wds.SimpleShardList(urls) if urls else [],
        wds.split_by_worker,
        TarSamples(counter),
        LimitPerShard(limits) if limits else None,
        RankSlice() if per_rank else None,
        decode,
        batch,
    )
