"""Write an image source into a shard folder (see :mod:`barlab.data.shard_folder`), once.

Members of a sample: ``KEY.png`` (PNG bytes) and ``KEY.cls`` (ASCII integer label). The manifest
adds ``source``, ``source_spec``, ``num_classes``, ``class_names``, ``channels``, ``created`` and
``barlab_version`` to the splits. ``ensure_shards`` serialises concurrent writers of the same
folder with ``fcntl.flock`` on ``out_dir + ".lock"``.

Shard ``i`` of a split holds the samples at positions ``[i * maxcount, (i + 1) * maxcount)`` of the
split's order (fewer if the source skips unreadable ones), so the shards do not depend on how many
processes write them: ``workers`` processes (spawned) each write whole shards. A write is
resumable: it fills ``partial_dir(out_dir)``, each shard as ``NAME.tar.tmp`` renamed to ``NAME.tar``
when complete; a re-run with the same source and ``maxcount`` keeps the finished shards and writes
the others. ``partial.json`` there records what is being written; another source is refused.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable, Iterator

from PIL import Image

from barlab.data.shard_folder import (
    MANIFEST,
    count_samples,
    read_shard_manifest,
    split_entry,
    write_shard_folder,
    write_tar,
)
from barlab.data.source import SPLITS, ImageSource
from barlab.errors import ConfigError, DataError
from barlab.utils.integers import check_int
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import progress_bar
from barlab.utils.resumable import PARTIAL, check_partial

log = logging.getLogger(__name__)



def _version() -> str:
    try:
        return metadata.version("barlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _spec(source: ImageSource) -> dict:
    return json.loads(json.dumps(source.spec())) if hasattr(source, "spec") else {}


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``shard_name("train", 3) == "train-000003.tar"``."""
    return f"{split}-{index:06d}.tar"


def iter_range(source: ImageSource, split: str, start: int, stop: int) -> Iterator[tuple[str, Image.Image, int]]:
    """The samples at positions ``[start, stop)`` of ``split``'s order, as ``(key, image, label)``:
    what ``iter_samples(split)`` yields for those positions (a skipped sample leaves a hole). The
    built-in sources read only those samples (``source.iter_range``); a source with ``iter_samples``
    alone is sliced from it."""
    if hasattr(source, "iter_range"):
        yield from source.iter_range(split, start, stop)
    else:
        yield from itertools.islice(source.iter_samples(split), start, stop)


def _encoded(source: ImageSource, split: str, start: int, stop: int) -> Iterator[dict]:
    """The samples of :func:`iter_range` as tar samples ``{"__key__", "cls", "png"}``, checked."""
    for key, img, label in iter_range(source, split, start, stop):
        if "." in key or "/" in key:
            raise DataError(f"source {source.name!r} made key {key!r}; keys must not contain '.' or '/'")
        if not 0 <= int(label) < source.num_classes:
            raise DataError(f"source {source.name!r}: sample {key} has label {label} "
                            f"outside 0..{source.num_classes - 1}")
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        yield {"__key__": key, "cls": str(int(label)).encode("ascii"), "png": buf.getvalue()}


def write_one_shard(source: ImageSource, folder: str, split: str, index: int, maxcount: int) -> int:
    """Write shard ``index`` of ``split`` into ``folder``; returns its number of samples."""
    path = os.path.join(folder, shard_name(split, index))
    return write_tar(path, _encoded(source, split, index * maxcount, (index + 1) * maxcount))


_worker_source: ImageSource | None = None


def _init_worker(source: ImageSource) -> None:
    global _worker_source
    _worker_source = source
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _worker_write(folder: str, split: str, index: int, maxcount: int) -> int:
    return write_one_shard(_worker_source, folder, split, index, maxcount)


def _run(source: ImageSource, folder: str, todo: list[tuple[str, int]], maxcount: int, workers: int,
         done: Callable[[str, int, int], None]) -> None:
    """Write the shards ``todo`` (``(split, index)``), in this process if ``workers == 1``, else in
    ``workers`` spawned processes; ``done(split, index, count)`` runs here after each one. An error
    (or one raised by ``done``) starts no further shard and waits for the running ones."""
    if workers == 1 or len(todo) <= 1:
        for split, index in todo:
            done(split, index, write_one_shard(source, folder, split, index, maxcount))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (torch, loaders)
    queue = iter(todo)
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                             initargs=(source,)) as pool:
        pending: dict = {}

        def submit() -> None:  # at most one shard per worker in flight: an error stops the rest soon
            for split, index in itertools.islice(queue, workers - len(pending)):
                pending[pool.submit(_worker_write, folder, split, index, maxcount)] = (split, index)

        submit()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=pending.get):
                split, index = pending.pop(future)
                done(split, index, future.result())
            submit()


