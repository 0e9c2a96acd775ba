"""``python -m barlab.analysis <sweep folder> [--out DIR]``: results.csv and the study's figures.

Writes ``<out>/results.csv`` (one row per job: failed, refused and missing jobs included, with
their reason) and, when the columns are there, ``bit_budget.png`` (tokenizer sweeps) and
``heads.png`` (head sweeps). ``--out`` defaults to the sweep folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from barlab.analysis.collect import load_sweep
from barlab.analysis.plots import plot_bit_budget, plot_heads

SHOWN = ["quantizer", "bits_per_image", "params_head", "psnr", "ssim", "rfid", "gfid", "class_accuracy", "precision",
         "recall", "wall_time_s", "reason"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m barlab.analysis", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a multirun folder (outputs/<task>/multiruns/<date_time>) or any folder of runs")
    parser.add_argument("--out", default=None, help="where results.csv and the figures go (default: the folder)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder (fix: pass a sweep folder such as outputs/bit_budget/multiruns/<date_time>)",
              file=sys.stderr)
        return 2
    frame = load_sweep(folder)
    if frame.empty:
        print(f"error: no jobs under {folder} (no results.json or .hydra/overrides.yaml found)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else folder
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    written = [out / "results.csv"]
    if "bits_per_image" in frame and ("rfid" in frame or "psnr" in frame) and "family" in frame \
            and "head" not in frame:
        plot_bit_budget(frame, out / "bit_budget.png")
        written.append(out / "bit_budget.png")
    if "head" in frame and "tokenizer.bits" in frame:
        plot_heads(frame, out / "heads.png")
        written.append(out / "heads.png")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        swept = [k for k in frame.attrs.get("swept", []) if k in frame and k not in SHOWN]
        columns = ["job", "outcome"] + swept + [c for c in SHOWN if c in frame]
        print(frame[list(dict.fromkeys(columns))].to_string(index=False))
    print("\n".join(f"wrote {p}" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
