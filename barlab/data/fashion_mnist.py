"""Fashion-MNIST as a source: 60k train / 10k val grayscale 28x28 images, 10 classes.

The four IDX files are looked up, in order, in
  1. ``idx_dir`` (explicit; a missing or incomplete folder fails in the constructor),
  2. ``DEBIAN_DIR`` (``apt-get install dataset-fashion-mnist``),
  3. ``download_dir`` after downloading them from ``BASE_URL`` (only if ``allow_download``).
Lookup and download are lazy: they happen on the first ``iter_samples`` / ``num_samples``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
from typing import Iterator

import numpy as np
from PIL import Image

from barlab.data.idx import read_idx, read_idx_shape
from barlab.data.source import check_split, sample_key
from barlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEFAULT_DOWNLOAD_DIR = "~/.cache/barlab/fashion-mnist"
DOWNLOAD_TIMEOUT_S = 20.0
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# split -> (images file, labels file), without the optional ".gz"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_NAMES = [name for pair in FILES.values() for name in pair]
HOW_TO_GET = (
    "get Fashion-MNIST with `apt-get install dataset-fashion-mnist`, "
    "or set data.source.idx_dir=/path/to/idx (a folder with the 4 IDX files), "
    f"or download the 4 .gz files from {BASE_URL}"
)


def find_idx_files(folder: str) -> dict[str, str] | None:
    """Map each of the 4 IDX base names to its path in ``folder`` (``.gz`` or raw); None if any is missing."""
    found = {}
    for name in _ALL_NAMES:
        for candidate in (name + ".gz", name):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                found[name] = path
                break
        else:
            return None
    return found


def download_idx_files(folder: str, base_url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> dict[str, str]:
    """Download the 4 ``.gz`` files from ``base_url`` (default ``BASE_URL``) into ``folder``.

    Each file is written to a temporary name, checked to parse as IDX, then ``os.replace``d into place.
    """
    base_url = base_url or BASE_URL
    os.makedirs(folder, exist_ok=True)
    for name in _ALL_NAMES:
        final = os.path.join(folder, name + ".gz")
        if os.path.isfile(final):
            continue
        url = base_url + name + ".gz"
        log.info("downloading %s", url)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.part-", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            read_idx(tmp)  # raises DataError if the download is damaged
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    found = find_idx_files(folder)
    assert found is not None
    return found


class FashionMNISTSource:
    """Fashion-MNIST source. Images are PIL mode "L", 28x28; labels 0..9.

    Args:
        idx_dir: folder holding the 4 IDX files (gz or raw); checked in the constructor.
        download_dir: where to download the files if neither idx_dir nor DEBIAN_DIR has them.
        allow_download: set False to never touch the network.
    """

    name = "fashion-mnist"
    class_names = CLASS_NAMES
    num_classes = 10
    channels = 1

    def __init__(self, idx_dir: str | None = None, download_dir: str | None = None, allow_download: bool = True):
        self.idx_dir = idx_dir
        self.download_dir = os.path.expanduser(download_dir or DEFAULT_DOWNLOAD_DIR)
        self.allow_download = allow_download
        self._paths: dict[str, str] | None = None
        if idx_dir is not None:
            self._paths = find_idx_files(os.path.expanduser(idx_dir))
            if self._paths is None:
                expected = ", ".join(n + "[.gz]" for n in _ALL_NAMES)
                raise ConfigError(
                    "idx_dir",
                    f"{idx_dir!r} does not hold the 4 Fashion-MNIST IDX files ({expected})",
                    fix="point it at the folder with those files, or unset it to use /usr/share/datasets/fashion-mnist",
                )

    def paths(self) -> dict[str, str]:
        """Locate (and if needed download) the IDX files; base name -> path. Raises DataError."""
        if self._paths is None:
            self._paths = find_idx_files(DEBIAN_DIR) or find_idx_files(self.download_dir)
        if self._paths is None and self.allow_download:
            try:
                self._paths = download_idx_files(self.download_dir)
            except (OSError, DataError) as err:  # URLError and timeouts are OSErrors
                log.warning("Fashion-MNIST download failed: %s", err)
        if self._paths is None:
            raise DataError(f"Fashion-MNIST IDX files not found: {HOW_TO_GET}")
        return self._paths

    def spec(self) -> dict:
        """Settings that change the data: none (the files are the same wherever they are found)."""
        return {}

    def num_samples(self, split: str) -> int:
        """Number of images in ``split`` (reads only the IDX header)."""
        return read_idx_shape(self.paths()[FILES[check_split(split)][0]])[0]

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Arrays of ``split``: images uint8 (N, 28, 28), labels int64 (N,). Raises DataError if inconsistent."""
        images_name, labels_name = FILES[check_split(split)]
        paths = self.paths()
        images, labels = read_idx(paths[images_name]), read_idx(paths[labels_name])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{paths[images_name]}: images {images.shape} do not match labels {labels.shape}; re-download them"
            )
        labels = labels.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(f"{paths[labels_name]}: labels outside 0..9; re-download it")
        return images.astype(np.uint8, copy=False), labels

    def iter_samples(self, split: str) -> Iterator[tuple[str, Image.Image, int]]:
        """Yield ``(key, image "L" 28x28, label)`` for every sample of ``split``, in file order."""
        return self.iter_range(split, 0, self.num_samples(split))

    def iter_range(self, split: str, start: int, stop: int) -> Iterator[tuple[str, Image.Image, int]]:
        """The samples at positions ``[start, stop)`` of ``split``, in file order."""
        images, labels = self.load(split)
        for i in range(start, min(stop, len(labels))):
            yield sample_key(split, i), Image.fromarray(images[i]), int(labels[i])