def _fill_splits(source: ImageSource, folder: str, splits, maxcount: int, workers: int,
                 on_shard: Callable[[str, int, int], None] | None) -> dict:
    """Write the missing shards of ``splits`` into ``folder``; returns the manifest's ``splits``."""
    for name in os.listdir(folder):
        if name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))  # a shard an earlier attempt did not finish
    plan = {split: math.ceil(source.num_samples(split) / maxcount) for split in splits}
    counts: dict[tuple[str, int], int] = {}
    todo = []
    for split, n_shards in plan.items():
        for index in range(n_shards):
            path = os.path.join(folder, shard_name(split, index))
            if os.path.isfile(path):
                counts[split, index] = count_samples(path)
            else:
                todo.append((split, index))
    total = sum(plan.values())
    if counts:
        log.info("%s: keeping %d finished shard(s) of an earlier attempt, writing %d", folder, len(counts), len(todo))
    todo_samples = sum(min(maxcount, source.num_samples(s) - i * maxcount) for s, i in todo)
    start, written = time.monotonic(), 0
    with progress_bar(f"writing {source.name} shards", total=todo_samples, unit="img") as bar:
        def done(split: str, index: int, count: int) -> None:
            nonlocal written
            counts[split, index] = count
            written += count
            bar.update(min(maxcount, source.num_samples(split) - index * maxcount))
            log.info("%s: %d samples; %d/%d shards done, %.1f img/s", shard_name(split, index), count,
                     len(counts), total, written / max(time.monotonic() - start, 1e-9))
            if on_shard is not None:
                on_shard(split, index, count)

        _run(source, folder, todo, maxcount, workers, done)
    entries = {}
    for split, n_shards in plan.items():
        entries[split] = split_entry(folder, [(shard_name(split, i), counts[split, i]) for i in range(n_shards)])
        skipped = source.num_samples(split) - entries[split]["num_samples"]
        log.info("%s: %d samples in %d shards%s", split, entries[split]["num_samples"], len(entries[split]["shards"]),
                 f", {skipped} unreadable skipped" if skipped else "")
    return entries


def write_shards(source: ImageSource, out_dir: str, maxcount: int = 2000, splits=SPLITS, workers: int = 1,
                 on_shard: Callable[[str, int, int], None] | None = None) -> dict:
    """Write ``source`` as ``out_dir/{split}-{i:06d}.tar`` shards plus ``manifest.json``; returns the manifest.

    Args:
        maxcount: samples per shard; shard ``i`` holds the samples ``[i * maxcount, (i + 1) * maxcount)``.
        workers: processes writing shards (1: this process). The shards are the same for every value.
        on_shard: called as ``on_shard(split, index, count)`` after each shard this call writes.

    Atomic, and refuses a non-empty folder that holds no manifest (see ``write_shard_folder``).
    Resumable: an interrupted call leaves its finished shards in ``partial_dir(out_dir)``, and
    the same call again writes only the others; a different source or ``maxcount`` is refused.
    """
    maxcount = check_int(maxcount, "maxcount", fix="maxcount=2000")
    workers = check_int(workers, "workers", fix="workers=1")
    splits = tuple(splits)

    def fill(folder: str) -> dict:
        check_partial(folder, {"source": source.name, "source_spec": _spec(source), "maxcount": maxcount,
                                "splits": list(splits)})
        manifest = {
            "source": source.name,
            "source_spec": _spec(source),
            "num_classes": int(source.num_classes),
            "class_names": list(source.class_names),
            "channels": int(source.channels),
            "splits": _fill_splits(source, folder, splits, maxcount, workers, on_shard),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "barlab_version": _version(),
        }
        os.remove(os.path.join(folder, PARTIAL))
        return manifest

    return write_shard_folder(out_dir, fill, resumable=True)


def read_manifest(out_dir: str) -> dict | None:
    """The manifest of a finished image shard folder, or None if it has none. Raises DataError if unreadable."""
    return read_shard_manifest(out_dir, ("num_classes", "channels", "class_names"), kind=None,
                               fix="delete the folder and re-run the sharding")


def ensure_shards(out_dir: str, source: ImageSource | None = None, maxcount: int = 2000, workers: int = 1) -> dict:
    """Return the manifest of ``out_dir``, first writing the shards from ``source`` (in ``workers``
    processes) if it has none.

    Safe to call from many processes at once: writers take an exclusive ``flock`` on
    ``out_dir + ".lock"``; late comers wait, then find the manifest and reuse the shards.
    """
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    manifest = read_manifest(out_dir)
    if manifest is None and source is None:
        raise ConfigError("out_dir", f"{out_dir} holds no {MANIFEST}",
                          fix=f"set source=..., or run python -m barlab.shard fashion-mnist --out {out_dir}")
    if manifest is None:
        with exclusive_lock(out_dir + ".lock", out_dir):
            manifest = read_manifest(out_dir)
            if manifest is None:
                log.info("preparing %s shards in %s", source.name, out_dir)
                manifest = write_shards(source, out_dir, maxcount=maxcount, workers=workers)
    if source is not None and (manifest.get("source"), manifest.get("source_spec", {})) != (source.name, _spec(source)):
        log.warning("%s holds shards of %r %s but data.source is %r %s; using the existing shards "
                    "(delete the folder or change data.shards_dir to rebuild them)", out_dir, manifest.get("source"),
                    manifest.get("source_spec"), source.name, _spec(source))
    return manifest
