"""Sweep folders → tables and figures (``python -m barlab.analysis <sweep folder>``)."""

from barlab.analysis.collect import latest_sweep, load_rows, load_sweep
from barlab.analysis.grid import best_points, load_grid
from barlab.analysis.plots import plot_bit_budget, plot_heads, plot_sampling_grid

__all__ = ["best_points", "latest_sweep", "load_grid", "load_rows", "load_sweep", "plot_bit_budget",
           "plot_heads", "plot_sampling_grid"]
