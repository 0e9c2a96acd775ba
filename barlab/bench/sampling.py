"""``bench=sampling``: images per second of :class:`ARSampler` (bits only; no tokenizer decode).

Three sweeps on the ``tiny`` generator (MBM head, random weights):

- ``cache``: the KV cache against full recompute (``use_kv_cache=False``: every AR step reruns the
  teacher-forced forward over the whole prefix; the sampler's own mode, same bits), with and
  without CFG, at two sequence lengths;
- ``shuffle``: token shuffling p = 1, 2, 4 of one token grid (p x p tokens per AR step);
- ``batch``: batch sizes, KV cache and CFG on.
"""

from __future__ import annotations

import torch

from barlab.bench.context import BenchContext, ratio
from barlab.bench.models import build_module, compose_generator
from barlab.bench.timing import measure, rate

SIZES = {
    "ci": dict(bits=4, grids=((2, 4), (4, 4)), shuffle_grid=(4, 4), batches=(1, 4), batch=2,
               overrides=("generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
                          "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2",
                          "generator.head_width=32", "generator.head_depth=1")),
    "real": dict(bits=16, grids=((8, 8), (16, 16)), shuffle_grid=(16, 16), batches=(1, 8, 32), batch=8, overrides=()),
}
GUIDANCE, NUM_CLASSES = 3.0, 10


def sampler_for(s: dict, grid: tuple[int, int], p: int, ctx: BenchContext):
    cfg = compose_generator("tiny", "mbm", [*s["overrides"], f"generator.token_shuffle={p}", "head.allocation=null"])
    return build_module(cfg, grid, s["bits"], NUM_CLASSES, ctx.device, ctx.seed).eval().sampler


def images_per_s(sampler, batch: int, cfg: bool, kv_cache: bool, ctx: BenchContext) -> dict:
    """Time ``sampler.sample`` of ``batch`` images; img/s at the median, slowest and fastest repeat."""
    labels = torch.arange(batch, device=ctx.device) % NUM_CLASSES
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    fn = lambda: sampler.sample(labels, guidance=GUIDANCE if cfg else 1.0, generator=gen,  # noqa: E731
                                use_kv_cache=kv_cache)
    stats = measure(fn, ctx.device, ctx.warmup, ctx.repeats)
    r = rate(stats, batch)
    return {"s_per_batch": stats["median_s"], "iqr_s": stats["iqr_s"], "img_per_s": r["rate"],
            "img_per_s_min": r["rate_min"], "img_per_s_max": r["rate_max"]}


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    rows = []

    def add(sweep, sampler, p, batch, cfg, kv):
        rows.append({"sweep": sweep, "ar_steps": sampler.backbone.seq_len, "p": p,
                     "bits_per_step": sampler.backbone.bits_per_step, "batch": batch, "cfg": cfg, "kv_cache": kv,
                     **images_per_s(sampler, batch, cfg, kv, ctx)})

    for grid in s["grids"]:
        sampler = sampler_for(s, grid, 1, ctx)
        for cfg in (True, False):
            for kv in (True, False):
                add("cache", sampler, 1, s["batch"], cfg, kv)
    for p in (1, 2, 4):
        add("shuffle", sampler_for(s, s["shuffle_grid"], p, ctx), p, s["batch"], True, True)
    sampler = sampler_for(s, s["grids"][-1], 1, ctx)
    for batch in s["batches"]:
        add("batch", sampler, 1, batch, True, True)
    return {"rows": rows, "ratios": sampling_ratios(rows),
            "notes": [f"tiny generator {' '.join(s['overrides']) or '(preset widths)'}, {s['bits']} bits per token, "
                      f"MBM head (cosine allocation, 4 steps), CFG g = {GUIDANCE} (linear schedule) where cfg"]}


def pick(rows: list[dict], **where) -> float | None:
    return next((r["img_per_s"] for r in rows if all(r[k] == v for k, v in where.items())), None)


def sampling_ratios(rows: list[dict]) -> dict:
    """img/s of the KV cache over full recompute (CFG on, per length; the unsuffixed one is the
    longest), and of p = 4 over p = 1."""
    out = {}
    lengths = sorted({r["ar_steps"] for r in rows if r["sweep"] == "cache"})
    for n in lengths:
        out[f"cache_over_recompute_L{n}"] = ratio(pick(rows, sweep="cache", ar_steps=n, cfg=True, kv_cache=True),
                                                  pick(rows, sweep="cache", ar_steps=n, cfg=True, kv_cache=False))
    out["cache_over_recompute"] = out[f"cache_over_recompute_L{lengths[-1]}"]
    out["p4_over_p1"] = ratio(pick(rows, sweep="shuffle", p=4), pick(rows, sweep="shuffle", p=1))
    return out


def plot(result: dict):
    """img/s against AR steps (cache / recompute, CFG on / off), against p, against batch size."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for cfg in (True, False):
        for kv in (True, False):
            part = [r for r in rows if r["sweep"] == "cache" and r["cfg"] == cfg and r["kv_cache"] == kv]
            axes[0].plot([r["ar_steps"] for r in part], [r["img_per_s"] for r in part], marker="o",
                         linestyle="-" if kv else "--", label=f"{'KV cache' if kv else 'recompute'}, "
                                                              f"{'CFG' if cfg else 'no CFG'}")
    for ax, sweep, key, xlabel in ((axes[1], "shuffle", "p", "token shuffling p"),
                                   (axes[2], "batch", "batch", "batch size")):
        part = [r for r in rows if r["sweep"] == sweep]
        ax.errorbar([r[key] for r in part], [r["img_per_s"] for r in part], marker="o",
                    yerr=[[r["img_per_s"] - r["img_per_s_min"] for r in part],
                          [r["img_per_s_max"] - r["img_per_s"] for r in part]])
        ax.set_xlabel(xlabel)
    axes[0].set_xlabel("AR steps")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylabel("images / s")
        ax.grid(alpha=0.3, which="both")
    r = result["ratios"]
    fig.suptitle(f"ARSampler: cache / recompute = {r['cache_over_recompute'] or float('nan'):.3g}, "
                 f"p4 / p1 = {r['p4_over_p1'] or float('nan'):.3g}", fontsize=9)
    fig.tight_layout()
    return fig
