"""Pretokenization: image shards → token shards, with a trained tokenizer, over any number of ranks.

Every training image is stored twice, as itself and as its horizontal flip (as in the paper);
validation images once. Images go through the evaluation transform (resize + centre crop).
:class:`PretokenizeLimits` can limit both splits to their first images and drop the flips; by
default everything is encoded.

**Layout.** Token shard ``g`` of a split holds the sequences of a run of consecutive image shards
(:func:`plan_token_shards`: as many as fill about ``shard_size`` sequences), in their order, keys
``{split}_{image position:07d}_{view}`` (view 0: the image, 1: its mirror image). The layout depends
on the image shards and ``shard_size`` only, never on the number of ranks.

**Ranks.** ``world`` processes (DDP ranks, SLURM tasks) share the work: rank ``r`` encodes token
shards ``r, r + world, ...`` of the list of all splits' shards, each written whole or not at all
(``NAME.tar.tmp``, renamed when complete). Rank 0 holds a file lock on ``out_dir + ".lock"`` (one
writing job at a time), marks the in-progress folder with its attempt id (the other ranks start when
they see it), waits for every shard, then writes the manifest and publishes the folder. One process
(``world=1``) is the same with no waiting.

**Resuming.** The shards are written into ``partial_dir(out_dir)`` and kept there when a run is
killed; a new run with the same tokenizer, limits and ``shard_size`` encodes only the missing shards
(``partial.json`` records what the folder is filled with; anything else is refused).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader

from barlab.data.image_datamodule import ImageShardDataModule
from barlab.data.shard_folder import (
    MANIFEST,
    count_samples,
    partial_dir,
    split_entry,
    write_shard_folder,
    write_tar,
)
from barlab.data.token_shards import CONTINUOUS, pack_bits, pack_f16, read_token_manifest
from barlab.errors import ConfigError, DataError
from barlab.utils.integers import check_int
from barlab.utils.io import atomic_write_json
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import progress_bar
from barlab.utils.resumable import PARTIAL, check_partial
from barlab.utils.waiting import folder_state, wait_until

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


ATTEMPT = "attempt.json"  # in the in-progress folder: the attempt whose ranks are filling it


@dataclass(frozen=True)
class TokenShard:
    """One token shard of a split: the images of image shards ``shards`` (indices in manifest order),
    the first of which is at position ``start`` of the split; ``limit``: only the first that many of
    them (None: all); ``images``: how many that is by the manifest's shard sizes."""

    split: str
    index: int
    shards: tuple[int, ...]
    start: int
    limit: int | None = None
    images: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


