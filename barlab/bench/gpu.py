"""``bench=gpu``: the paper's presets on a CUDA device (skipped without one), random weights.

Per preset (built from configs/generator/<preset>.yaml like training builds it): sampling img/s
at the paper's settings (256 tokens = a 16x16 grid of 16 bits, token shuffling from the preset,
CFG with the preset's guidance / schedule / temperature, its 4-step MBM allocation, bf16 autocast)
beside the paper's H200 number; a bf16 training step's img/s and peak memory.
"""

from __future__ import annotations

import torch

from barlab.bench.context import BenchContext, ratio
from barlab.bench.memory import peak_memory
from barlab.bench.models import build_module, compose_generator, count_params
from barlab.bench.steps import BareTrainer, autocast, random_batch
from barlab.bench.timing import measure, rate

PAPER_IMG_PER_S = {"bar_b": 24.3, "bar_b_p2": 150.5, "bar_b_p4": 445.5, "bar_l": 10.65}  # H200, paper
SIZES = {"ci": dict(sample_batch=4, train_batch=2), "real": dict(sample_batch=256, train_batch=32)}
GRID, BITS, NUM_CLASSES = (16, 16), 16, 1000


def preset_sampling(cfg) -> tuple[dict, list[int] | None]:
    """``(guidance / schedule / temperature, allocation)`` a run of ``cfg`` samples with: the top-level
    ``sampling`` node (allocation None: the head's own, ``head.allocation``)."""
    settings = {k: cfg.sampling[k] for k in ("guidance", "schedule", "temperature")}
    allocation = cfg.sampling.allocation
    return settings, None if allocation is None else [int(a) for a in allocation]


def measure_preset(preset: str, ctx: BenchContext, s: dict, overrides=(), grid=GRID, bits=BITS) -> dict:
    """Sampling and training img/s (and training peak memory) of one preset on ``ctx.device``."""
    cfg = compose_generator(preset, "mbm", overrides)
    module = build_module(cfg, grid, bits, NUM_CLASSES, ctx.device, ctx.seed)
    settings, allocation = preset_sampling(cfg)
    labels = torch.arange(s["sample_batch"], device=ctx.device) % NUM_CLASSES

    def sample():
        with autocast(ctx.device, "bf16-mixed"):
            module.sampler.sample(labels, allocation=allocation, **settings)

    sampled = rate(measure(sample, ctx.device, ctx.warmup, ctx.repeats), s["sample_batch"])
    trainer = BareTrainer(module, ctx.device, "bf16-mixed")
    batch = random_batch(module, s["train_batch"], ctx.seed)
    trained = rate(measure(lambda: trainer.step(batch), ctx.device, ctx.warmup, ctx.repeats), s["train_batch"])
    memory = peak_memory(lambda: trainer.step(batch), ctx.device)
    paper = PAPER_IMG_PER_S.get(preset)
    return {"preset": preset, "ar_steps": module.backbone.seq_len, "params": count_params(module),
            **settings, "allocation": list(module.head.allocation if allocation is None else allocation),
            "sample_batch": s["sample_batch"], "sample_img_per_s": sampled["rate"],
            "sample_min": sampled["rate_min"], "sample_max": sampled["rate_max"], "paper_img_per_s": paper,
            "vs_paper": ratio(sampled["rate"], paper), "train_batch": s["train_batch"],
            "train_img_per_s": trained["rate"], "train_peak_mb": memory["peak_mb"]}


def run(ctx: BenchContext) -> dict:
    if ctx.device.type != "cuda":
        return {"skipped": "skipped: no CUDA"}
    s = ctx.pick(SIZES)
    rows = []
    for preset in PAPER_IMG_PER_S:
        try:
            rows.append(measure_preset(preset, ctx, s))
        except RuntimeError as err:  # out of memory, or a kernel this GPU lacks: record it, go on
            rows.append({"preset": preset, "error": str(err).splitlines()[0]})
        torch.cuda.empty_cache()
    return {"rows": rows, "ratios": {f"{r['preset']}_vs_paper": r.get("vs_paper") for r in rows},
            "notes": ["paper: BAR's H200 img/s; ours: random weights, bits only (no tokenizer decode)"]}


def plot(result: dict):
    """Sampling img/s per preset beside the paper's."""
    from matplotlib.figure import Figure

    rows = [r for r in result["rows"] if "sample_img_per_s" in r]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["sample_img_per_s"] for r in rows], width=0.4, label="measured")
    ax.bar([i + 0.2 for i in x], [r["paper_img_per_s"] for r in rows], width=0.4, label="paper (H200)")
    ax.set_xticks(list(x), [r["preset"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("images / s (sampling)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
