"""Figures of the two studies, from a sweep table (:func:`barlab.analysis.load_sweep`).

Axis labels carry the feature network's label, so an FID from barlab's classifier never passes
for an Inception FID. Refused and out-of-memory points are drawn as crosses at the bottom of the
axis, at their bit width, with the reason in the legend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no GUI backend, safe on headless nodes

from barlab.analysis.grid import surface_keys

FAMILY_STYLE = {"discrete": dict(marker="o", label="binary FSQ (discrete)"),
                "continuous": dict(marker="s", linestyle="--", label="KL (continuous, 16 bits/channel)")}
HEAD_STYLE = {"linear": "o", "bitwise": "^", "mbm": "s"}


def label_fid_axis(ax, frame, name: str) -> None:
    """y label ``name``; the axis title names the feature network (``metrics_label`` column), so a
    classifier FID is never read as an Inception FID."""
    import textwrap

    ax.set_ylabel(name)
    labels = frame.get("metrics_label")
    found = [str(x) for x in labels.dropna().unique()] if labels is not None else []
    if found:
        ax.set_title(textwrap.fill("features: " + "; ".join(found), 70), fontsize=8)


def finish(fig: Figure, title: str, path=None, **title_kwargs) -> Figure:
    """Title ``fig``, lay it out, save it to ``path`` (120 dpi) when given, and return it."""
    fig.suptitle(title, **title_kwargs)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


def plot_bit_budget(frame, path=None):
    """rFID and PSNR against bits per image (log x), discrete vs continuous. Returns the figure."""
    ok = frame[frame["outcome"] == "ok"] if "outcome" in frame else frame
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for family, style in FAMILY_STYLE.items():
        part = ok[ok.get("family") == family].sort_values("bits_per_image") if "family" in ok else ok.iloc[0:0]
        if part.empty:
            continue
        for ax, column in zip(axes, ("rfid", "psnr")):
            if column in part:
                ax.plot(part["bits_per_image"], part[column], **style)
    label_fid_axis(axes[0], frame, "rFID (lower is better)")
    axes[1].set_ylabel("PSNR (dB, higher is better)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    failed = frame[frame["outcome"] != "ok"] if "outcome" in frame else frame.iloc[0:0]
    title = "Reconstruction vs bit budget"
    if not failed.empty:
        title += f"  ({len(failed)} run(s) not ok: see the table)"
    return finish(fig, title, path)


def plot_heads(frame, path=None, bits_column: str = "tokenizer.bits"):
    """gFID and class accuracy against bits per token, one line per head; refused / OOM marked."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    named = {h for h in frame.get("head", []) if isinstance(h, str)}  # a job refused early has no head (NaN)
    heads = [h for h in ("linear", "bitwise", "mbm") if h in named]
    heads += sorted(named - set(heads))
    for head in heads:
        rows = frame[frame["head"] == head].sort_values(bits_column)
        ok = rows[rows["outcome"] == "ok"]
        marker = HEAD_STYLE.get(head, "o")
        for ax, column in zip(axes, ("gfid", "class_accuracy")):
            if column in ok and not ok.empty:
                ax.plot(ok[bits_column], ok[column], marker=marker, label=head)
    for ax in axes:   # the axes' final range, so that the marks below sit on the bottom edge, below every line
        ax.set_ylim(*ax.get_ylim())
    for head in heads:
        rows = frame[frame["head"] == head]
        bad = rows[rows["outcome"].isin(["refused", "oom", "crashed", "failed", "missing", "interrupted"])]
        for outcome, group in bad.groupby("outcome"):
            for ax in axes:
                ax.scatter(group[bits_column], np.full(len(group), ax.get_ylim()[0]), marker="x", s=80,
                           color="red", label=f"{head}: {outcome}", zorder=5, clip_on=False)
    ticks = sorted({int(b) for b in frame[bits_column].dropna()}) if bits_column in frame else []
    label_fid_axis(axes[0], frame, "gFID (lower is better)")
    axes[1].set_ylabel("class accuracy of samples (classifier)")
    for ax in axes:
        ax.set_xlabel("bits per token k (codebook 2^k)")
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish(fig, "Prediction heads as the codebook grows", path)


def _surface_title(values: dict, varying: list[str]) -> str:
    """``mbm 16 bits``, plus what else tells this panel from the others (run folder, allocation)."""
    parts = [str(values[k]) for k in ("head",) if k in values]
    if "tokenizer.bits" in values:
        parts.append(f"{values['tokenizer.bits']} bits")
    if "run_dir" in varying:
        parts.append(Path(str(values["run_dir"])).name)
    parts += [f"{k} {values[k]}" for k in ("schedule", "allocation") if k in varying]
    return " ".join(parts) or "grid"


def plot_sampling_grid(frame, path=None, value: str = "fid"):
    """Heat maps of ``value`` over guidance × temperature, one panel per surface: generator (head,
    bits, run) and unmasking plan (schedule, allocation), see ``barlab.analysis.grid.surface_keys``."""
    keys = surface_keys(frame)
    groups = list(frame.groupby(keys, dropna=False)) if keys else [((), frame)]
    varying = [k for k in keys if frame[k].nunique(dropna=False) > 1]
    fig = Figure(figsize=(4.2 * len(groups), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (name, part) in zip(axes, groups):
        table = part.pivot_table(index="guidance", columns="temperature", values=value, aggfunc="min")
        image = ax.imshow(table.values, cmap="viridis_r", aspect="auto", origin="lower")
        ax.set_xticks(range(len(table.columns)), [f"{t:g}" for t in table.columns])
        ax.set_yticks(range(len(table.index)), [f"{g:g}" for g in table.index])
        best = np.nanmin(table.values)
        for (i, j), v in np.ndenumerate(table.values):
            if np.isfinite(v):
                r, g, b, _ = image.cmap(image.norm(v))          # dark text on light cells, light on dark
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color=ink if v != best else "red", fontweight="bold" if v == best else None)
        ax.set_xlabel("temperature τ")
        ax.set_ylabel("guidance g")
        ax.set_title(_surface_title(dict(zip(keys, name if isinstance(name, tuple) else (name,))), varying),
                     fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    labels = frame.get("feature_label")
    found = [str(x) for x in labels.dropna().unique()] if labels is not None else []
    return finish(fig, f"{value} over the sampling grid" + (f" (features: {'; '.join(found)})" if found else ""),
                  path, fontsize=9)