def plan_token_shards(split: str, sizes: list[int | None], views: int, shard_size: int,
                      max_images: int | None = None) -> list[TokenShard]:
    """The token shards of one split whose image shards hold ``sizes`` images each.

    Each token shard takes ``max(1, shard_size // (views * sizes[0]))`` consecutive image shards (about
    ``shard_size`` sequences of ``views`` per image); ``max_images`` keeps the first images of the
    split only. Raises DataError if a size is unknown (a manifest written without ``shard_sizes``).
    """
    if None in sizes:
        raise DataError(f"the {split} image shards have no recorded sizes (shard_sizes); re-shard them "
                        "with python -m barlab.shard")
    per_token_shard = max(1, shard_size // (views * max(sizes[0], 1))) if sizes else 1
    plan, start = [], 0
    for first in range(0, len(sizes), per_token_shard):
        run = tuple(range(first, min(first + per_token_shard, len(sizes))))
        count = sum(sizes[i] for i in run)
        if max_images is not None and start >= max_images:
            break
        limit = None if max_images is None or start + count <= max_images else max_images - start
        plan.append(TokenShard(split, len(plan), run, start, limit, count if limit is None else limit))
        start += count
    return plan


@torch.no_grad()
def _encoded(tokenizer, images: ImageShardDataModule, shard: TokenShard, flip: bool, device: torch.device,
             batch_size: int, on_batch: Callable[[int], None]) -> Iterator[dict]:
    """The tar samples (``__key__``, ``bits`` or, continuous tokens, ``f16``, ``cls``) of ``shard``;
    ``on_batch(images)`` after each batch. Bits are packed 8 to a byte; continuous tokens (B, L, C) are
    stored as little-endian float16."""
    if tokenizer.is_discrete:
        member, pack = "bits", pack_bits
        encode = lambda v: tokenizer.encode_bits(v).to(torch.uint8).cpu().numpy()   # noqa: E731
    else:
        member, pack = "f16", pack_f16
        encode = lambda v: tokenizer.encode_tokens(v).float().cpu().numpy()          # noqa: E731
    dataset = images.eval_dataset(shard.split, shard.limit, batch_size=batch_size, shards=list(shard.shards))
    index = shard.start
    for batch in DataLoader(dataset, batch_size=None, num_workers=min(1, images.num_workers)):
        x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)  # ~25% faster convs on CPU
        views = [x, x.flip(-1)] if flip else [x]
        encoded = [encode(v) for v in views]
        for i, label in enumerate(batch["label"].tolist()):
            for view, values in enumerate(encoded):
                yield {"__key__": f"{shard.split}_{index + i:07d}_{view}", member: pack(values[i]),
                       "cls": str(int(label)).encode("ascii")}
        index += x.shape[0]
        on_batch(x.shape[0])


