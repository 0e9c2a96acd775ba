"""Study 3 (``sweeps/generation_budget.yaml``): discrete against continuous tokens at the generator, at
matched bits per image. One row per job with its scores at the preset and at the best point of its
sampling grid, its training time and its sampling speed; and the study's figure."""

from __future__ import annotations

from matplotlib.figure import Figure

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


def budget_table(jobs, grid):
    """One row per finished job, ordered by bits per image then pair; ``best_*``: its grid's best point."""
    ok = jobs[jobs["outcome"] == "ok"].copy() if "outcome" in jobs else jobs.copy()
    table = ok[[c for c in KEEP if c in ok]].copy()
    if not grid.empty and "run_dir" in grid:
        best = best_points(grid)[["run_dir", *[c for c in BEST if c in grid]]]
        table = table.merge(best.rename(columns={c: f"best_{c}" for c in BEST}), on="run_dir", how="left")
    rank = {name: i for i, name in enumerate(PAIRS)}
    table["_order"] = table["token_head"].map(lambda p: rank.get(p, len(rank)))
    return table.sort_values(["bits_per_image", "_order"]).drop(columns="_order").reset_index(drop=True)


def plot_generation_budget(table, path=None):
    """Left: gFID (the preset, and each job's best grid point where there is one) against bits per image,
    one line per tokenizer + head. Right: gFID against sampling images per second."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for pair in [p for p in PAIRS if p in set(table["token_head"])]:
        rows = table[table["token_head"] == pair].sort_values("bits_per_image")
        style = STYLE.get(pair, dict(marker="o", label=pair))
        line = left.plot(rows["bits_per_image"], rows["gfid"], **style)[0]
        if "best_fid" in rows and rows["best_fid"].notna().any():
            left.plot(rows["bits_per_image"], rows["best_fid"], marker=style["marker"], linestyle=":",
                      color=line.get_color(), label=f"{style['label']}, best of its grid")
        right.scatter(rows["sampling_images_per_s"], rows["gfid"], marker=style["marker"], color=line.get_color(),
                      label=style["label"])
        for _, row in rows.iterrows():
            right.annotate(f"{int(row['bits_per_image'])}", (row["sampling_images_per_s"], row["gfid"]), fontsize=7,
                           xytext=(3, 3), textcoords="offset points")
    left.set_xscale("log", base=2)
    left.set_xlabel("bits per image (KL: 16 bits per channel)")
    right.set_xlabel("sampling speed, images/s (same machine, one sweep)")
    for ax in (left, right):
        label_fid_axis(ax, table, "gFID (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish(fig, "Study 3: discrete against continuous tokens at the generator", path)
