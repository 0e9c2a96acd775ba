"""Image data for barlab: sources -> WebDataset tar shards -> Lightning loaders.

Public API (torch/lightning-dependent names are imported lazily, so the sharding CLI starts fast)::

    read_idx(path) -> np.ndarray; write_idx(path, array)
    FashionMNISTSource(idx_dir=None, download_dir=None, allow_download=True)
    ImageFolderSource(root, val_root=None, val_fraction=0.02, max_size=None, seed=0)
    SyntheticSource(num_train=512, num_val=128, image_size=16, num_classes=4, channels=3, seed=0)
    write_shards(source, out_dir, maxcount=2000, splits=("train", "val")) -> manifest dict
    ensure_shards(out_dir, source=None, maxcount=2000) -> manifest dict; read_manifest(out_dir)
    ImageTransform(image_size, channels, train, random_crop=True, flip=True)
    ImageShardDataModule(shards_dir, source=None, image_size=32, ...)  # batches: image/label/skipped
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageSource": "source", "SPLITS": "source", "sample_key": "source",
    "read_idx": "idx", "write_idx": "idx",
    "FashionMNISTSource": "fashion_mnist", "ImageFolderSource": "imagefolder", "SyntheticSource": "synthetic",
    "write_shards": "image_shards", "ensure_shards": "image_shards", "read_manifest": "image_shards",
    "ImageTransform": "transforms", "to_tensor": "transforms",
    "ImageShardDataModule": "image_datamodule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'barlab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"barlab.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
