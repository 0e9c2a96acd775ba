"""Reconstruction grid PNG at every validation: originals above their reconstructions."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch

from barlab.lightning.callbacks.image_log import log_image
from barlab.utils.image_grid import make_grid, save_png, upscale


class ReconstructionGrid(L.Callback):
    """Save ``<dirpath>/step_XXXXXX.png`` and a copy at ``<latest>`` after each validation, and send
    the grid to the image loggers (wandb, TensorBoard) as ``recon/grid``.

    The grid alternates a row of validation images and the row of their reconstructions.
    num_images: how many validation images (taken from the first validation batch).
    per_row: images per row. scale: nearest-neighbour enlargement for tiny images.
    The LightningModule must provide ``reconstruct(images) -> images`` (both (B, C, H, W) in [-1, 1]).
    """

    def __init__(self, dirpath: str, latest: str | None = None, num_images: int = 32,
                 per_row: int = 8, scale: int = 2):
        self.dirpath = Path(dirpath)
        self.latest = Path(latest) if latest else None
        self.num_images = num_images
        self.per_row = per_row
        self.scale = scale
        self._images: torch.Tensor | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._images is None:
            self._images = batch["image"][: self.num_images].detach()

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, self._images = self._images, None
        if images is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        recon = pl_module.reconstruct(images)
        rows = []
        for start in range(0, images.shape[0], self.per_row):
            rows += [images[start:start + self.per_row], recon[start:start + self.per_row]]
        n = images.shape[0]
        pad = (-n) % self.per_row
        if pad:  # keep originals and reconstructions aligned in their rows
            filler = torch.ones_like(images[:pad])
            rows = [torch.cat([r, filler]) if r.shape[0] < self.per_row else r for r in rows]
        grid = upscale(make_grid(torch.cat(rows), nrow=self.per_row), self.scale)
        path = save_png(grid, self.dirpath / f"step_{trainer.global_step:06d}.png")
        log_image(trainer, "recon/grid", grid)
        if self.latest is not None:
            self.latest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.latest)
        self.last_path = path
