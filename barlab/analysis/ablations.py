"""Study 4 (``sweeps/mbm_ablations.yaml``): one row per generator, its scores at the preset and at the best
point of its sampling grid, and its diagnostics; and the study's figure.

A study run in parts lives in several sweep folders: :func:`load_parts` reads them as one table.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from barlab.analysis.collect import load_sweep
from barlab.analysis.grid import best_points, load_grid
from barlab.analysis.plots import finish, label_fid_axis

ORDER = ("bitwise", "mbm", "mbm_uniform", "mbm_full_mask_10", "mbm_random_fill", "mbm_unmasked_w1")
SHUFFLE = "generator.token_shuffle"
PRESET = ("gfid", "class_accuracy", "precision", "recall")
BEST = ("guidance", "temperature", "fid", "class_accuracy", "precision", "recall")
SPLICE = re.compile(r"diag_splice(\d+)_class_acc")
STEP = re.compile(r"diag_unmask_step(\d+)_acc")


def split_folders(value: str) -> list[Path]:
    """``a:b`` (``os.pathsep``-separated) -> [Path(a), Path(b)]: the parts of one study."""
    return [Path(p) for p in value.split(os.pathsep) if p]


def load_parts(folders: list[Path]):
    """(jobs, grid points) of every folder, concatenated: two pandas DataFrames. The jobs' ``attrs["swept"]``
    (the swept keys, :func:`barlab.analysis.load_sweep`) is the union over the folders."""
    import pandas as pd

    jobs = [j for j in (load_sweep(f) for f in folders) if not j.empty]
    grids = [g for g in (load_grid(f) for f in folders) if not g.empty]
    frame = pd.concat(jobs, ignore_index=True) if jobs else pd.DataFrame()
    frame.attrs["swept"] = list(dict.fromkeys(k for j in jobs for k in j.attrs.get("swept", [])))
    return frame, pd.concat(grids, ignore_index=True) if grids else pd.DataFrame()


def ablation_table(jobs, grid):
    """One row per finished job: ablation, p, the preset's scores (500 samples), the best grid point's
    (``best_*``: g, τ, FID, class accuracy, precision, recall), and every ``diag_*`` number."""
    import pandas as pd

    ok = jobs[jobs["outcome"] == "ok"].copy() if "outcome" in jobs else jobs.copy()
    keep = ["ablation", SHUFFLE, *PRESET, "generator_val_bit_accuracy", "generator_train_time_s", "sampling_time_s",
            "metrics_label", "run_dir"]
    diag = sorted((c for c in ok if c.startswith("diag_") and c != "diag_time_s"), key=_diag_order)
    table = ok[[c for c in keep + diag if c in ok]].copy()
    if not grid.empty and "run_dir" in grid:
        best = best_points(grid)[["run_dir", *[c for c in BEST if c in grid]]]
        best = best.rename(columns={c: f"best_{c}" for c in BEST})
        table = table.merge(best, on="run_dir", how="left")
    rank = {name: i for i, name in enumerate(ORDER)}
    table["_order"] = table["ablation"].map(lambda a: rank.get(a, len(rank)))
    table = table.sort_values([SHUFFLE, "_order"]).drop(columns="_order").reset_index(drop=True)
    return pd.DataFrame(table)


def _diag_order(name: str) -> tuple[int, int, str]:
    for group, pattern in enumerate((STEP, SPLICE)):
        match = pattern.fullmatch(name)
        if match:
            return (group + 1, int(match.group(1)), name)
    return (0, 0, name)


def splice_curve(row) -> tuple[list[int], list[float]]:
    """The j and class accuracies of one table row's ``diag_splice{j}_class_acc`` columns, by j."""
    points = sorted((int(m.group(1)), row[c]) for c in row.index if (m := SPLICE.fullmatch(c)) and row[c] == row[c])
    return [j for j, _ in points], [acc for _, acc in points]


def plot_ablations(table, path=None):
    """Top: gFID at the preset and at each job's best grid point, one panel per p. Bottom: the first
    step's bit accuracy with and without the label, and the class accuracy over spliced AR steps at the
    largest values of p (one panel each)."""
    shuffles = sorted(int(p) for p in table[SHUFFLE].dropna().unique())
    fig = Figure(figsize=(4.2 * max(len(shuffles), 2), 8))
    axes = fig.subplots(2, max(len(shuffles), 2), squeeze=False)
    for col, p in enumerate(shuffles):
        rows = table[table[SHUFFLE] == p]
        x = np.arange(len(rows))
        ax = axes[0, col]
        ax.bar(x - 0.2, rows["gfid"], width=0.4, label="preset (g 3, τ 1; 500)")
        if "best_fid" in rows:
            ax.bar(x + 0.2, rows["best_fid"], width=0.4, label="best of the grid (200)")
        ax.set_xticks(x, list(rows["ablation"]), rotation=35, ha="right", fontsize=8)
        label_fid_axis(ax, rows, f"gFID, p = {p} ({16 * p * p} bits per AR step)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[1, 0]
    labels = [f"{a}, p={int(p)}" for a, p in zip(table["ablation"], table[SHUFFLE])]
    x = np.arange(len(table))
    for offset, column, name in ((-0.2, "diag_first_step_acc_label", "true label"),
                                 (0.2, "diag_first_step_acc_null", "null label")):
        if column in table:
            ax.bar(x + offset, table[column], width=0.4, label=name)
    ax.set_ylim(0.4, 1.0)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("bit accuracy, every bit masked (r = 1)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    spliced = sorted(shuffles, reverse=True)[: axes.shape[1] - 1]     # the largest p first: where the class is lost
    for ax, p in zip(axes[1, 1:], spliced):
        for _, row in table[table[SHUFFLE] == p].iterrows():
            j, acc = splice_curve(row)
            if j:
                ax.plot(j, acc, marker="o", label=row["ablation"])
        ax.set_xlabel(f"j: AR steps generated (p = {p})")
        ax.set_title("first j AR steps sampled, the rest from a real image", fontsize=8)
        ax.set_ylabel("class accuracy (classifier)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for extra in axes[1, 1 + len(spliced):]:
        extra.axis("off")
    return finish(fig, "Study 4: the MBM head's masking ablations against the bitwise head (16 bits per token)", path)
