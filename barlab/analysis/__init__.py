"""Sweep folders → tables and figures (``python -m barlab.analysis <sweep folder>``)."""

from barlab.analysis.ablations import ablation_table, load_parts, plot_ablations
from barlab.analysis.collect import latest_sweep, load_rows, load_sweep
from barlab.analysis.generation_budget import budget_table, load_speed, plot_generation_budget
from barlab.analysis.grid import best_points, load_grid
from barlab.analysis.plots import plot_bit_budget, plot_heads, plot_sampling_grid

__all__ = ["ablation_table", "best_points", "budget_table", "latest_sweep", "load_grid", "load_parts", "load_rows",
           "load_speed", "load_sweep", "plot_ablations", "plot_bit_budget", "plot_generation_budget", "plot_heads",
           "plot_sampling_grid"]
