"""Sampling-grid tables: allocation overrides and second runs of one head are their own surfaces."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from barlab.analysis.grid import DEFAULT_ALLOCATION, best_points, load_grid
from barlab.analysis.plots import plot_sampling_grid


def _point(root: Path, name: str, *, g: float, t: float, fid: float, allocation=None, head="mbm") -> None:
    folder = root / name
    folder.mkdir(parents=True)
    sampling = {"guidance": g, "temperature": t, "schedule": "linear", "allocation": allocation}
    (folder / "sample_info.json").write_text(json.dumps({"sampling": sampling, "head": head, "num_samples": 20}))
    (folder / "metrics.json").write_text(json.dumps({"fid": fid, "class_accuracy": 0.5}))


def test_allocation_overrides_never_join_the_default_grid(tmp_path):
    grid = tmp_path / "sampling_grid"
    for g, t, fid in [(1.5, 1, 6.0), (1.5, 2, 5.5), (3, 1, 5.0), (3, 2, 4.7)]:
        _point(grid, f"g{g}_t{t}", g=g, t=t, fid=fid)
    _point(grid, "one_step", g=3, t=2, fid=27.8, allocation=[16])
    _point(grid, "eight_steps", g=3, t=2, fid=4.5, allocation=[2] * 8)   # better than the default grid's best
    frame = load_grid(tmp_path)
    assert sorted(frame["allocation"].unique()) == ["16", "2-2-2-2-2-2-2-2", DEFAULT_ALLOCATION]
    best = best_points(frame).set_index("allocation")
    assert best.loc[DEFAULT_ALLOCATION, "fid"] == 4.7 and (best.loc[DEFAULT_ALLOCATION, ["guidance", "temperature"]]
                                                           .tolist() == [3, 2])
    assert best.loc["2-2-2-2-2-2-2-2", "fid"] == 4.5 and best.loc["16", "fid"] == 27.8
    fig = plot_sampling_grid(frame, tmp_path / "grid.png")
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == ["mbm allocation 16", "mbm allocation 2-2-2-2-2-2-2-2", f"mbm allocation {DEFAULT_ALLOCATION}"]
    default_panel = next(ax for ax in fig.axes if ax.get_title().endswith(DEFAULT_ALLOCATION))
    cells = sorted(float(text.get_text()) for text in default_panel.texts)
    assert cells == [4.7, 5.0, 5.5, 6.0]                                  # the 4.5 and 27.8 points are not in it
    with Image.open(tmp_path / "grid.png") as png:     # the figure itself, at the 120 dpi it is saved with
        assert png.size == tuple(round(v) for v in fig.get_size_inches() * 120)


def test_two_runs_of_one_head_are_two_surfaces(tmp_path):
    for run, fid in (("bitwise16", 4.4), ("bitwise_matched16", 4.1)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(json.dumps({"status": "ok", "overrides": {}}))
        _point(tmp_path / run / "sampling_grid", "p", g=3, t=1, fid=fid, head="bitwise")
        _point(tmp_path / run / "sampling_grid", "q", g=3, t=2, fid=fid + 1, head="bitwise")
    frame = load_grid(tmp_path)
    best = best_points(frame)
    assert sorted(Path(d).name for d in best["run_dir"]) == ["bitwise16", "bitwise_matched16"]
    assert sorted(best["fid"]) == [4.1, 4.4]
    titles = sorted(ax.get_title() for ax in plot_sampling_grid(frame).axes if ax.get_title())
    assert titles == ["bitwise bitwise16", "bitwise bitwise_matched16"]


def test_an_unscored_grid_has_no_best_point(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "sample_info.json").write_text(json.dumps({"sampling": {"guidance": 3, "temperature": 1}}))
    frame = load_grid(tmp_path)
    best = best_points(frame.assign(fid=float("nan")))
    assert isinstance(best, pd.DataFrame) and best.empty and list(best.columns) == [*frame.columns, "fid"]


def test_refused_points_sit_below_every_head_line():
    """The refused marks are drawn after all lines, on the final bottom edge (not on the first line's)."""
    from barlab.analysis.plots import plot_heads

    frame = pd.DataFrame([
        {"head": "linear", "tokenizer.bits": 8, "outcome": "ok", "gfid": 7.0, "class_accuracy": 0.7},
        {"head": "linear", "tokenizer.bits": 24, "outcome": "refused", "gfid": None, "class_accuracy": None},
        {"head": "bitwise", "tokenizer.bits": 8, "outcome": "ok", "gfid": 3.0, "class_accuracy": 0.9},
        {"head": "bitwise", "tokenizer.bits": 24, "outcome": "ok", "gfid": 2.0, "class_accuracy": 0.95},
    ])
    fig = plot_heads(frame)
    for ax in fig.axes[:2]:
        marks = [c.get_offsets() for c in ax.collections]
        assert len(marks) == 1 and marks[0][0][0] == 24
        assert marks[0][0][1] == ax.get_ylim()[0] < min(min(line.get_ydata()) for line in ax.get_lines())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "24"]
