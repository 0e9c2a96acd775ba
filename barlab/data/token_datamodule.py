"""``TokenShardDataModule``: Lightning loaders over the token shards of :mod:`barlab.data.token_shards`.

Batches are ``{"bits": float32 (B, L, k) in {0, 1}, "label": int64 (B,), "skipped": int}``; for
continuous token shards (``token_type: continuous``) ``{"tokens": float32 (B, L, C), "label", "skipped"}``
(the stored float16 values, exactly). Train and val are the pipelines of :mod:`barlab.data.loaders`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from barlab.data.loader_stages import Batch, SkipCounter
from barlab.data.loaders import eval_pipeline, train_pipeline
from barlab.data.token_shards import CONTINUOUS, read_token_manifest, token_type, unpack_bits, unpack_f16
from barlab.errors import ConfigError, DataError
from barlab.utils.integers import check_int


class DecodeTokens:
    """Sample dicts → ``(bits uint8 (L, k), label)``; corrupt samples are counted and skipped."""

    def __init__(self, seq_len: int, bits: int, counter: SkipCounter):
        self.seq_len, self.bits, self.counter = seq_len, bits, counter

    def __call__(self, src: Iterable[dict]) -> Iterator[tuple[np.ndarray, int]]:
        for sample in src:
            try:
                label = int(sample["cls"].decode("ascii"))
                payload = sample["bits"]
                if len(payload) != math.ceil(self.seq_len * self.bits / 8):
                    raise ValueError(f"{len(payload)} bytes, expected {math.ceil(self.seq_len * self.bits / 8)}")
                yield unpack_bits(payload, self.seq_len, self.bits), label
            except (KeyError, ValueError, UnicodeDecodeError) as err:
                self.counter.skip(f"token sample {sample.get('__key__')}", f"{type(err).__name__}: {err}")


class DecodeContinuousTokens(DecodeTokens):
    """Sample dicts → ``(values float32 (L, C), label)`` from ``KEY.f16``; corrupt samples are counted and skipped."""

    def __call__(self, src: Iterable[dict]) -> Iterator[tuple[np.ndarray, int]]:
        for sample in src:
            try:
                label = int(sample["cls"].decode("ascii"))
                yield unpack_f16(sample["f16"], self.seq_len, self.bits), label
            except (KeyError, ValueError, UnicodeDecodeError) as err:
                self.counter.skip(f"token sample {sample.get('__key__')}", f"{type(err).__name__}: {err}")


class TokenBatch(Batch):
    """``(bits (L, k), label)`` stream → ``{"bits": float (B, L, k) in {0, 1}, "label", "skipped"}``."""

    key = "bits"

    def stack(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).float()


class ContinuousTokenBatch(TokenBatch):
    """``(values (L, C), label)`` stream → ``{"tokens": float (B, L, C), "label", "skipped"}``."""

    key = "tokens"


class TokenShardDataModule(L.LightningDataModule):
    """Loaders over a token-shard folder written by pretokenization.

    Train: resampled shards, shuffle buffer, epochs of about ``epoch_length`` sequences over all
    ranks. Val: one deterministic pass in the main process, at most the first ``max_val_samples``
    stored sequences (over all ranks together, as for images), shared out over the ranks.
    """

    def __init__(self, shards_dir: str, batch_size: int = 64, val_batch_size: int | None = None,
                 num_workers: int = 1, epoch_length: int = 120000, shuffle_buffer: int = 5000,
                 max_val_samples: int | None = None, seed: int = 0):
        super().__init__()
        self.shards_dir = os.path.abspath(shards_dir)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size or batch_size)
        self.num_workers, self.epoch_length = int(num_workers), int(epoch_length)
        self.shuffle_buffer, self.seed = int(shuffle_buffer), int(seed)
        self.max_val_samples = check_int(max_val_samples, "max_val_samples", allow_none=True,
                                         fix="max_val_samples=null")
        manifest = read_token_manifest(self.shards_dir)
        if manifest is None:
            raise ConfigError("shards_dir", f"{self.shards_dir} holds no token shards",
                              fix="run with stage=all, or pretokenize with a trained tokenizer first")
        self.manifest = manifest
        self.seq_len, self.bits = int(manifest["seq_len"]), int(manifest["bits"])
        self.token_type = token_type(manifest)
        self.continuous = self.token_type == CONTINUOUS
        # values per token: k bits, or C channels of continuous tokens
        self.width = int(manifest["token_channels"]) if self.continuous else self.bits
        self._counters: list[SkipCounter] = []

    @property
    def skipped(self) -> int:
        return sum(c.total for c in self._counters)

    def _counter(self) -> SkipCounter:
        counter = SkipCounter()
        self._counters.append(counter)
        return counter

    def _decode(self, counter: SkipCounter) -> DecodeTokens:
        kind = DecodeContinuousTokens if self.continuous else DecodeTokens
        return kind(self.seq_len, self.width, counter)

    def _batch(self, batch_size: int, counter: SkipCounter, partial: bool) -> TokenBatch:
        return (ContinuousTokenBatch if self.continuous else TokenBatch)(batch_size, counter, partial=partial)

    def _urls(self, split: str) -> tuple[list[str], list[int | None]]:
        entry = self.manifest["splits"].get(split)
        if not entry or not entry["shards"]:
            raise DataError(f"{self.shards_dir}: no {split!r} token shards; delete the folder to pretokenize again")
        urls = [os.path.join(self.shards_dir, name) for name in entry["shards"]]
        return urls, list(entry.get("shard_sizes") or [None] * len(urls))

    def train_dataloader(self) -> DataLoader:
        counter = self._counter()
        pipeline = train_pipeline(self._urls("train")[0], "train token", counter,
                                  self._decode(counter), self._batch(self.batch_size, counter, False), seed=self.seed,
                                  shuffle_buffer=self.shuffle_buffer, epoch_length=self.epoch_length,
                                  num_workers=self.num_workers)
        return DataLoader(pipeline, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        counter = self._counter()
        urls, sizes = self._urls("val")
        pipeline = eval_pipeline(urls, sizes, counter, self._decode(counter),
                                 self._batch(self.val_batch_size, counter, True),
                                 max_samples=self.max_val_samples, per_rank=True, where=self.shards_dir)
        return DataLoader(pipeline, batch_size=None, num_workers=0)
