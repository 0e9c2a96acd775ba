"""Image transforms with PIL and torch only (no torchvision).

Every function takes a PIL image; ``to_tensor`` returns a float32 tensor (C, H, W) in [-1, 1].
Randomness comes from an explicit ``random.Random`` so each loader worker can seed its own.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize (bicubic, up or down) so the shorter side is ``size``, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central ``size`` x ``size`` crop (the image must be at least that large)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Uniformly placed ``size`` x ``size`` crop."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    left, top = rng.randint(0, max(w - size, 0)), rng.randint(0, max(h - size, 0))
    return img.crop((left, top, left + size, top + size))


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def pil_to_uint8(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image -> uint8 array (channels, H, W). Gray is repeated to RGB; RGB is converted to "L"."""
    if channels == 1:
        img = img if img.mode == "L" else img.convert("L")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.broadcast_to(arr, (3, *arr.shape[1:])) if channels == 3 and arr.shape[0] == 1 else arr


def uint8_to_float(arr: np.ndarray) -> torch.Tensor:
    """uint8 array (any shape) -> float32 tensor in [-1, 1] (0 -> -1, 255 -> 1).

    Done in numpy on purpose: tiny torch ops pay intra-op thread start-up costs (ms on a busy CPU).
    """
    out = np.asarray(arr, dtype=np.float32)
    out = out.copy() if out is arr or not out.flags.writeable else out
    np.multiply(out, np.float32(2.0 / 255.0), out=out)
    np.subtract(out, np.float32(1.0), out=out)
    return torch.from_numpy(out)


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> float32 (channels, H, W) in [-1, 1]. Gray is repeated to RGB; RGB is converted to "L"."""
    return uint8_to_float(pil_to_uint8(img, channels))


class ImageTransform:
    """PIL image -> float32 (channels, image_size, image_size) in [-1, 1].

    train: resize the shorter side to ``image_size`` (only if different), random crop
    (centre crop if ``random_crop=False``), random horizontal flip (if ``flip``).
    eval (``train=False``): resize + centre crop, no flip.
    """

    def __init__(self, image_size: int, channels: int, train: bool, random_crop: bool = True, flip: bool = True):
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.train = bool(train)
        self.random_crop = bool(random_crop)
        self.flip = bool(flip)
        self._rng = random.Random(0)

    def array(self, img: Image.Image, rng: random.Random | None = None) -> np.ndarray:
        """Transformed image as uint8 (channels, image_size, image_size); the loaders batch these."""
        rng = rng or self._rng
        img = resize_shorter(img, self.image_size)
        if self.train and self.random_crop:
            img = random_crop(img, self.image_size, rng)
        else:
            img = center_crop(img, self.image_size)
        arr = pil_to_uint8(img, self.channels)
        if self.train and self.flip and rng.random() < 0.5:
            arr = arr[:, :, ::-1]
        return arr

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Transformed image as float32 (channels, image_size, image_size) in [-1, 1]."""
        return uint8_to_float(self.array(img, rng))
