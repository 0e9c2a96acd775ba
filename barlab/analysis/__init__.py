"""Sweep folders → tables and figures (``python -m barlab.analysis <sweep folder>``)."""

from barlab.analysis.collect import classify, latest_sweep, load_rows, load_sweep
from barlab.analysis.plots import plot_bit_budget, plot_heads

__all__ = ["classify", "latest_sweep", "load_rows", "load_sweep", "plot_bit_budget", "plot_heads"]
