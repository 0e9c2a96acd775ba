"""Read and write IDX files (the MNIST / Fashion-MNIST container format).

An IDX file is a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the array data, big-endian, C order. Files ending in ``.gz`` are
gzip-compressed. Fashion-MNIST images are ``uint8 (N, 28, 28)``, labels ``uint8 (N,)``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from barlab.errors import DataError

# IDX dtype code -> big-endian numpy dtype.
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {("u", 1): 0x08, ("i", 1): 0x09, ("i", 2): 0x0B, ("i", 4): 0x0C, ("f", 4): 0x0D, ("f", 8): 0x0E}


def _open(path: str):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _parse_header(path: str, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header length) from the first bytes of an IDX file."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _CODE_TO_DTYPE:
        raise DataError(f"{path}: not an IDX file (bad magic {head[:4].hex() or 'empty'}); re-download it")
    ndim = head[3]
    end = 4 + 4 * ndim
    if len(head) < end:
        raise DataError(f"{path}: truncated IDX header; re-download the file")
    shape = struct.unpack(f">{ndim}I", head[4:end])
    return _CODE_TO_DTYPE[head[2]], tuple(int(d) for d in shape), end


def read_idx_shape(path: str) -> tuple[int, ...]:
    """Shape stored in an IDX file's header, reading only the first bytes. Raises DataError."""
    try:
        with _open(path) as f:
            head = f.read(4 + 4 * 255)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err}); re-download it") from None
    return _parse_header(path, head)[1]


def read_idx(path: str) -> np.ndarray:
    """Load a whole IDX file (gz or raw) as a native-endian array of the stored shape.

    Raises DataError naming ``path`` if the file is missing, not IDX, or truncated.
    """
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err}); re-download it") from None
    dtype, shape, start = _parse_header(path, raw)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - start < expected:
        raise DataError(
            f"{path}: truncated IDX file ({len(raw) - start} of {expected} data bytes); re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=start)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` (any shape, dtype uint8/int8/int16/int32/float32/float64) as IDX.

    gzip-compressed when ``path`` ends in ``.gz``.
    """
    array = np.asarray(array)
    code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None and array.dtype.kind == "u":
        code = _KIND_TO_CODE.get(("i", array.dtype.itemsize))
    if code is None:
        raise ValueError(f"write_idx: unsupported dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _open_write(path) as f:
        f.write(payload)


def _open_write(path: str):
    return gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb")
