"""``python -m barlab.export split=val``: real images of a split as PNGs + ADM npz.

    python -m barlab.export split=val out_dir=real_val
    python -m barlab.evaluate samples=real_val/images        # FID of real images: near zero

Images go through the evaluation transform (the same resize as training) and are rounded to uint8,
exactly as generated samples are, so real and generated sets are scored alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from barlab.cli import hydra_tool
from barlab.config.instantiate import instantiate_checked
from barlab.metrics.classifier_training import dataset_name
from barlab.utils.image_grid import float_to_uint8
from barlab.utils.image_sets import write_npz, write_png_folder


def run(cfg: DictConfig) -> dict:
    datamodule = instantiate_checked(cfg.data, "data")
    out_dir = Path(str(cfg.out_dir)) if cfg.out_dir else Path(str(cfg.paths.data_dir)) / "export" / \
        f"{dataset_name(cfg)}_{cfg.split}"
    images, labels, index = [], [], 0
    for batch in datamodule.eval_dataset(str(cfg.split), cfg.max_samples, batch_size=500):
        chunk, chunk_labels = float_to_uint8(batch["image"]), batch["label"]
        if cfg.png:
            write_png_folder(out_dir / "images", chunk, chunk_labels, start=index)
        images.append(chunk)
        labels.append(chunk_labels)
        index += chunk.shape[0]
    npz = write_npz(out_dir / "images.npz", torch.cat(images), torch.cat(labels))
    summary = {"split": str(cfg.split), "num_images": index, "npz": str(npz),
               "png_dir": str(out_dir / "images") if cfg.png else None}
    print(json.dumps(summary, indent=2))
    return summary


main = hydra_tool("export", run)

if __name__ == "__main__":
    main()
