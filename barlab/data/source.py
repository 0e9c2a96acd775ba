"""What a data source is: the protocol every source object follows, plus small shared helpers.

A source produces raw samples for the splits ``train`` and ``val``::

    source.name: str                 # "fashion-mnist", "imagefolder", "synthetic"
    source.class_names: list[str]    # label i is class_names[i]
    source.num_classes: int
    source.channels: int             # 1 = grayscale ("L"), 3 = RGB
    source.iter_samples(split) -> Iterator[tuple[str, PIL.Image.Image, int]]   # (key, image, label)
    source.num_samples(split) -> int
    source.spec() -> dict            # the settings that change the data (stored in the manifest)

Keys are unique within a source and filename-safe (no dots), e.g. ``train_0000123``.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

from PIL import Image

from barlab.errors import ConfigError

SPLITS = ("train", "val")


@runtime_checkable
class ImageSource(Protocol):
    """Structural type of a source (see the module docstring)."""

    name: str
    class_names: list[str]
    num_classes: int
    channels: int

    def iter_samples(self, split: str) -> Iterator[tuple[str, Image.Image, int]]: ...

    # optional: ``iter_range(split, start, stop)``, the samples at positions [start, stop) of ``split``
    # (the parallel shard writer reads each shard's slice with it; without it, iter_samples is sliced)

    def num_samples(self, split: str) -> int: ...

    def spec(self) -> dict: ...


def sample_key(split: str, index: int) -> str:
    """Filename-safe key of sample ``index`` of ``split``: ``sample_key("train", 123) == "train_0000123"``."""
    return f"{split}_{index:07d}"


def check_split(split: str) -> str:
    """Return ``split`` if it is ``train`` or ``val``, else raise ConfigError."""
    if split not in SPLITS:
        raise ConfigError("split", f"must be one of {list(SPLITS)}, got {split!r}", fix="split=train")
    return split
