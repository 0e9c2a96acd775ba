"""A folder of WebDataset tar shards plus its manifest: the layout images and tokens share.

Layout of a finished folder::

    folder/train-000000.tar ...   at most ``maxcount`` samples each, members ``KEY.<ext>``
    folder/val-000000.tar ...
    folder/manifest.json          written last: {"splits": {split: {"num_samples", "shards",
                                  "shard_sizes"}}, ...}; the folder is complete iff it exists

:func:`write_shard_folder` builds the folder under a temporary sibling name and renames it into
place when complete, so a crashed or killed writer never leaves a folder that looks finished; a
full disk raises :class:`barlab.errors.DiskFull` after the temporary folder is removed. With
``resumable=True`` the folder is built in the fixed sibling :func:`partial_dir` instead, which a
failure other than a full disk leaves in place, so that a re-run can keep what was finished.
:func:`read_shard_manifest` reads the manifest back with a schema check.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from typing import Callable

import webdataset as wds

from barlab.errors import ConfigError, DataError
from barlab.utils.io import disk_full_as_error, disk_full_cause, replaced_atomically

MANIFEST = "manifest.json"
# fixed member metadata: equal samples give byte-identical tars
TAR_OPTIONS = {"user": "", "group": "", "mode": 0o444, "encoder": False, "mtime": 0}


class SplitShards:
    """Writes one split's samples into ``{split}-{i:06d}.tar`` files of at most ``maxcount`` samples,
    through ``webdataset.ShardWriter``.

    ``add(key, members)`` writes ``KEY.<ext>`` for each ``ext -> bytes`` of ``members`` (in sorted
    ``ext`` order, by ``TarWriter``); ``close()`` returns the manifest entry
    ``{"num_samples", "shards", "shard_sizes"}``. Members carry fixed metadata (mtime 0, mode 0444,
    no owner names), so equal inputs give byte-identical shards. The ShardWriter is opened on the
    first sample (it creates its first file when built), so an empty split writes no file. Use as a
    context manager so the open tar is closed on errors too.
    """

    def __init__(self, folder: str, split: str, maxcount: int):
        self.folder, self.split, self.maxcount = folder, split, int(maxcount)
        self.shards: list[str] = []
        self.sizes: list[int] = []
        self._writer: wds.ShardWriter | None = None

    def _finished(self, path: str) -> None:
        """ShardWriter's ``post`` hook: a shard is complete (its sample count is still the writer's)."""
        self.shards.append(os.path.basename(path))
        self.sizes.append(self._writer.count)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self._writer is None:
            pattern = os.path.join(self.folder.replace("%", "%%"), f"{self.split}-%06d.tar")
            self._writer = wds.ShardWriter(pattern, maxcount=self.maxcount, post=self._finished, verbose=0,
                                           **TAR_OPTIONS)
        self._writer.write({"__key__": key, **members})

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.finish()          # closes the last shard and runs ``post`` on it
            self._writer = None

    def close(self) -> dict:
        self._close_writer()
        return {"num_samples": sum(self.sizes), "shards": self.shards, "shard_sizes": self.sizes}

    def __enter__(self) -> "SplitShards":
        return self

    def __exit__(self, *exc) -> None:
        self._close_writer()


def _replace(tmp: str, out_dir: str) -> None:
    """Rename the finished ``tmp`` to ``out_dir``; a previous ``out_dir`` is moved aside, then removed."""
    old = None
    if os.path.isdir(out_dir):
        old = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f".{os.path.basename(out_dir)}.old-")
        os.rename(out_dir, os.path.join(old, "x"))
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tar(path: str, samples) -> int:
    """Write ``samples`` (dicts ``{"__key__": KEY, ext: bytes, ...}``) as the tar ``path``, with
    :data:`TAR_OPTIONS`; returns the number of samples. The tar is written as ``path + ".tmp"``,
    synced, then renamed, so ``path`` exists only complete."""
    count = 0
    with replaced_atomically(path, "wb", tmp=path + ".tmp") as f:
        with wds.TarWriter(f, **TAR_OPTIONS) as tar:
            for sample in samples:
                tar.write(sample)
                count += 1
    return count


def partial_dir(out_dir: str) -> str:
    """The in-progress folder of a resumable write of ``out_dir``: the sibling ``.<name>.partial``."""
    parent, base = os.path.split(os.path.abspath(os.path.expanduser(str(out_dir))))
    return os.path.join(parent, f".{base}.partial")


def count_samples(path: str) -> int:
    """Samples in a finished shard: its distinct member keys (``KEY.ext``)."""
    with tarfile.open(path) as tar:
        return len({name.split(".", 1)[0] for name in tar.getnames()})


def split_entry(folder: str, shards: list[tuple[str, int]]) -> dict:
    """A split's manifest entry ``{"num_samples", "shards", "shard_sizes"}`` from its finished shards
    ``(name, samples)`` in ``folder``, in order; a shard with no sample (every one skipped as unreadable)
    is deleted and left out."""
    names, sizes = [], []
    for name, count in shards:
        if count:
            names.append(name)
            sizes.append(count)
        else:
            os.remove(os.path.join(folder, name))
    return {"num_samples": sum(sizes), "shards": names, "shard_sizes": sizes}


def write_shard_folder(out_dir: str, fill: Callable[[str], dict], resumable: bool = False) -> dict:
    """Build a shard folder at ``out_dir`` atomically; returns its manifest.

    ``fill(tmp)`` writes the shards into the temporary folder ``tmp`` and returns the manifest,
    which is then written as ``manifest.json``. An existing ``out_dir`` is replaced if it is empty
    or holds a previous shard folder (has a manifest); any other non-empty folder raises
    ConfigError naming ``out_dir`` (foreign files are never deleted). ``resumable``: ``tmp`` is
    :func:`partial_dir` (created if missing, else handed to ``fill`` with what an earlier attempt
    left there) and is kept when ``fill`` fails, unless the disk is full; ``fill`` decides what of it
    to reuse.
    """
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ConfigError("out_dir", f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it",
                          fix="choose a new or empty folder")
    with disk_full_as_error(out_dir):
        parent, base = os.path.split(out_dir)
        os.makedirs(parent, exist_ok=True)
        if resumable:
            tmp = partial_dir(out_dir)
            os.makedirs(tmp, exist_ok=True)
        else:
            tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
        try:
            manifest = fill(tmp)
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
            os.chmod(tmp, 0o755)  # mkdtemp made it private
            _replace(tmp, out_dir)
        except BaseException as err:
            if not resumable or disk_full_cause(err) is not None:  # a full disk: free it
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def read_shard_manifest(folder: str, keys: tuple[str, ...], kind: str | None, fix: str) -> dict | None:
    """The manifest of a finished shard folder, or None if it has none.

    Checks that every split has ``num_samples`` and ``shards``, that the top level has ``keys``
    and, unless ``kind`` is None, that ``manifest["kind"] == kind``. Raises DataError (ending in
    ``fix``) if the manifest is unreadable or fails the check.
    """
    path = os.path.join(os.path.expanduser(str(folder)), MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        for split in manifest["splits"].values():
            split["num_samples"], split["shards"]  # noqa: B018 - schema check
        for key in keys:
            manifest[key]  # noqa: B018
        if kind is not None and manifest.get("kind") != kind:
            raise ValueError(f"kind is {manifest.get('kind')!r}, not {kind!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err!r}); {fix}") from None
    return manifest
