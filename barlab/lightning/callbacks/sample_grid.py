"""Class-conditional sample grid PNG at every validation: one row per class."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch

from barlab.lightning.callbacks.image_log import log_image
from barlab.utils.image_grid import make_grid, save_png, upscale


class SampleGrid(L.Callback):
    """Save ``<dirpath>/step_XXXXXX.png`` (and a copy at ``latest``) after each validation, and send
    the grid to the image loggers (wandb, TensorBoard) as ``samples/grid``.

    Row c holds ``per_class`` samples of class c (class-balanced), drawn with a fixed seed so grids
    from different steps are comparable. The LightningModule must provide
    ``generate(labels, generator) -> images (B, C, H, W) in [-1, 1]`` and ``num_classes``.
    """

    def __init__(self, dirpath: str, latest: str | None = None, per_class: int = 8, max_classes: int = 10,
                 scale: int = 2, seed: int = 0, batch_size: int = 128):
        self.dirpath = Path(dirpath)
        self.latest = Path(latest) if latest else None
        self.per_class, self.max_classes, self.scale, self.seed = per_class, max_classes, scale, seed
        self.batch_size = batch_size
        self.last_path: Path | None = None

    @torch.no_grad()
    def render(self, pl_module: L.LightningModule):
        """The grid as an (H, W, 3) uint8 array: ``per_class`` seeded samples of each class, a row each."""
        from barlab.metrics.class_balanced import sample_class_balanced

        classes = min(pl_module.num_classes, self.max_classes)
        images, _ = sample_class_balanced(pl_module.generate, classes, self.per_class, self.batch_size,
                                          seed=self.seed, show_bar=False)
        return upscale(make_grid(images, nrow=self.per_class), self.scale)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        grid = self.render(pl_module)
        path = save_png(grid, self.dirpath / f"step_{trainer.global_step:06d}.png")
        log_image(trainer, "samples/grid", grid)
        if self.latest is not None:
            self.latest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.latest)
        self.last_path = path
