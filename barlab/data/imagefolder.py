"""An ImageNet-style folder tree as a source: ``root/<class name>/<image file>``.

Class folders are sorted by name and numbered 0..C-1. The val split is either ``val_root``
(same class folders) or a deterministic ``val_fraction`` of each class of ``root``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Iterator

from PIL import Image

from barlab.data.source import check_split, sample_key
from barlab.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def _class_dirs(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    """Sorted paths of the image files directly inside ``folder`` (by extension, case-insensitive)."""
    return sorted(
        e.path for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def shrink_to(img: Image.Image, max_size: int | None) -> Image.Image:
    """Downscale (bicubic) so the shorter side is ``max_size``; images already small enough are kept."""
    if max_size is None or min(img.size) <= max_size:
        return img
    w, h = img.size
    scale = max_size / min(w, h)
    size = (max(max_size, round(w * scale)), max(max_size, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


class ImageFolderSource:
    """Source over ``root/<class>/<img>``; images RGB (``channels=3``), labels by sorted class name.

    Args:
        root: folder with one sub-folder per class (the train split, minus val if no ``val_root``).
        val_root: optional folder with the same class sub-folders, used as the val split.
        val_fraction: share of each class of ``root`` held out as val when ``val_root`` is None.
        max_size: if set, images are downscaled so their shorter side is ``max_size`` (keeps shards small).
        seed: seed of the deterministic val hold-out.

    Unreadable image files are skipped with a warning and counted in ``self.skipped[split]``.
    """

    name = "imagefolder"
    channels = 3

    def __init__(self, root: str, val_root: str | None = None, val_fraction: float = 0.02,
                 max_size: int | None = None, seed: int = 0):
        self.root = os.path.expanduser(str(root))
        self.val_root = os.path.expanduser(str(val_root)) if val_root is not None else None
        if not os.path.isdir(self.root):
            raise ConfigError("root", f"{root!r} is not a folder", fix="root=/path/to/train")
        self.class_names = _class_dirs(self.root)
        if not self.class_names:
            raise ConfigError("root", f"{root!r} has no class sub-folders (expected root/<class>/<image>)",
                              fix="point it at the folder that holds one sub-folder per class")
        if self.val_root is not None:
            if not os.path.isdir(self.val_root):
                raise ConfigError("val_root", f"{val_root!r} is not a folder",
                                  fix="val_root=null to hold out val_fraction of root")
            missing = sorted(set(_class_dirs(self.val_root)) - set(self.class_names))
            if missing:
                raise ConfigError("val_root", f"class folders {missing[:5]} are not in root",
                                  fix="use the same class folder names in root and val_root")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}", fix="val_fraction=0.02")
        if max_size is not None and int(max_size) < 1:
            raise ConfigError("max_size", f"must be a positive integer or null, got {max_size}", fix="max_size=null")
        self.num_classes = len(self.class_names)
        self.val_fraction = float(val_fraction)
        self.max_size = None if max_size is None else int(max_size)
        self.seed = int(seed)
        self.skipped = {"train": 0, "val": 0}
        self._files: dict[str, list[tuple[str, int]]] | None = None

    def files(self, split: str) -> list[tuple[str, int]]:
        """``[(path, label), ...]`` of ``split``, deterministic order (class, then file name)."""
        if self._files is None:
            train, val = [], []
            for label, cls in enumerate(self.class_names):
                paths = _image_files(os.path.join(self.root, cls))
                if self.val_root is None:
                    n_val = round(len(paths) * self.val_fraction)
                    if self.val_fraction > 0 and len(paths) >= 2:
                        n_val = min(max(n_val, 1), len(paths) - 1)
                    held = set(random.Random(self.seed * 1_000_003 + label).sample(range(len(paths)), n_val))
                    val += [(p, label) for i, p in enumerate(paths) if i in held]
                    train += [(p, label) for i, p in enumerate(paths) if i not in held]
                else:
                    train += [(p, label) for p in paths]
                    val_dir = os.path.join(self.val_root, cls)
                    if os.path.isdir(val_dir):
                        val += [(p, label) for p in _image_files(val_dir)]
            self._files = {"train": train, "val": val}
        return self._files[check_split(split)]

    def spec(self) -> dict:
        """Settings that change the data (stored in the manifest to detect stale shards)."""
        return {"root": os.path.abspath(self.root), "val_root": self.val_root and os.path.abspath(self.val_root),
                "val_fraction": self.val_fraction, "max_size": self.max_size, "seed": self.seed}

    def num_samples(self, split: str) -> int:
        """Number of image files in ``split`` (unreadable ones included)."""
        return len(self.files(split))

    def iter_samples(self, split: str) -> Iterator[tuple[str, Image.Image, int]]:
        """Yield ``(key, RGB image, label)``; unreadable files are logged, counted and skipped."""
        return self.iter_range(split, 0, len(self.files(split)))

    def iter_range(self, split: str, start: int, stop: int) -> Iterator[tuple[str, Image.Image, int]]:
        """The samples at positions ``[start, stop)`` of ``split`` (only those files are read); an unreadable
        file is logged, counted and skipped, leaving a hole."""
        for i, (path, label) in enumerate(self.files(split)[start:stop], start=start):
            try:
                with Image.open(path) as raw:
                    img = raw.convert("RGB")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self.skipped[split] += 1
                log.warning("skipping unreadable image %s: %s", path, err)
                continue
            yield sample_key(split, i), shrink_to(img, self.max_size), label
