"""The ADM-convention sample set: ``per_class`` samples of every class, drawn in chunks that any number
of ranks share, gathered into one npz.

Labels are class-major (``0, 0, ..., 1, 1, ...``). Chunk ``c`` holds the labels ``[c·B, (c+1)·B)`` and
draws its noise from its own random stream, seeded with :func:`chunk_seed` ``(seed, c)``, so a sample
depends on the seed, the batch size ``B`` and its position only: one process and N ranks draw the same
images. Rank ``r`` draws chunks ``r, r + N, ...``: its own classes and seeds, every chunk once.

:func:`sample_to_npz` keeps each finished chunk as a small npz in ``.<name>.parts/`` beside the final
npz (a killed run draws only the missing chunks when run again) and rank 0 joins them, in order, into
the final npz when all are there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barlab.utils.image_grid import float_to_uint8
from barlab.utils.image_sets import write_npz, write_npz_from_parts, write_png_folder
from barlab.utils.progress import progress
from barlab.utils.resumable import check_partial
from barlab.utils.waiting import folder_state, wait_until

log = logging.getLogger(__name__)


def class_balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """int64 (num_classes · per_class,): each class ``per_class`` times, class-major."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s random stream (independent streams for every (seed, chunk))."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def num_chunks(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


@torch.no_grad()
def sample_chunks(generate: Callable[..., torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int,
                  chunks: Iterable[int], show_bar: bool = True,
                  **sampling: Any) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(chunk, uint8 images (B, C, H, W), labels (B,))`` for each of ``chunks``, in that order.

    generate: ``(labels, generator=..., **sampling) -> images in [-1, 1]`` (an ImageGenerator's or
    GeneratorModule's ``generate``).
    """
    chunks = list(chunks)
    for chunk in progress(chunks, "sampling", unit="batch", enabled=show_bar):
        part = labels[chunk * batch_size:(chunk + 1) * batch_size]
        stream = torch.Generator(device="cpu").manual_seed(chunk_seed(seed, chunk))
        yield chunk, float_to_uint8(generate(part, generator=stream, **sampling).cpu()), part


def sample_class_balanced(generate: Callable[..., torch.Tensor], num_classes: int, per_class: int,
                          batch_size: int = 250, seed: int = 0, show_bar: bool = True,
                          **sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` samples of each class in this process → (uint8 images (N, C, H, W), labels (N,)),
    class-major; the images :func:`sample_to_npz` draws over any number of ranks."""
    labels = class_balanced_labels(num_classes, per_class)
    drawn = list(sample_chunks(generate, labels, batch_size, seed, range(num_chunks(len(labels), batch_size)),
                               show_bar, **sampling))
    return torch.cat([images for _, images, _ in drawn]), labels


def parts_dir(npz: str | os.PathLike) -> Path:
    """Where :func:`sample_to_npz` keeps the finished chunks of ``npz``: ``.<name>.parts`` beside it."""
    npz = Path(npz)
    return npz.parent / f".{npz.name}.parts"


def part_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}.npz"


def sample_to_npz(generate: Callable[..., torch.Tensor], num_classes: int, per_class: int,
                  npz: str | os.PathLike, batch_size: int = 250, seed: int = 0, rank: int = 0, world: int = 1,
                  png_dir: str | os.PathLike | None = None, record: dict | None = None,
                  stall_timeout_s: float = 3600.0, show_bar: bool = True, **sampling: Any) -> Path:
    """Draw this rank's chunks of the class-balanced set and, on rank 0, join every chunk into ``npz``.

    png_dir: each rank also writes its chunks as ``<index>_class<label>.png`` there.
    record: what else the samples depend on (e.g. the generator file), kept with the finished chunks:
        a re-run that differs in it or in the arguments is refused (ConfigError naming ``out_dir``)
        instead of mixing two sample sets.
    stall_timeout_s: rank 0 waiting for the others gives up after that long without a new chunk.
    Returns ``npz`` (on every rank; only rank 0 waits for it to exist).
    """
    npz, parts = Path(npz), parts_dir(npz)
    labels = class_balanced_labels(num_classes, per_class)
    total = num_chunks(len(labels), batch_size)
    parts.mkdir(parents=True, exist_ok=True)
    check_partial(parts, {"num_classes": num_classes, "per_class": per_class, "batch_size": batch_size,
                          "seed": seed, "sampling": sampling, **(record or {})})
    mine = range(rank, total, world)
    todo = [c for c in mine if not (parts / part_name(c)).is_file()]
    if world > 1 or len(todo) < len(mine):
        log.info("rank %d/%d draws sample chunks %s of %d (%d finished earlier)", rank, world, todo, total,
                 len(mine) - len(todo))
    for chunk, images, chunk_labels in sample_chunks(generate, labels, batch_size, seed, todo, show_bar, **sampling):
        if png_dir is not None:
            write_png_folder(png_dir, images, chunk_labels, start=chunk * batch_size)
        write_npz(parts / part_name(chunk), images, chunk_labels)
    if rank != 0:
        return npz
    names = [parts / part_name(c) for c in range(total)]
    wait_until(lambda: all(p.is_file() for p in names), lambda: folder_state(parts),
               f"waiting for the other ranks' samples in {parts}", stall_timeout_s)
    write_npz_from_parts(npz, names)
    for path in parts.iterdir():
        path.unlink()
    parts.rmdir()
    return npz



