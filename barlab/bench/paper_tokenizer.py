"""``bench=paper_tokenizer``: the published BAR-FSQ tokenizer's training step (``tokenizer=bar_fsq_paper``).

The pretrained parts are random stand-ins in the real formats (:mod:`barlab.bench.stand_in_weights`),
so nothing is downloaded and the arithmetic is the real one. Per GAN phase (before step 100k: no
discriminator; after: the generator's hinge term and the discriminator's step), one row:

- FLOPs of one training step per image, counted by ``FlopCounterMode`` over a forward + backward at
  batch ``flop_batch`` (matmuls, convolutions, attention);
- on a CUDA device, the step's time at the paper's batch (32 per GPU, bf16 autocast) and its peak memory;
- the GPU-hours of the paper's 200k steps on 8 GPUs: measured (from the step time) on a GPU, else an
  estimate from the FLOPs at an assumed utilisation of a GPU's bf16 peak (labelled as an estimate).

``size=ci`` runs the tiny version (seconds, every loss term on); ``size=real`` the full one (about
2 GB of stand-in files in a temp folder; on a CPU only the FLOPs are counted, at batch 1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from barlab.bench.context import BenchContext
from barlab.bench.memory import peak_memory
from barlab.bench.mfu import train_step_flops
from barlab.bench.models import compose_generator
from barlab.bench.stand_in_weights import FULL_SIZES, TINY_OVERRIDES, TINY_SIZES, pretrained_overrides, write_stand_ins
from barlab.bench.steps import BareTokenizerStep
from barlab.bench.timing import measure

PAPER = {"steps": 200_000, "gan_start": 100_000, "gpus": 8, "batch_per_gpu": 32}
# the assumption behind the CPU estimate: H100 SXM dense bf16 peak, and a utilisation typical of ViT training
ESTIMATE = {"gpu": "H100 SXM", "bf16_peak_tflops": 989.0, "mfu": 0.40}
SIZES = {
    "ci": {"overrides": TINY_OVERRIDES, "sizes": TINY_SIZES, "flop_batch": 2, "time_batch": 8},
    "real": {"overrides": ["tokenizer=bar_fsq_paper", "data=imagefolder", "data.source.root=/unused",
                           "data.image_size=256"],
             "sizes": FULL_SIZES, "flop_batch": 1, "time_batch": 32},
}


def paper_hours(step_s_gan_off: float, step_s_gan_on: float) -> float:
    """GPU-hours of the paper's recipe on ``PAPER['gpus']`` GPUs from the two phases' step times."""
    seconds = PAPER["gan_start"] * step_s_gan_off + (PAPER["steps"] - PAPER["gan_start"]) * step_s_gan_on
    return seconds * PAPER["gpus"] / 3600


def timed_step(step: BareTokenizerStep, images: torch.Tensor, ctx: BenchContext) -> dict:
    """``{"batch", "step_s" (median), peak memory...}`` of ``step.step(images)`` on ``ctx.device``."""
    timed = measure(lambda: step.step(images), ctx.device, ctx.warmup, ctx.repeats)
    return {"batch": images.shape[0], "step_s": timed["median_s"],
            **peak_memory(lambda: step.step(images), ctx.device)}


def run(ctx: BenchContext) -> dict:
    from barlab.pipeline.tokenizer_stage import build_tokenizer_module

    s = ctx.pick(SIZES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_stand_ins(Path(tmp), s["sizes"], ctx.seed)
        cfg = compose_generator("tiny", "mbm", [*s["overrides"], *pretrained_overrides(paths)])
        torch.manual_seed(ctx.seed)
        module = build_tokenizer_module(cfg)
        channels, side = int(cfg.data.channels), int(cfg.data.image_size)
        for gan_on in (False, True):
            step = BareTokenizerStep(module, ctx.device, "bf16-mixed" if ctx.device.type == "cuda" else "32-true",
                                     gan_on=gan_on)
            images = torch.rand(s["flop_batch"], channels, side, side) * 2 - 1
            per_image = train_step_flops(step, images) / s["flop_batch"]
            row = {"phase": "GAN on" if gan_on else "GAN off", "flops_per_image": per_image,
                   "flops_per_step": per_image * PAPER["batch_per_gpu"] * PAPER["gpus"],
                   "params": sum(p.numel() for p in module.parameters()),
                   "trainable": sum(p.numel() for g in step.optimizers for q in g.param_groups for p in q["params"])}
            if ctx.device.type == "cuda" or ctx.size == "ci":
                row.update(timed_step(step, torch.rand(s["time_batch"], channels, side, side) * 2 - 1, ctx))
            rows.append(row)
            del step
    notes, ratios = [], {}
    if ctx.device.type == "cuda" and ctx.size == "real":
        ratios["gpu_hours_measured"] = paper_hours(rows[0]["step_s"], rows[1]["step_s"])
        notes.append(f"GPU-hours: measured step times on {torch.cuda.get_device_name(ctx.device)}, "
                     f"{PAPER['steps']} steps on {PAPER['gpus']} GPUs")
    else:
        rate = ESTIMATE["bf16_peak_tflops"] * 1e12 * ESTIMATE["mfu"]
        per_gpu = [r["flops_per_image"] * PAPER["batch_per_gpu"] / rate for r in rows]
        ratios["gpu_hours_estimate"] = paper_hours(*per_gpu)
        notes.append(f"GPU-hours: an ESTIMATE, not measured: the counted FLOPs at {ESTIMATE['mfu']:.0%} of an "
                     f"{ESTIMATE['gpu']}'s {ESTIMATE['bf16_peak_tflops']:.0f} TFLOP/s bf16 peak, "
                     f"{PAPER['steps']} steps on {PAPER['gpus']} GPUs")
    return {"rows": rows, "ratios": ratios, "notes": notes}


def plot(result: dict):
    """TFLOPs of one training step per image, before and after the discriminator joins."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    rows = result["rows"]
    bars = ax.bar([r["phase"] for r in rows], [r["flops_per_image"] / 1e12 for r in rows], color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['flops_per_image'] / 1e12:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("TFLOP per image (forward + backward)")
    ax.set_title("BAR-FSQ training step (counted)", fontsize=9)
    fig.tight_layout()
    return fig
