"""Training callbacks."""

from barlab.training.callbacks.ema import EMA
from barlab.training.callbacks.progress_log import ProgressLog
from barlab.training.callbacks.recon_grid import ReconstructionGrid
from barlab.training.callbacks.sample_grid import SampleGrid

__all__ = ["EMA", "ProgressLog", "ReconstructionGrid", "SampleGrid"]
