"""A tiny deterministic source for tests and smoke runs: coloured shapes on a dark background.

The class of an image is visible in its content: class ``c`` draws shape ``c % 8`` (square, disc,
bars, cross, ring, triangle, diamond) in colour ``PALETTE[(3 * c) % 8]`` (grayscale: a class-dependent
brightness), at a jittered position and size. Sample ``i`` of a split is a pure function of
``(seed, split, i)``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from barlab.data.source import check_split, sample_key
from barlab.errors import ConfigError

PALETTE = np.array([
    (230, 60, 60), (60, 200, 70), (70, 110, 240), (240, 210, 50),
    (200, 70, 220), (60, 210, 220), (250, 140, 40), (245, 245, 245),
], dtype=np.int16)
SHAPES = ("square", "disc", "hbar", "vbar", "cross", "ring", "triangle", "diamond")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean (S, S) mask of ``shape`` of radius ``r`` given offsets from its centre."""
    dist2 = dx * dx + dy * dy
    hbar = (np.abs(dy) <= max(r / 3, 0.5)) & (np.abs(dx) <= r * 1.3)
    vbar = (np.abs(dx) <= max(r / 3, 0.5)) & (np.abs(dy) <= r * 1.3)
    return {
        "square": lambda: np.maximum(np.abs(dx), np.abs(dy)) <= r,
        "disc": lambda: dist2 <= r * r,
        "hbar": lambda: hbar,
        "vbar": lambda: vbar,
        "cross": lambda: hbar | vbar,
        "ring": lambda: (dist2 <= r * r) & (dist2 >= (r * 0.55) ** 2),
        "triangle": lambda: (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2),
        "diamond": lambda: np.abs(dx) + np.abs(dy) <= r,
    }[shape]()


class SyntheticSource:
    """Deterministic synthetic images: RGB (``channels=3``) or "L" (``channels=1``), ``image_size`` square."""

    name = "synthetic"

    def __init__(self, num_train: int = 512, num_val: int = 128, image_size: int = 16, num_classes: int = 4,
                 channels: int = 3, seed: int = 0):
        for name, value, low in (("num_train", num_train, 0), ("num_val", num_val, 0),
                                 ("image_size", image_size, 4), ("num_classes", num_classes, 1)):
            if int(value) < low:
                raise ConfigError(name, f"must be >= {low}, got {value}", fix=f"{name}={max(low, 4)}")
        if channels not in (1, 3):
            raise ConfigError("channels", f"must be 1 or 3, got {channels}", fix="channels=3")
        self.counts = {"train": int(num_train), "val": int(num_val)}
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.seed = int(seed)
        self.class_names = [f"{SHAPES[c % 8]}-{c}" for c in range(self.num_classes)]
        grid = np.arange(self.image_size, dtype=np.float32)
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")

    def spec(self) -> dict:
        """Settings that change the data (stored in the manifest to detect stale shards)."""
        return {"num_train": self.counts["train"], "num_val": self.counts["val"], "image_size": self.image_size,
                "num_classes": self.num_classes, "channels": self.channels, "seed": self.seed}

    def num_samples(self, split: str) -> int:
        return self.counts[check_split(split)]

    def make(self, split: str, index: int) -> tuple[Image.Image, int]:
        """Sample ``index`` of ``split``: (image, label)."""
        rng = np.random.default_rng((self.seed, 0 if split == "train" else 1, index))
        s = self.image_size
        label = int(rng.integers(self.num_classes))
        cy, cx = s / 2 - 0.5 + rng.uniform(-s / 8, s / 8, size=2)
        r = s * rng.uniform(0.22, 0.32)
        mask = _shape_mask(SHAPES[label % 8], self._xx - cx, self._yy - cy, r)
        pixels = rng.integers(0, 40, size=(s, s, 3), dtype=np.int16)
        colour = PALETTE[(3 * label) % 8] if self.channels == 3 else np.full(3, 90 + 165 * (label // 8 % 4) // 3)
        pixels[mask] = colour + rng.integers(-15, 16, size=(int(mask.sum()), 3), dtype=np.int16)
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels if self.channels == 3 else pixels[:, :, 0]), label

    def iter_samples(self, split: str) -> Iterator[tuple[str, Image.Image, int]]:
        """Yield ``(key, image, label)`` for ``num_samples(split)`` samples."""
        return self.iter_range(split, 0, self.num_samples(check_split(split)))

    def iter_range(self, split: str, start: int, stop: int) -> Iterator[tuple[str, Image.Image, int]]:
        """The samples at positions ``[start, stop)`` of ``split`` (only those are made)."""
        for i in range(start, min(stop, self.num_samples(check_split(split)))):
            img, label = self.make(split, i)
            yield sample_key(split, i), img, label
