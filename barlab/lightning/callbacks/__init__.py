"""Training callbacks."""

from barlab.lightning.callbacks.ema import EMA
from barlab.lightning.callbacks.progress_log import ProgressLog
from barlab.lightning.callbacks.recon_grid import ReconstructionGrid
from barlab.lightning.callbacks.sample_grid import SampleGrid

__all__ = ["EMA", "ProgressLog", "ReconstructionGrid", "SampleGrid"]
