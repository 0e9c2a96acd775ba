"""Atomic file writes: a reader never sees a half-written file.

Each writer puts the bytes into a temporary file in the destination folder and then
``os.replace``s it onto the final name, which is atomic on POSIX file systems. A write that runs
out of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) removes its temporary file and raises
:class:`barlab.errors.DiskFull` naming the file; the destination keeps its previous contents.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from barlab.errors import CheckpointError, DiskFull

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full_cause(err: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` behind ``err``, if any.

    Follows ``__cause__`` / ``__context__``: ``torch.save`` reports a failed write as a
    ``RuntimeError`` (``unexpected pos ...``) whose context is the ``OSError``.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn an out-of-space error raised inside the block into one-line :class:`DiskFull` naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        cause = disk_full_cause(err)
        if cause is None:
            raise
        raise DiskFull(str(path), cause.strerror or errno.errorcode.get(cause.errno, "no space")) from err


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike, mode: str, tmp: str | os.PathLike | None = None) -> Iterator[Any]:
    """Write ``path`` through a temporary file in its folder: the block writes to the yielded handle;
    afterwards the file is synced and ``os.replace``d onto ``path``; on any error it is removed and
    ``path`` keeps its previous contents. ``tmp``: the temporary file's name (default: a fresh hidden
    ``.<name>.*.tmp``)."""
    path = Path(path)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        handle = os.fdopen(fd, mode)
    else:
        handle = open(tmp, mode)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(path, mode) as handle:
            write(handle)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the file ``source`` at ``target`` atomically: a hard link, or a copy across file systems."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    with disk_full_as_error(target):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    return target


def link_folder(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make ``target`` a symbolic link to the folder ``source`` (atomically), unless ``target`` exists."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(os.path.abspath(source), tmp, target_is_directory=True)
        os.replace(tmp, target)
    return target


def load_torch_file(path: str | os.PathLike, label: str, fix: str, map_location: Any = "cpu",
                    mmap: bool = False) -> Any:
    """``torch.load`` a file that ``torch.save`` wrote; anything else is one-line :class:`CheckpointError`.

    ``label`` names the file in the message (``"ckpt_path=<path>"``), ``fix`` is the remedy. A text
    file, a truncated copy or an interrupted save is recognised from the zip container before the
    unpickler runs. ``mmap=True`` reads only the pickled structure up front (cheap checks of big
    checkpoints). ``weights_only=False``: barlab's own files hold configs, and Lightning's hold
    loop and callback states.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise CheckpointError(f"{label}: cannot be opened ({err.strerror or err}) (fix: {fix})") from None
    if not is_zip:
        what = ("it is cut short (a truncated copy or an interrupted save)" if magic == b"PK\x03\x04"
                else "it is not a checkpoint (not a file written by torch.save)")
        raise CheckpointError(f"{label}: {what} (fix: {fix})")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as err:  # a damaged archive member, a class that no longer exists, ...
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{label}: cannot be read ({type(err).__name__}: {reason}) (fix: {fix})") from None


def describe_payload(payload: Any) -> str:
    """What a loaded torch file is, for messages: a barlab export, a Lightning checkpoint of a stage, ..."""
    if isinstance(payload, dict):
        fmt = payload.get("format")
        if isinstance(fmt, str) and fmt.startswith("barlab."):
            kind = fmt.split("/")[0].removeprefix("barlab.")
            return f"a barlab {kind} file ({kind}.pt)"
        if "state_dict" in payload and any(k.startswith("pytorch-lightning") for k in payload):
            stage = (payload.get("barlab") or {}).get("stage") if isinstance(payload.get("barlab"), dict) else None
            return f"a Lightning checkpoint of the {stage} stage" if stage else "a Lightning checkpoint"
        return "a dict without barlab's format marker"
    return f"a pickled {type(payload).__name__}, not a barlab file"


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
