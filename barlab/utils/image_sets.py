"""Sets of images on disk: PNG folders and ADM-style ``.npz`` files, both ways.

- ADM sample / reference npz: ``arr_0`` uint8 N×H×W×3 (grayscale is repeated to three channels,
  as ADM's evaluator expects RGB); barlab adds ``arr_1`` int64 class labels when it knows them.
- PNG folder: ``<index>_class<label>.png`` (the label is optional: ``<index>.png``).

In memory an image set is uint8 (N, C, H, W) plus optional labels (N,).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from barlab.errors import DataError
from barlab.utils.io import atomic_write_bytes, replaced_atomically

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_PATTERN = re.compile(r"_class(\d+)$")


def write_npz(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """images uint8 (N, C, H, W) → ``arr_0`` N×H×W×3 (and ``arr_1`` labels), written atomically."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (use barlab.utils.image_grid.float_to_uint8), got {images.dtype}")
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    arrays = {"arr_0": rearrange(rgb, "n c h w -> n h w c").contiguous().numpy()}
    if labels is not None:
        arrays["arr_1"] = labels.to(torch.int64).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the arrays in an npz, read from their headers (no array is loaded: a 50k
    sample set is 9.8 GB)."""
    import zipfile

    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shapes[member.removesuffix(".npy")] = read(f)[0]
    return shapes


NPZ_TIME = (1980, 1, 1, 0, 0, 0)  # the members' fixed time stamp: equal arrays give byte-identical files


def write_npz_from_parts(path: str | os.PathLike, parts: list[str | os.PathLike]) -> Path:
    """Concatenate the ``arr_0`` (and ``arr_1``) of the npz files ``parts``, in order, into one npz at
    ``path``, written atomically, streaming: one part in memory at a time (50k 256-px samples are
    9.8 GB). Every part must hold images of one shape; all or none must have labels. The result reads
    like :func:`write_npz`'s (``np.load``), and equal parts give byte-identical files."""
    import zipfile

    headers = [npz_shapes(part) for part in parts]
    shapes, labelled = [h["arr_0"] for h in headers], ["arr_1" in h for h in headers]
    if not parts or len({s[1:] for s in shapes}) != 1 or len(set(labelled)) != 1:
        raise DataError(f"cannot join {len(parts)} sample parts into {path}: empty, or of mixed image sizes or labels")
    total = sum(s[0] for s in shapes)
    members = [("arr_0", np.uint8, (total, *shapes[0][1:]))] + ([("arr_1", np.int64, (total,))] if labelled[0] else [])

    def fill(handle) -> None:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, dtype, shape in members:
                info = zipfile.ZipInfo(f"{key}.npy", date_time=NPZ_TIME)
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
                    for part in parts:
                        with np.load(part, allow_pickle=False) as data:
                            member.write(np.ascontiguousarray(data[key], dtype=dtype).tobytes())

    with replaced_atomically(path, "wb") as handle:
        fill(handle)
    return Path(path)


def png_name(index: int, label: int | None) -> str:
    return f"{index:06d}.png" if label is None else f"{index:06d}_class{int(label)}.png"


def write_png_folder(folder: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor | None = None,
                     start: int = 0) -> Path:
    """images uint8 (N, C, H, W) → ``folder/<start + i>_class<label>.png`` (L or RGB PNGs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        array = image[0].numpy() if image.shape[0] == 1 else rearrange(image, "c h w -> h w c").numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        label = None if labels is None else int(labels[i])
        atomic_write_bytes(folder / png_name(start + i, label), buffer.getvalue())
    return folder


def _label_of(path: Path) -> int | None:
    match = LABEL_PATTERN.search(path.stem)
    return int(match.group(1)) if match else None


def iter_image_set(path: str | os.PathLike,
                   batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(uint8 (B, C, H, W), labels (B,) or None)`` chunks of an npz file or an image folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        labels = [_label_of(p) for p in files]
        with_labels = all(label is not None for label in labels)
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            arrays = []
            for file in chunk:
                try:
                    with Image.open(file) as img:
                        arrays.append(np.asarray(img.convert("L" if img.mode in ("L", "I;16", "1") else "RGB")))
                except OSError as err:
                    raise DataError(f"cannot read image {file}: {err}") from err
            if len({a.shape for a in arrays}) > 1:
                arrays = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays]
                if len({a.shape for a in arrays}) > 1:
                    raise DataError(f"{path}: images differ in size; resize them to one size first")
            stacked = np.stack(arrays)
            channels_first = stacked[:, None] if stacked.ndim == 3 else rearrange(stacked, "n h w c -> n c h w")
            tensor = torch.from_numpy(channels_first)
            yield tensor.contiguous(), (torch.tensor(labels[start:start + batch_size]) if with_labels else None)
        return
    if path.suffix != ".npz":
        raise DataError(f"{path}: expected an .npz file (arr_0 = N×H×W×3 uint8) or a folder of images")

    data = read_npz(path)
    if "arr_0" not in data:
        raise DataError(f"{path} has no arr_0 images (keys: {', '.join(data) or 'none'})")
    images = data["arr_0"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{path}: arr_0 must be uint8 N×H×W×3 images, got {images.dtype} {images.shape}")
    labels = data.get("arr_1")
    if labels is not None and labels.shape[0] != images.shape[0]:
        labels = None
    for start in range(0, images.shape[0], batch_size):
        chunk = images_to_tensor(images[start:start + batch_size])
        yield chunk, (None if labels is None else torch.from_numpy(labels[start:start + batch_size]).long())

def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:  # truncated / not an npz
        raise DataError(f"cannot read {path} as .npz: {err}") from err


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C (npz layout) → uint8 (N, C, H, W)."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
