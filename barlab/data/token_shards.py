"""Token shards: a pretokenized dataset of bit tokens, and its Lightning loaders.

Layout of a finished folder::

    out_dir/train-000000.tar ...   members KEY.bits (np.packbits of the (L, k) {0,1} bits, row-major,
                                   little bit order) and KEY.cls (ASCII integer label)
    out_dir/val-000000.tar ...
    out_dir/manifest.json          written last: {"kind": "tokens", "seq_len": L, "bits": k, "grid": [h, w], ...}

Batches are ``{"bits": float32 (B, L, k) in {0, 1}, "label": int64 (B,), "skipped": int}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from barlab.data.pipeline import (
    Batch,
    RankSlice,
    Shuffle,
    SizedPipeline,
    SkipCounter,
    TarSamples,
    rank_and_world,
    rank_shards,
    worker_seed,
)
from barlab.data.shard_writer import MANIFEST, SplitShards
from barlab.errors import ConfigError, DataError
from barlab.utils.io import disk_full_as_error

log = logging.getLogger(__name__)


def pack_bits(bits: np.ndarray) -> bytes:
    """(L, k) {0,1} → bytes (ceil(L·k / 8))."""
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(payload: bytes, seq_len: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: bytes → (L, k) uint8 {0,1}."""
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little", count=seq_len * bits)
    return flat.reshape(seq_len, bits)


def write_token_shards(splits: dict[str, Iterable[tuple[str, np.ndarray, int]]], out_dir: str, meta: dict,
                       maxcount: int = 20000) -> dict:
    """Write ``{split: iterable of (key, bits (L, k) uint8, label)}`` as token shards; returns the manifest.

    Built in a temporary sibling folder and renamed into place, so a killed job leaves no folder
    that looks finished; a full disk removes the temporary folder and raises
    :class:`barlab.errors.DiskFull`. ``meta`` must hold ``seq_len`` and ``bits``.
    """
    out_dir = os.path.abspath(out_dir)
    with disk_full_as_error(out_dir):
        parent, base = os.path.split(out_dir)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
        expected = (int(meta["seq_len"]), int(meta["bits"]))
        try:
            manifest = {"kind": "tokens", **meta, "splits": {}}
            for split, samples in splits.items():
                with SplitShards(tmp, split, maxcount) as writer:
                    for key, bits, label in samples:
                        if bits.shape != expected:
                            raise DataError(f"token sample {key} has shape {bits.shape}, expected {expected}")
                        writer.add(key, {"bits": pack_bits(bits), "cls": str(int(label)).encode("ascii")})
                    manifest["splits"][split] = writer.close()
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
            if os.path.isdir(out_dir):
                shutil.rmtree(out_dir)
            os.rename(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def read_token_manifest(out_dir: str) -> dict | None:
    """The manifest of a finished token-shard folder, None if there is none."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        assert manifest["kind"] == "tokens"
        manifest["seq_len"], manifest["bits"], manifest["splits"]  # noqa: B018 - schema check
    except (OSError, ValueError, KeyError, AssertionError) as err:
        raise DataError(f"{path}: not a token-shard manifest ({err!r}); "
                        "delete the folder to pretokenize again") from None
    return manifest


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


class TokenBatch(Batch):
    """``(bits (L, k), label)`` stream → ``{"bits": float (B, L, k) in {0, 1}, "label", "skipped"}``."""

    key = "bits"

    def stack(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).float()


class TokenShardDataModule(L.LightningDataModule):
    """Loaders over a token-shard folder written by pretokenization.

    Train: resampled shards, shuffle buffer, epochs of about ``epoch_length`` sequences over all
    ranks. Val: one deterministic pass, split by node and worker, at most ``max_val_samples``.
    """

    def __init__(self, shards_dir: str, batch_size: int = 64, val_batch_size: int | None = None,
                 num_workers: int = 1, epoch_length: int = 120000, shuffle_buffer: int = 5000,
                 max_val_samples: int | None = None, seed: int = 0):
        super().__init__()
        self.shards_dir = os.path.abspath(shards_dir)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size or batch_size)
        self.num_workers, self.epoch_length = int(num_workers), int(epoch_length)
        self.shuffle_buffer, self.max_val_samples, self.seed = int(shuffle_buffer), max_val_samples, int(seed)
        manifest = read_token_manifest(self.shards_dir)
        if manifest is None:
            raise ConfigError("generator.data.shards_dir", f"{self.shards_dir} holds no token shards",
                              fix="run with stage=all, or pretokenize with a trained tokenizer first")
        self.manifest = manifest
        self.seq_len, self.bits = int(manifest["seq_len"]), int(manifest["bits"])
        self._counters: list[SkipCounter] = []

    @property
    def skipped(self) -> int:
        return sum(c.total for c in self._counters)

    def _urls(self, split: str) -> list[str]:
        entry = self.manifest["splits"].get(split)
        if not entry or not entry["shards"]:
            raise DataError(f"{self.shards_dir}: no {split!r} token shards; delete the folder to pretokenize again")
        return [os.path.join(self.shards_dir, name) for name in entry["shards"]]

    def train_dataloader(self) -> DataLoader:
        counter = SkipCounter()
        self._counters.append(counter)
        world = rank_and_world()[1]
        workers = max(self.num_workers, 1)
        per_worker = max(1, math.ceil(self.epoch_length / (world * workers * self.batch_size)))
        pipeline = SizedPipeline(
            wds.ResampledShards(rank_shards(self._urls("train"), "train token"), seed=self.seed,
                                worker_seed=worker_seed, deterministic=True),
            TarSamples(counter),
            Shuffle(self.shuffle_buffer, self.seed) if self.shuffle_buffer > 1 else None,
            DecodeTokens(self.seq_len, self.bits, counter),
            TokenBatch(self.batch_size, counter, partial=False),
            num_batches=per_worker * workers,
        ).with_epoch(per_worker)
        return DataLoader(pipeline, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        counter = SkipCounter()
        self._counters.append(counter)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self._urls("val")), TarSamples(counter),
            wds.slice(self.max_val_samples) if self.max_val_samples else None,
            RankSlice(), DecodeTokens(self.seq_len, self.bits, counter),
            TokenBatch(self.val_batch_size, counter, partial=True),
        )
        return DataLoader(pipeline, batch_size=None, num_workers=0)
