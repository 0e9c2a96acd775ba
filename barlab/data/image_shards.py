"""Write an image source into a shard folder (see :mod:`barlab.data.shard_folder`), once.

Members of a sample: ``KEY.png`` (PNG bytes) and ``KEY.cls`` (ASCII integer label). The manifest
adds ``source``, ``source_spec``, ``num_classes``, ``class_names``, ``channels``, ``created`` and
``barlab_version`` to the splits. ``ensure_shards`` serialises concurrent writers of the same
folder with ``fcntl.flock`` on ``out_dir + ".lock"``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from datetime import datetime, timezone
from importlib import metadata

from barlab.data.shard_folder import MANIFEST, SplitShards, read_shard_manifest, write_shard_folder
from barlab.data.source import SPLITS, ImageSource
from barlab.errors import ConfigError, DataError
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import progress

log = logging.getLogger(__name__)

LOG_EVERY = 10_000  # log progress every this many samples


def _version() -> str:
    try:
        return metadata.version("barlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _spec(source: ImageSource) -> dict:
    return json.loads(json.dumps(source.spec())) if hasattr(source, "spec") else {}


def _write_split(source: ImageSource, split: str, folder: str, maxcount: int) -> dict:
    """Write one split's shards into ``folder``; returns its manifest entry."""
    start = time.monotonic()
    with SplitShards(folder, split, maxcount) as writer:
        samples = progress(source.iter_samples(split), f"writing {split} shards", total=source.num_samples(split),
                           unit="img")
        for count, (key, img, label) in enumerate(samples, start=1):
            if "." in key or "/" in key:
                raise DataError(f"source {source.name!r} made key {key!r}; keys must not contain '.' or '/'")
            if not 0 <= int(label) < source.num_classes:
                raise DataError(f"source {source.name!r}: sample {key} has label {label} "
                                f"outside 0..{source.num_classes - 1}")
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            writer.add(key, {"cls": str(int(label)).encode("ascii"), "png": buf.getvalue()})
            if count % LOG_EVERY == 0:
                log.info("%s: %d samples written (%.0f/s)", split, count, count / (time.monotonic() - start))
        entry = writer.close()
    log.info("%s: %d samples in %d shards (%.1fs)", split, entry["num_samples"], len(entry["shards"]),
             time.monotonic() - start)
    return entry


def write_shards(source: ImageSource, out_dir: str, maxcount: int = 2000, splits=SPLITS) -> dict:
    """Write ``source`` as ``out_dir/{split}-{i:06d}.tar`` shards plus ``manifest.json``; returns the manifest.

    Atomic, and refuses a non-empty folder that holds no manifest (see ``write_shard_folder``).
    """
    if int(maxcount) < 1:
        raise ConfigError("maxcount", f"must be a positive integer, got {maxcount}", fix="--maxcount 2000")

    def fill(tmp: str) -> dict:
        return {
            "source": source.name,
            "source_spec": _spec(source),
            "num_classes": int(source.num_classes),
            "class_names": list(source.class_names),
            "channels": int(source.channels),
            "splits": {split: _write_split(source, split, tmp, int(maxcount)) for split in splits},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "barlab_version": _version(),
        }

    return write_shard_folder(out_dir, fill)


def read_manifest(out_dir: str) -> dict | None:
    """The manifest of a finished image shard folder, or None if it has none. Raises DataError if unreadable."""
    return read_shard_manifest(out_dir, ("num_classes", "channels", "class_names"), kind=None,
                               fix="delete the folder and re-run the sharding")


def ensure_shards(out_dir: str, source: ImageSource | None = None, maxcount: int = 2000) -> dict:
    """Return the manifest of ``out_dir``, first writing the shards from ``source`` if it has none.

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
                manifest = write_shards(source, out_dir, maxcount=maxcount)
    if source is not None and (manifest.get("source"), manifest.get("source_spec", {})) != (source.name, _spec(source)):
        log.warning("%s holds shards of %r %s but data.source is %r %s; using the existing shards "
                    "(delete the folder or change data.shards_dir to rebuild them)", out_dir, manifest.get("source"),
                    manifest.get("source_spec"), source.name, _spec(source))
    return manifest
