"""Read tar shards into sample dicts: WebDataset's key grouping over a counted, per-shard tar read.

``TarSamples`` is a pipeline stage: a ``{"url": path}`` stream in, ``{"__key__", "__url__",
"<ext>": bytes, ...}`` samples out, members grouped by key (the file name up to its first dot) by
``webdataset.tariterators.group_by_keys``. The tar members come from one of two readers:

- ``"tarstream"`` (the default): :func:`barlab.data.tar_members.iter_tar`;
- ``"webdataset"``: ``webdataset.tariterators.tar_file_expander``, WebDataset's own (``tarfile``).

Both give the same samples and skips (``tests/test_data.py`` pins it); the default is kept as it
is faster end to end (``python -m barlab.bench bench=tar_reader``: the token loader 2.9-3.4x, the
16-pixel image loader 1.6-1.8x, reading alone 4.2-4.6x). What this stage adds, one shard at a time:

- a WebDataset exception handler that counts: a shard that cannot be opened, is damaged, or ends
  early (cut inside a member, or at a member boundary so that its end-of-archive marker is
  missing) counts one skip, logged as ``skipping rest of shard <path>``, and the rest of that
  shard is skipped (the first error stops the shard, so it is counted once);
- the sample that was being read when the shard ended is dropped, as it may be incomplete.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Iterable, Iterator

from webdataset.tariterators import group_by_keys, tar_file_expander

from barlab.data.loader_stages import SkipCounter
from barlab.data.tar_members import iter_tar

READERS = ("tarstream", "webdataset")


class EndMarkerCheck:
    """A read-only file wrapper that raises ``tarfile.ReadError`` when a read finds nothing left.

    ``tarfile`` reads a tar stream up to its end-of-archive marker (the zero blocks every tar and
    WebDataset writer ends with) and never past it, so a read at end of file means the shard was
    cut; ``tarfile`` alone takes a cut at a member boundary for a normal end.
    """

    def __init__(self, f: BinaryIO, url: str):
        self.f, self.url = f, url

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if size != 0 and not data:
            raise tarfile.ReadError("truncated tar: no end-of-archive marker")
        return data

    def __repr__(self) -> str:  # WebDataset appends the stream to its error messages
        return self.url


class FirstError:
    """A WebDataset exception handler that keeps the first exception and stops (returns False)."""

    def __init__(self):
        self.reason: str | None = None

    def __call__(self, exn: BaseException) -> bool:
        if self.reason is None:
            # WebDataset appends the stream and url to ``args``; the message is the first
            message = exn.args[0] if len(exn.args) > 1 and not isinstance(exn, OSError) else exn
            self.reason = f"{type(exn).__name__}: {message}"
        return False


def _tarstream_members(f: BinaryIO, url: str, handler: FirstError) -> Iterator[dict]:
    """``iter_tar`` as WebDataset file records; an error goes to ``handler`` and ends the shard."""
    try:
        for name, data in iter_tar(f):
            yield {"fname": name, "data": data, "__url__": url}
    except (OSError, EOFError, ValueError, tarfile.TarError) as err:
        handler(err)


def _webdataset_members(f: BinaryIO, url: str, handler: FirstError) -> Iterator[dict]:
    """WebDataset's ``tarfile``-based member iterator, with the end-of-archive check."""
    return tar_file_expander([{"url": url, "stream": EndMarkerCheck(f, url)}], handler=handler, eof_value=None)


class TarSamples:
    """``{"url": path}`` stream → sample dicts; bad shards are counted in ``counter`` (module docstring)."""

    def __init__(self, counter: SkipCounter, reader: str = "tarstream"):
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        self.counter = counter
        self._members = _tarstream_members if reader == "tarstream" else _webdataset_members

    def _shard(self, url: str) -> Iterator[dict]:
        handler = FirstError()
        try:
            f = open(url, "rb", buffering=1 << 20)
        except OSError as err:
            handler(err)
        else:
            with f:
                held = None  # one sample behind: the last one is dropped if the shard ends in an error
                for sample in group_by_keys(self._members(f, url, handler), handler=handler):
                    if held is not None:
                        yield held
                    held = sample
                if held is not None and handler.reason is None:
                    yield held
        if handler.reason is not None:
            self.counter.skip(f"rest of shard {url}", handler.reason)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for item in src:
            yield from self._shard(item["url"])
