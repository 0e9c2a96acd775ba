"""``bench=sampling``: images per second of :class:`ARSampler` (bits only; no tokenizer decode).

Four sweeps on the ``tiny`` generator (MBM head, random weights):

- ``cache``: the KV cache against full recompute (``use_kv_cache=False``: every AR step reruns the
  teacher-forced forward over the whole prefix; the sampler's own mode, same bits), with CFG at two
  sequence lengths, without CFG at the shorter one, and at a second batch size on the shorter one
  (the cache's gain grows with the batch: its one-row-per-image matmuls are the least efficient on
  a CPU). A recompute call takes seconds to minutes, so it is timed with at most 1 warm-up and 3
  repeats;
- ``shuffle``: token shuffling p = 1, 2, 4 of one token grid (p x p tokens per AR step);
- ``batch``: batch sizes on the default 8 x 8 grid, KV cache and CFG on, each with its FLOPs
  (``FlopCounterMode`` over one call) and their rate as a fraction of the run's fp32 matmul peak;
- ``fuse_cfg``: the head's CFG as one forward over 2N rows (``Head.fuse_cfg``, the default) against
  two forwards of N rows (the previous path), at two batch sizes.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from barlab.bench.context import BenchContext, ratio
from barlab.bench.models import build_module, compose_generator
from barlab.bench.peak import peak_for, peak_note
from barlab.bench.timing import measure, rate

SIZES = {
    "ci": dict(bits=4, grids=((2, 4), (4, 4)), shuffle_grid=(4, 4), batch_grid=(2, 4), batches=(1, 4), batch=2,
               fuse_batches=(2, 4), cache_batch=4,
               overrides=("generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
                          "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2",
                          "head.width=32", "head.depth=1")),
    "real": dict(bits=16, grids=((8, 8), (16, 16)), shuffle_grid=(16, 16), batch_grid=(8, 8),
                 batches=(1, 8, 32, 64, 128), batch=8, fuse_batches=(8, 64), cache_batch=64, overrides=()),
}
GUIDANCE, NUM_CLASSES = 3.0, 10
DEFAULT_BATCH = 64  # the target's "default sampling at batch >= 64" point (docs/benchmarks.md)


def sampler_for(s: dict, grid: tuple[int, int], p: int, ctx: BenchContext):
    cfg = compose_generator("tiny", "mbm", [*s["overrides"], f"generator.token_shuffle={p}", "head.allocation=null"])
    return build_module(cfg, grid, s["bits"], NUM_CLASSES, ctx.device, ctx.seed).eval().sampler


def sample_fn(sampler, batch: int, cfg: bool, kv_cache: bool, ctx: BenchContext):
    labels = torch.arange(batch, device=ctx.device) % NUM_CLASSES
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    return lambda: sampler.sample(labels, guidance=GUIDANCE if cfg else 1.0, generator=gen, use_kv_cache=kv_cache)


def images_per_s(sampler, batch: int, cfg: bool, kv_cache: bool, ctx: BenchContext) -> dict:
    """Time ``sampler.sample`` of ``batch`` images; img/s at the median, slowest and fastest repeat."""
    warmup, repeats = (ctx.warmup, ctx.repeats) if kv_cache else (min(ctx.warmup, 1), min(ctx.repeats, 3))
    stats = measure(sample_fn(sampler, batch, cfg, kv_cache, ctx), ctx.device, warmup, repeats)
    r = rate(stats, batch)
    return {"s_per_batch": stats["median_s"], "iqr_s": stats["iqr_s"], "img_per_s": r["rate"],
            "img_per_s_min": r["rate_min"], "img_per_s_max": r["rate_max"], "repeats": stats["n"]}


def sampling_flops(sampler, batch: int, ctx: BenchContext) -> int:
    """FLOPs of one CFG sampling call of ``batch`` images (matmuls and SDPA, as FlopCounterMode counts)."""
    with FlopCounterMode(display=False) as counter:
        sample_fn(sampler, batch, True, True, ctx)()
    return int(counter.get_total_flops())


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    rows = []

    def add(sweep, sampler, p, batch, cfg, kv, **extra):
        rows.append({"sweep": sweep, "ar_steps": sampler.backbone.seq_len, "p": p,
                     "bits_per_step": sampler.backbone.bits_per_step, "batch": batch, "cfg": cfg, "kv_cache": kv,
                     **extra, **images_per_s(sampler, batch, cfg, kv, ctx)})
        return rows[-1]

    for i, grid in enumerate(s["grids"]):
        sampler = sampler_for(s, grid, 1, ctx)
        for cfg in (True, False):
            for kv in (True, False):
                if kv or cfg or i == 0:
                    add("cache", sampler, 1, s["batch"], cfg, kv)
        if i == 0:
            for kv in (True, False):
                add("cache", sampler, 1, s["cache_batch"], True, kv)
    for p in (1, 2, 4):
        add("shuffle", sampler_for(s, s["shuffle_grid"], p, ctx), p, s["batch"], True, True)
    sampler = sampler_for(s, s["batch_grid"], 1, ctx)
    peak = peak_for(ctx, "32-true")
    for batch in s["batches"]:
        flops = sampling_flops(sampler, batch, ctx)
        row = add("batch", sampler, 1, batch, True, True, flops=flops)
        row["peak_fraction"] = flops / row["s_per_batch"] / peak
    for batch in s["fuse_batches"]:
        for fused in (False, True):
            sampler.head.fuse_cfg = fused
            add("fuse_cfg", sampler, 1, batch, True, True, fuse_cfg=fused)
    sampler.head.fuse_cfg = True
    return {"rows": rows, "ratios": sampling_ratios(rows),
            "notes": [f"tiny generator {' '.join(s['overrides']) or '(preset widths)'}, {s['bits']} bits per token, "
                      f"MBM head (cosine allocation, 4 steps), CFG g = {GUIDANCE} (linear schedule) where cfg",
                      peak_note(ctx)]}


def pick(rows: list[dict], **where) -> float | None:
    return next((r["img_per_s"] for r in rows if all(r[k] == v for k, v in where.items())), None)


def sampling_ratios(rows: list[dict]) -> dict:
    """img/s of the KV cache over full recompute (CFG on, per length and batch), of p = 4 over p = 1,
    fused over two-forward CFG (per batch), and the batch sweep's fraction of the fp32 matmul peak at
    every batch >= 64 (the target's "default sampling at batch >= 64"; the largest batch if none is)."""
    out = {}
    for n, b in sorted({(r["ar_steps"], r["batch"]) for r in rows if r["sweep"] == "cache" and r["cfg"]}):
        out[f"cache_over_recompute_L{n}_b{b}"] = ratio(
            pick(rows, sweep="cache", ar_steps=n, batch=b, cfg=True, kv_cache=True),
            pick(rows, sweep="cache", ar_steps=n, batch=b, cfg=True, kv_cache=False))
    out["p4_over_p1"] = ratio(pick(rows, sweep="shuffle", p=4), pick(rows, sweep="shuffle", p=1))
    for b in sorted({r["batch"] for r in rows if r["sweep"] == "fuse_cfg"}):
        out[f"fused_cfg_speedup_b{b}"] = ratio(pick(rows, sweep="fuse_cfg", batch=b, fuse_cfg=True),
                                               pick(rows, sweep="fuse_cfg", batch=b, fuse_cfg=False))
    batch_rows = [r for r in rows if r["sweep"] == "batch"]
    large = [r for r in batch_rows if r["batch"] >= DEFAULT_BATCH] or batch_rows[-1:]
    for r in large:
        out[f"peak_fraction_b{r['batch']}"] = r["peak_fraction"]
    return out


def plot(result: dict):
    """img/s against AR steps (cache / recompute, CFG on / off), against p, against batch size (with
    the fraction of the fp32 matmul peak, and the two-forward CFG points)."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    batch = rows[0]["batch"]
    for cfg in (True, False):
        for kv in (True, False):
            part = [r for r in rows if r["sweep"] == "cache" and r["cfg"] == cfg and r["kv_cache"] == kv
                    and r["batch"] == batch]
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
    for r in rows:
        if r["sweep"] == "batch":
            axes[2].annotate(f"{r['peak_fraction']:.0%}", (r["batch"], r["img_per_s"]), textcoords="offset points",
                             xytext=(4, -10), fontsize=7)
    unfused = [r for r in rows if r["sweep"] == "fuse_cfg" and not r["fuse_cfg"]]
    axes[2].plot([r["batch"] for r in unfused], [r["img_per_s"] for r in unfused], "x", color="red",
                 label="CFG as two forwards (previous)")
    axes[2].legend(fontsize=7, title="% = fraction of fp32 matmul peak", title_fontsize=7)
    axes[0].set_xlabel(f"AR steps (batch {batch})")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylabel("images / s")
        ax.grid(alpha=0.3, which="both")
    r = result["ratios"]
    cache = ", ".join(f"{k.removeprefix('cache_over_recompute_')} {v:.3g}" for k, v in r.items()
                      if k.startswith("cache_over_recompute") and v is not None)
    fig.suptitle(f"ARSampler: KV cache / recompute ({cache}), p4 / p1 = {r['p4_over_p1'] or float('nan'):.3g}",
                 fontsize=9)
    fig.tight_layout()
    return fig
