"""Send an image (a grid PNG's pixels) to the trainer's loggers that show images.

wandb (``WandbLogger.log_image``, or any logger with that method) and TensorBoard
(``experiment.add_image``) get it; loggers without images (CSV) are skipped. The PNG on disk is
written by the callback itself, whatever the loggers.
"""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


def log_image(trainer: L.Trainer, key: str, image: np.ndarray) -> None:
    """``image`` (H, W, 3) uint8 under ``key`` at the trainer's global step, to every image logger."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if callable(getattr(logger, "log_image", None)):
            logger.log_image(key=key, images=[image], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
