"""``python -m barlab.analysis <sweep folder> [<more folders>] [--out DIR] [--speed bench.json]``: results.csv and
the study's figures.

Writes ``<out>/results.csv`` (one row per job: failed, refused and missing jobs included, with
their reason) and, when the columns are there, ``bit_budget.png`` (tokenizer sweeps) and
``heads.png`` (head sweeps), or ``mbm_ablations.csv`` and ``mbm_ablations.png`` (study 4), or
``generation_budget.csv`` and ``generation_budget.png`` (study 3; ``--speed <bench.json>`` adds the
side-by-side speeds of ``python -m barlab.bench bench=generation_budget``).
Sampling grids under the folder (``python -m barlab.sample -m ... score=true``) add ``sampling_grid.csv``,
``sampling_grid_best.csv`` (each generator's best point by FID) and ``sampling_grid.png``; a grid folder
alone gives only those. ``--out`` defaults to the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from barlab.analysis.ablations import ablation_table, load_parts, plot_ablations
from barlab.analysis.generation_budget import budget_table, load_speed, plot_generation_budget
from barlab.analysis.grid import best_points
from barlab.analysis.plots import plot_bit_budget, plot_heads, plot_sampling_grid

SHOWN = ["quantizer", "bits_per_image", "params_head", "psnr", "ssim", "rfid", "gfid", "class_accuracy", "precision",
         "recall", "generator_train_time_s", "sampling_time_s", "sampling_images_per_s", "wall_time_s", "reason"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m barlab.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="+",
                        help="a multirun folder (outputs/<task>/multiruns/<date_time>) or any folder of runs; several "
                             "folders (the parts of one study run in parts) make one table")
    parser.add_argument("--out", default=None, help="where results.csv and the figures go (default: the first folder)")
    parser.add_argument("--speed", default=None,
                        help="study 3: a bench.json of `python -m barlab.bench bench=generation_budget`, whose "
                             "side-by-side speeds join the table and the figure")
    args = parser.parse_args(argv)
    folders = [Path(f) for f in args.folder]
    for folder in folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder "
                  "(fix: pass a sweep folder such as outputs/bit_budget/multiruns/<date_time>)",
                  file=sys.stderr)
            return 2
    speed = None
    if args.speed:
        try:
            speed = load_speed(args.speed)
        except (OSError, ValueError) as err:
            print(f"error: --speed: {err} (fix: pass the bench.json of `python -m barlab.bench "
                  "bench=generation_budget size=real`)", file=sys.stderr)
            return 2
    frame, grid = load_parts(folders)
    if frame.empty and grid.empty:
        print(f"error: no jobs under {', '.join(map(str, folders))} (no results.json, .hydra/overrides.yaml or "
              "sample_info.json found)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    written = write_grid(grid, out) if not grid.empty else []
    if frame.empty:
        print("\n".join(f"wrote {p}" for p in written))
        return 0
    frame.to_csv(out / "results.csv", index=False)
    written.append(out / "results.csv")
    if "bits_per_image" in frame and ("rfid" in frame or "psnr" in frame) and "family" in frame \
            and "head" not in frame:
        plot_bit_budget(frame, out / "bit_budget.png")
        written.append(out / "bit_budget.png")
    if "token_head" in frame:
        table = budget_table(frame, grid, speed)
        table.to_csv(out / "generation_budget.csv", index=False)
        plot_generation_budget(table, out / "generation_budget.png")
        written += [out / "generation_budget.csv", out / "generation_budget.png"]
    elif "ablation" in frame:
        table = ablation_table(frame, grid)
        table.to_csv(out / "mbm_ablations.csv", index=False)
        plot_ablations(table, out / "mbm_ablations.png")
        written += [out / "mbm_ablations.csv", out / "mbm_ablations.png"]
    elif "head" in frame and "tokenizer.bits" in frame:
        plot_heads(frame, out / "heads.png")
        written.append(out / "heads.png")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        swept = [k for k in frame.attrs.get("swept", []) if k in frame and k not in SHOWN]
        columns = ["job", "outcome"] + swept + [c for c in SHOWN if c in frame]
        print(frame[list(dict.fromkeys(columns))].to_string(index=False))
    print("\n".join(f"wrote {p}" for p in written))
    return 0


GRID_SHOWN = ["head", "tokenizer.bits", "guidance", "temperature", "allocation", "fid", "class_accuracy", "precision",
              "recall", "images_per_s"]


def write_grid(grid, out: Path) -> list[Path]:
    """sampling_grid.csv, sampling_grid_best.csv and sampling_grid.png; prints the best points."""
    import pandas as pd

    grid.to_csv(out / "sampling_grid.csv", index=False)
    best = best_points(grid)
    best.to_csv(out / "sampling_grid_best.csv", index=False)
    plot_sampling_grid(grid, out / "sampling_grid.png")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("best point of each generator's sampling grid (by FID):")
        print(best[[c for c in GRID_SHOWN if c in best]].to_string(index=False))
    return [out / "sampling_grid.csv", out / "sampling_grid_best.csv", out / "sampling_grid.png"]


if __name__ == "__main__":
    sys.exit(main())
