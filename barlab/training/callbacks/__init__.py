"""Training callbacks."""

from barlab.training.callbacks.ema import EMA
from barlab.training.callbacks.recon_grid import ReconstructionGrid

__all__ = ["EMA", "ReconstructionGrid"]
