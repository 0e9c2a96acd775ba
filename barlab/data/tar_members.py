"""A fast sequential reader for tar shards (about 5x faster than ``tarfile`` on small members).

Reads POSIX ustar / GNU / pax archives as written by ``tarfile`` or ``webdataset``: regular
files are yielded as ``(name, bytes)``; directories, links and other entries are skipped; pax
``path`` records and GNU long names are honoured. Header checksums are verified, so damaged or
truncated archives raise ``tarfile.ReadError`` instead of yielding garbage.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Iterator

BLOCK = 512
_ZERO = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")


def _number(field: bytes) -> int:
    """Octal (or GNU base-256) numeric header field."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any (records are ``"<len> key=value\\n"``)."""
    pos, path = 0, None
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
        pos += length
    return path


def iter_tar(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, content)`` for each regular file of the tar stream ``f``, in order."""
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if header == _ZERO:
            return  # the end-of-archive marker
        if not header:  # tar and WebDataset writers always end with the marker: a shard cut at a member boundary
            raise tarfile.ReadError("truncated tar: no end-of-archive marker")
        if len(header) < BLOCK:
            raise tarfile.ReadError("truncated tar header")
        stored = _number(header[148:156])
        unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != unsigned and stored != unsigned - 2 * sum(b for b in header[148:156] if b >= 128):
            raise tarfile.ReadError("bad tar header checksum")
        size = _number(header[124:136])
        data = f.read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"unexpected end of data ({len(data)} of {size} bytes)")
        f.read(-size % BLOCK)
        kind = header[156:157]
        if kind in (b"L", b"x"):
            long_name = data.rstrip(b"\0").decode("utf-8") if kind == b"L" else _pax_path(data) or long_name
            continue
        if kind in _FILE_TYPES:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
                name = f"{prefix}/{name}" if prefix else name
            yield long_name or name, data
        long_name = None
