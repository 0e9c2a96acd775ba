"""Write a source into WebDataset tar shards, atomically, with a manifest.

Layout of a finished dataset folder ``out_dir``::

    out_dir/train-000000.tar ...   members KEY.png (PNG bytes) and KEY.cls (ASCII integer label)
    out_dir/val-000000.tar ...
    out_dir/manifest.json          written last; the folder is complete iff it exists

The folder is built under a temporary sibling name and renamed into place when complete, so a
crashed or killed writer never leaves a folder that looks finished; a full disk raises
:class:`barlab.errors.DiskFull` after the temporary folder is removed. ``ensure_shards`` serialises
concurrent writers of the same folder with ``fcntl.flock`` on ``out_dir + ".lock"``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata

from barlab.data.base import SPLITS, ImageSource
from barlab.errors import ConfigError, DataError
from barlab.utils.io import disk_full_as_error
from barlab.utils.locks import exclusive_lock
from barlab.utils.progress import progress

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOG_EVERY = 10_000  # log progress every this many samples


def _version() -> str:
    try:
        return metadata.version("barlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _spec(source: ImageSource) -> dict:
    return json.loads(json.dumps(source.spec())) if hasattr(source, "spec") else {}


def add_tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """Append one file to an open tar, with fixed metadata so equal inputs give equal bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o444
    info.mtime = 0  # byte-identical shards for identical sources
    tar.addfile(info, io.BytesIO(payload))


class SplitShards:
    """Writes one split's samples into ``{split}-{i:06d}.tar`` files of at most ``maxcount`` samples.

    ``add(key, members)`` appends ``KEY.<ext>`` for each ``ext -> bytes`` in ``members``;
    ``close()`` returns the manifest entry ``{"num_samples", "shards", "shard_sizes"}``.
    Use as a context manager so the open tar is closed on errors too.
    """

    def __init__(self, folder: str, split: str, maxcount: int):
        self.folder, self.split, self.maxcount = folder, split, int(maxcount)
        self.shards: list[str] = []
        self.sizes: list[int] = []
        self._tar: tarfile.TarFile | None = None

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self._tar is None or self.sizes[-1] >= self.maxcount:
            self._close_tar()
            self.shards.append(f"{self.split}-{len(self.shards):06d}.tar")
            self.sizes.append(0)
            self._tar = tarfile.open(os.path.join(self.folder, self.shards[-1]), "w", format=tarfile.USTAR_FORMAT)
        for ext, payload in members.items():
            add_tar_member(self._tar, f"{key}.{ext}", payload)
        self.sizes[-1] += 1

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> dict:
        self._close_tar()
        return {"num_samples": sum(self.sizes), "shards": self.shards, "shard_sizes": self.sizes}

    def __enter__(self) -> "SplitShards":
        return self

    def __exit__(self, *exc) -> None:
        self._close_tar()


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

    Atomic: everything is built in a temporary sibling folder, then renamed to ``out_dir``. An
    existing ``out_dir`` is replaced if it is empty or holds a previous dataset (has a manifest);
    any other non-empty folder raises ConfigError (we never delete foreign files).
    """
    if int(maxcount) < 1:
        raise ConfigError("maxcount", f"must be a positive integer, got {maxcount}", fix="--maxcount 2000")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ConfigError("data.shards_dir",
                          f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it",
                          fix="choose a new or empty folder")
    with disk_full_as_error(out_dir):
        parent, base = os.path.split(out_dir)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
        try:
            manifest = {
                "source": source.name,
                "source_spec": _spec(source),
                "num_classes": int(source.num_classes),
                "class_names": list(source.class_names),
                "channels": int(source.channels),
                "splits": {split: _write_split(source, split, tmp, int(maxcount)) for split in splits},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "barlab_version": _version(),
            }
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
            os.chmod(tmp, 0o755)
            old = None
            if os.path.isdir(out_dir):
                old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.old-")
                os.rename(out_dir, os.path.join(old, "x"))
            os.rename(tmp, out_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def read_manifest(out_dir: str) -> dict | None:
    """The manifest of a finished dataset folder, or None if it has none. Raises DataError if unreadable."""
    path = os.path.join(os.path.expanduser(str(out_dir)), MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        for split in manifest["splits"].values():
            split["num_samples"], split["shards"]  # noqa: B018 - schema check
        manifest["num_classes"], manifest["channels"], manifest["class_names"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err!r}); delete the folder and re-run the sharding") from None
    return manifest


def ensure_shards(out_dir: str, source: ImageSource | None = None, maxcount: int = 2000) -> dict:
    """Return the manifest of ``out_dir``, first writing the shards from ``source`` if it has none.

    Safe to call from many processes at once: writers take an exclusive ``flock`` on
    ``out_dir + ".lock"``; late comers wait, then find the manifest and reuse the shards.
    """
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    manifest = read_manifest(out_dir)
    if manifest is None and source is None:
        raise ConfigError("data.shards_dir", f"{out_dir} holds no {MANIFEST}",
                          fix=f"set data.source, or run python -m barlab.data.shard fashion-mnist --out {out_dir}")
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
