"""Study 3 (``sweeps/generation_budget.yaml``): discrete against continuous tokens at the generator, at
matched bits per image. One row per job with its scores at the preset and at the best point of its
sampling grid, its training time and its sampling speed; and the study's figure.

The jobs' own speeds (``generator_train_time_s``, ``sampling_images_per_s``) come from separate processes;
the side-by-side speeds come from ``python -m barlab.bench bench=generation_budget size=real``, whose
``bench.json`` :func:`load_speed` reads (``python -m barlab.analysis ... --speed <bench.json>``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from barlab.analysis.grid import best_points
from barlab.analysis.plots import finish, label_fid_axis

PAIRS = ("fsq_mbm", "fsq_bitwise", "kl_diffusion")
STYLE = {"fsq_mbm": dict(marker="s", label="binary FSQ + MBM"),
         "fsq_bitwise": dict(marker="^", label="binary FSQ + bitwise"),
         "kl_diffusion": dict(marker="o", linestyle="--", label="KL + diffusion (MAR)")}
KEEP = ("token_head", "channels_per_token", "bits_per_image", "family", "head", "psnr", "rfid", "gfid",
        "class_accuracy", "precision", "recall", "generator_train_time_s", "sampling_images_per_s", "metrics_label",
        "run_dir")
BEST = ("guidance", "temperature", "fid", "class_accuracy", "precision", "recall")
LABEL_OFFSETS = ((4, 3), (4, -9), (-28, 4))  # points' labels on alternating sides: close points stay legible
SPEED = {"sample_images_per_s": "bench_sample_images_per_s", "train_steps_per_s": "bench_train_steps_per_s"}


def load_speed(path) -> pd.DataFrame:
    """The ``generation_budget`` rows of a ``barlab.bench`` report (``bench.json``): token_head,
    channels_per_token and the side-by-side ``bench_sample_images_per_s`` and ``bench_train_steps_per_s``."""
    report = json.loads(Path(path).read_text())
    result = report.get("benchmarks", {}).get("generation_budget")
    if not result or not result.get("rows"):
        raise ValueError(f"{path} has no generation_budget benchmark (run `python -m barlab.bench "
                         "bench=generation_budget size=real`)")
    rows = pd.DataFrame(result["rows"])
    return rows[["token_head", "channels_per_token", *SPEED]].rename(columns=SPEED)


def budget_table(jobs, grid, speed: pd.DataFrame | None = None):
    """One row per finished job, ordered by bits per image then pair; ``best_*``: its grid's best point;
    ``bench_*``: the side-by-side speeds of :func:`load_speed` (matched on token_head and channels_per_token)."""
    ok = jobs[jobs["outcome"] == "ok"].copy() if "outcome" in jobs else jobs.copy()
    table = ok[[c for c in KEEP if c in ok]].copy()
    if not grid.empty and "run_dir" in grid:
        best = best_points(grid)[["run_dir", *[c for c in BEST if c in grid]]]
        table = table.merge(best.rename(columns={c: f"best_{c}" for c in BEST}), on="run_dir", how="left")
    if speed is not None:
        table = table.merge(speed, on=["token_head", "channels_per_token"], how="left")
    rank = {name: i for i, name in enumerate(PAIRS)}
    table["_order"] = table["token_head"].map(lambda p: rank.get(p, len(rank)))
    return table.sort_values(["bits_per_image", "_order"]).drop(columns="_order").reset_index(drop=True)


def plot_generation_budget(table, path=None):
    """Left: gFID (the preset, and each job's best grid point where there is one; log scale) against bits
    per image, one line per tokenizer + head. Right: gFID (the best point where there is one) against sampling
    images/s: the side-by-side benchmark's where the table has it, else the jobs' own."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    bench = "bench_sample_images_per_s" in table and table["bench_sample_images_per_s"].notna().all()
    speed = "bench_sample_images_per_s" if bench else "sampling_images_per_s"
    for pair in [p for p in PAIRS if p in set(table["token_head"])]:
        rows = table[table["token_head"] == pair].sort_values("bits_per_image")
        style = STYLE.get(pair, dict(marker="o", label=pair))
        line = left.plot(rows["bits_per_image"], rows["gfid"], **{**style, "label": f"{style['label']}, preset"})[0]
        fid = rows["gfid"]
        if "best_fid" in rows and rows["best_fid"].notna().any():
            left.plot(rows["bits_per_image"], rows["best_fid"], marker=style["marker"], linestyle=":",
                      color=line.get_color(), label=f"{style['label']}, best of its grid")
            fid = rows["best_fid"].fillna(rows["gfid"])
        right.plot(rows[speed], fid, marker=style["marker"], color=line.get_color(), linestyle=style.get("linestyle"),
                   label=style["label"])
        for i, ((_, row), y) in enumerate(zip(rows.iterrows(), fid)):
            right.annotate(f"{int(row['bits_per_image'])}", (row[speed], y), fontsize=7,
                           xytext=LABEL_OFFSETS[i % len(LABEL_OFFSETS)], textcoords="offset points")
    left.set_xscale("log", base=2)
    left.set_yscale("log")  # a sampler that fails (tens) and the working points (units) on one axis
    left.set_xlabel("bits per image (KL: 16 bits per channel)")
    right.set_xscale("log")
    right.set_xlabel("sampling images/s\n" + ("side by side in one process (bench=generation_budget)" if bench
                                               else "each job's own scored samples, separate processes"))
    label_fid_axis(left, table, "gFID (lower is better)")
    label_fid_axis(right, table, "gFID, best grid point (lower is better)")
    for axis, subs in ((left.yaxis, (1, 1.5, 2, 3, 5, 7)), (right.xaxis, (1, 2, 5))):  # plain numbers, not 10^x
        axis.set_major_locator(LogLocator(subs=subs))
        axis.set_minor_formatter(NullFormatter())
    for ax in (left, right):
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish(fig, "Study 3: discrete against continuous tokens at the generator", path)