def token_meta(tokenizer) -> dict:
    """The manifest fields that say what the tokens are: none for bits (the default), else
    ``token_type: continuous`` and ``token_channels`` C."""
    if tokenizer.is_discrete:
        return {}
    return {"token_type": CONTINUOUS, "token_channels": int(tokenizer.quantizer.channels)}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pretokenize(tokenizer, images: ImageShardDataModule, out_dir: str, meta: dict | None = None,
                batch_size: int = 256, device: str | torch.device = "cpu", shard_size: int = 20000,
                limits: PretokenizeLimits | None = None, rank: int = 0, world: int = 1, attempt: str = "",
                stall_timeout_s: float = 3600.0) -> dict:
    """Encode the ``train`` (original + flip) and ``val`` splits of ``images`` into token shards.

    tokenizer: a :class:`barlab.tokenizer.Tokenizer` in eval mode: discrete (bits, packed) or continuous
        (its scaled latents, ``encode_tokens``, stored as float16; it needs its ``latent_scale``).
    shard_size: about this many sequences per token shard (the image shards are not split).
    limits: the first images of each split only, flips or not (default: everything, with flips).
    rank, world, attempt: this process among the ``world`` that share the work, and the id their
        attempt shares (module docstring); every rank must call with the same arguments.
    stall_timeout_s: a rank waiting for the others gives up after that long without a new file.
    Returns the token manifest (``seq_len``, ``bits``, ``grid``, class names, ``splits``, ...), on every rank.
    """
    limits = limits or PretokenizeLimits()
    shard_size = check_int(shard_size, "shard_size", fix="shard_size=20000")
    if not 0 <= rank < world:
        raise ConfigError("rank", f"must be in 0..{world - 1}, got {rank}", fix="rank=0 world=1")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    finished = read_token_manifest(out_dir)
    if finished is not None:
        return finished
    device = torch.device(device)
    tokenizer = tokenizer.to(device).eval()
    tokenizer.encoder.to(memory_format=torch.channels_last)
    if not tokenizer.is_discrete:
        tokenizer.checked_latent_scale()
    grid = tokenizer.grid_size(images.image_size)
    views = {"train": 2 if limits.flip else 1, "val": 1}
    max_images = {"train": limits.train_images, "val": limits.val_images}
    plan = [shard for split in ("train", "val")
            for shard in plan_token_shards(split, images.split_shards(split)[1], views[split], shard_size,
                                           max_images[split])]
    manifest_meta = {
        "seq_len": grid[0] * grid[1],
        "bits": tokenizer.bits_per_token,
        **token_meta(tokenizer),
        "grid": list(grid),
        "image_size": images.image_size,
        "channels": images.channels,
        "num_classes": images.num_classes,
        "class_names": images.class_names,
        "augmentations": {"train": ["original", "hflip"] if limits.flip else ["original"], "val": ["original"]},
        **({"pretokenize": limits.as_dict()} if limits != PretokenizeLimits() else {}),
        **(meta or {}),
    }
    wanted = {"tokens": manifest_meta, "shard_size": shard_size, "shards": len(plan)}
    folder = partial_dir(out_dir)

    def encode_mine() -> None:
        """Write this rank's token shards that the folder does not hold yet."""
        todo = [s for s in plan[rank::world] if not os.path.isfile(os.path.join(folder, s.name))]
        if len(todo) < len(plan[rank::world]):
            log.info("pretokenize (rank %d/%d): keeping %d finished shard(s), encoding %d", rank, world,
                     len(plan[rank::world]) - len(todo), len(todo))
        start, done = time.monotonic(), 0
        with progress_bar(f"pretokenizing (rank {rank}/{world})" if world > 1 else "pretokenizing",
                          total=sum(s.images for s in todo), unit="img") as bar:
            def on_batch(n: int) -> None:
                nonlocal done
                done += n
                bar.update(n)

            for shard in todo:
                count = write_tar(os.path.join(folder, shard.name),
                                  _encoded(tokenizer, images, shard, views[shard.split] == 2, device, batch_size,
                                           on_batch))
                log.info("pretokenize: %s, %d sequences (rank %d/%d, %.1f img/s)", shard.name, count, rank, world,
                         done / max(time.monotonic() - start, 1e-9))

    def fill(tmp: str) -> dict:
        log.info("pretokenizing %s into %s over %d rank(s)", images.shards_dir, out_dir, world)
        check_partial(tmp, wanted)
        atomic_write_json(os.path.join(tmp, ATTEMPT), {"attempt": attempt})
        encode_mine()
        wait_until(lambda: all(os.path.isfile(os.path.join(tmp, s.name)) for s in plan), lambda: folder_state(tmp),
                   f"waiting for the other ranks' token shards in {tmp}", stall_timeout_s)
        for name in os.listdir(tmp):
            if name.endswith(".tmp") or name in (ATTEMPT, PARTIAL):
                os.remove(os.path.join(tmp, name))
        manifest = {"kind": "tokens", **manifest_meta, "splits": {}}
        for split in ("train", "val"):
            entry = split_entry(tmp, [(s.name, count_samples(os.path.join(tmp, s.name))) for s in plan
                                      if s.split == split])
            manifest["splits"][split] = entry
            log.info("pretokenize %s: %d sequences in %d shards", split, entry["num_samples"], len(entry["shards"]))
        return manifest

    if rank == 0:
        with exclusive_lock(out_dir + ".lock", out_dir):  # one writing job at a time
            finished = read_token_manifest(out_dir)
            return finished if finished is not None else write_shard_folder(out_dir, fill, resumable=True)
    # other ranks: start once rank 0 of this attempt has claimed the folder, then wait for its manifest
    def published() -> bool:
        return os.path.isfile(os.path.join(out_dir, MANIFEST))

    wait_until(lambda: published() or (_read_json(os.path.join(folder, ATTEMPT)) or {}).get("attempt") == attempt,
               lambda: folder_state(folder), f"rank {rank}: waiting for rank 0 to start {folder}", stall_timeout_s)
    if not published():
        encode_mine()
        wait_until(published, lambda: folder_state(folder), f"rank {rank}: waiting for rank 0 to publish {out_dir}",
                   stall_timeout_s)
    return read_token_manifest(out_dir)
