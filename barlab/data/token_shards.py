"""Token shards: a pretokenized dataset of tokens, as a shard folder (:mod:`barlab.data.shard_folder`).

Discrete tokens (bits): members ``KEY.bits`` (np.packbits of the (L, k) {0,1} bits, row-major, little
bit order) and ``KEY.cls`` (ASCII integer label). The manifest adds ``"kind": "tokens"``, ``seq_len``
(L), ``bits`` (k), ``grid`` [h, w] and the rest of the writer's ``meta`` to the splits.

Continuous tokens (``"token_type": "continuous"`` in the manifest, with ``token_channels`` C and
``bits`` = 16·C; ``channels`` stays the images' channels): members ``KEY.f16`` (the (L, C) values as
little-endian float16, row-major, 2·L·C bytes) and ``KEY.cls``. A manifest without ``token_type`` is
discrete. The loaders are in :mod:`barlab.data.token_datamodule`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from barlab.data.shard_folder import SplitShards, read_shard_manifest, write_shard_folder
from barlab.errors import DataError


def pack_bits(bits: np.ndarray) -> bytes:
    """(L, k) {0,1} → bytes (ceil(L·k / 8))."""
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(payload: bytes, seq_len: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: bytes → (L, k) uint8 {0,1}."""
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little", count=seq_len * bits)
    return flat.reshape(seq_len, bits)


CONTINUOUS = "continuous"
F16 = np.dtype("<f2")


def token_type(manifest: dict) -> str:
    """``"discrete"`` (bits) or ``"continuous"`` (float16 values) for a token manifest."""
    return str(manifest.get("token_type", "discrete"))


def pack_f16(values: np.ndarray) -> bytes:
    """(L, C) float → bytes (2·L·C), little-endian float16 (values rounded to the nearest float16)."""
    return np.ascontiguousarray(values, dtype=F16).tobytes()


def unpack_f16(payload: bytes, seq_len: int, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_f16`: bytes → (L, C) float32. Raises ValueError on a wrong length."""
    if len(payload) != 2 * seq_len * channels:
        raise ValueError(f"{len(payload)} bytes, expected {2 * seq_len * channels}")
    return np.frombuffer(payload, dtype=F16).reshape(seq_len, channels).astype(np.float32)


def write_token_shards(splits: dict[str, Iterable[tuple[str, np.ndarray, int]]], out_dir: str, meta: dict,
                       maxcount: int = 20000) -> dict:
    """Write ``{split: iterable of (key, bits (L, k) uint8, label)}`` as token shards; returns the manifest.

    Atomic, and refuses a non-empty folder that holds no manifest (see ``write_shard_folder``).
    ``meta`` must hold ``seq_len`` and ``bits``; with ``"token_type": "continuous"`` also
    ``token_channels`` C, and the samples are (key, values (L, C) float, label), stored as float16.
    """
    continuous = token_type(meta) == CONTINUOUS
    width = int(meta["token_channels"]) if continuous else int(meta["bits"])
    expected = (int(meta["seq_len"]), width)

    def fill(tmp: str) -> dict:
        manifest = {"kind": "tokens", **meta, "splits": {}}
        for split, samples in splits.items():
            with SplitShards(tmp, split, maxcount) as writer:
                for key, bits, label in samples:
                    if bits.shape != expected:
                        raise DataError(f"token sample {key} has shape {bits.shape}, expected {expected}")
                    payload = {"f16": pack_f16(bits)} if continuous else {"bits": pack_bits(bits)}
                    writer.add(key, {**payload, "cls": str(int(label)).encode("ascii")})
                manifest["splits"][split] = writer.close()
        return manifest

    return write_shard_folder(out_dir, fill)


def read_token_manifest(out_dir: str) -> dict | None:
    """The manifest of a finished token-shard folder, None if there is none. Raises DataError if unreadable."""
    return read_shard_manifest(out_dir, ("seq_len", "bits"), kind="tokens",
                               fix="delete the folder to pretokenize again")
