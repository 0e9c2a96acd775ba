"""``bench=mfu``: model FLOPs utilisation of the generator's and the tokenizer's training steps on
this machine, and what bf16 autocast buys where the hardware has native bf16.

Peak: :func:`barlab.bench.peak.peaks` (the best n x n matmul, fp32 and bf16 where native). Step
FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` over the forward + backward, and for
the generator analytically too, 6 x (matmul weights x tokens) + 12 x depth x B x S^2 x width for
attention (S = the backbone's slots, prefix included). Achieved FLOP/s = counted FLOPs / the bare
training step's median time (optimizer included); MFU = that / the peak of the step's precision.

On a CPU with native bf16 (avx512_bf16 / AMX) the default-size generator and the tokenizer are also
timed under ``bf16-mixed`` autocast, each beside its own fp32 row: ``bf16_speedup_*`` is the fp32 step
time over the bf16 one. (``precision: auto`` picks fp32 on every CPU; these rows say what that costs.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from barlab.bench.context import BenchContext, ratio
from barlab.bench.models import build_module, compose_generator, count_params
from barlab.bench.peak import bf16_supported, peak_for, peak_note, peaks
from barlab.bench.steps import BareTokenizerStep, BareTrainer, random_batch
from barlab.bench.timing import measure
from barlab.pipeline.trainer import auto_precision

BAR_B_CI = ("generator.backbone.depth=1", "head.width=256", "head.depth=1")
BAR_B_CPU = ("generator.backbone.depth=2",)
# models: (name, preset, overrides, token grid, bits, batch); tokenizer: its batch (None: data.batch_size)
SIZES = {
    "ci": dict(models=(("bar_b width, depth 1", "bar_b", BAR_B_CI, (4, 4), 4, 2),
                       ("tiny", "tiny", (), (4, 4), 4, 4)), tokenizer_batch=4),
    "real": dict(models=(("bar_b width, depth 2", "bar_b", BAR_B_CPU, (16, 16), 16, 2),
                         ("tiny", "tiny", (), (8, 8), 16, 32)), tokenizer_batch=None),
    "real_cuda": dict(models=(("bar_b", "bar_b", (), (16, 16), 16, 64),
                              ("bar_l", "bar_l", (), (16, 16), 16, 16)), tokenizer_batch=None),
}


def linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def analytic_flops(module, batch_size: int) -> int:
    """6 x matmul weights x tokens (the backbone's blocks over its S slots; its output projection and
    the head over the L' tokens) + attention."""
    b = module.backbone
    slots, steps = b.max_len, b.seq_len
    per_step = b.out.weight.numel() + linear_weights(module.head)
    matmuls = (linear_weights(b) - b.out.weight.numel()) * batch_size * slots + per_step * batch_size * steps
    return 6 * matmuls + 12 * b.depth * batch_size * slots**2 * b.width


def counted_flops(fn) -> int:
    """FLOPs of ``fn()`` as FlopCounterMode counts them (matmuls, convolutions, SDPA)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(trainer, batch) -> int:
    """FLOPs of one forward + backward of ``trainer`` (a bare training step) on ``batch``."""
    flops = counted_flops(lambda: trainer.forward_backward(batch))
    trainer.zero_grad()
    return flops


def step_row(name: str, trainer, inputs, counted: int, precision: str, ctx: BenchContext, **extra) -> dict:
    """One table row: ``trainer.step(inputs)`` timed, its counted FLOPs as a fraction of the peak."""
    step = measure(lambda: trainer.step(inputs), ctx.device, ctx.warmup, ctx.repeats)
    achieved, peak = counted / step["median_s"], peak_for(ctx, precision)
    return {"model": name, **extra, "precision": precision, "flops_counted": counted, "step_s": step["median_s"],
            "min_s": step["min_s"], "max_s": step["max_s"], "achieved_tflops": achieved / 1e12,
            "peak_tflops": peak / 1e12, "mfu": achieved / peak}


def tokenizer_rows(batch_size: int | None, precisions: list[str], ctx: BenchContext) -> list[dict]:
    """The default tokenizer's training step (random images at data.image_size), per precision."""
    from barlab.pipeline.tokenizer_stage import build_tokenizer_module

    cfg = compose_generator("tiny")
    batch_size = batch_size or int(cfg.data.batch_size)
    shape = (batch_size, int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    images = torch.rand(shape, generator=torch.Generator().manual_seed(ctx.seed)) * 2 - 1
    rows = []
    for precision in precisions:
        torch.manual_seed(ctx.seed)
        step = BareTokenizerStep(build_tokenizer_module(cfg), ctx.device, precision)
        counted = train_step_flops(step, images)
        rows.append(step_row("tokenizer", step, images, counted, precision, ctx, params=count_params(step.module),
                             batch=batch_size))
    return rows


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    precision = auto_precision() if ctx.device.type == "cuda" else "32-true"
    cpu_bf16 = ctx.device.type == "cpu" and bf16_supported(ctx.device)
    precisions = [precision] + (["bf16-mixed"] if cpu_bf16 else [])
    rows, ratios = [], {}

    def row_of(model: str, prec: str) -> dict:
        return next(r for r in rows if r["model"] == model and r["precision"] == prec)

    for name, preset, overrides, grid, bits, batch_size in s["models"]:
        cfg = compose_generator(preset, "mbm", [*overrides, "head.allocation=null"])
        for prec in precisions if preset == "tiny" else [precision]:
            module = build_module(cfg, grid, bits, 1000 if preset.startswith("bar") else 10, ctx.device, ctx.seed)
            batch = random_batch(module, batch_size, ctx.seed)
            trainer = BareTrainer(module, ctx.device, prec)
            counted, analytic = train_step_flops(trainer, batch), analytic_flops(module, batch_size)
            rows.append(step_row(name, trainer, batch, counted, prec, ctx, params=count_params(module),
                                 batch=batch_size, ar_steps=module.backbone.seq_len, flops_analytic=analytic,
                                 counted_over_analytic=ratio(counted, analytic)))
        ratios[f"mfu_{preset}"] = row_of(name, precision)["mfu"]
    rows += tokenizer_rows(s["tokenizer_batch"], precisions, ctx)
    ratios["mfu_tokenizer"] = row_of("tokenizer", precision)["mfu"]
    if cpu_bf16:
        for model in ("tiny", "tokenizer"):
            ratios[f"bf16_speedup_{model}"] = ratio(row_of(model, "32-true")["step_s"],
                                                    row_of(model, "bf16-mixed")["step_s"])
    return {"rows": rows, "ratios": ratios, "peaks_tflops": {k: v and v / 1e12 for k, v in peaks(ctx).items()},
            "notes": [peak_note(ctx)]}


def plot(result: dict):
    """Achieved TFLOP/s per model and precision against the measured peaks, MFU on each bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    rows = result["rows"]
    labels = [f"{r['model']}\n{'bf16' if r['precision'] == 'bf16-mixed' else r['precision']}" for r in rows]
    bars = ax.bar(range(len(rows)), [r["achieved_tflops"] for r in rows], label="achieved (training step)",
                  color=["tab:orange" if r["precision"] == "bf16-mixed" else "tab:blue" for r in rows])
    for bar, r in zip(bars, rows):
        ax.annotate(f"MFU {r['mfu']:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    for (dtype, value), style in zip(result["peaks_tflops"].items(), ("--", ":")):
        if value:
            ax.axhline(value, linestyle=style, color="k", label=f"{dtype} matmul peak")
    ax.set_yscale("log")
    ax.set_ylabel("TFLOP/s")
    ax.legend(fontsize=7)
    speedups = ", ".join(f"{k.removeprefix('bf16_speedup_')} {v:.2f}x" for k, v in result["ratios"].items()
                         if k.startswith("bf16_speedup") and v)
    ax.set_title("training-step MFU (of the peak of its precision)"
                 + (f"; bf16 autocast speed-up: {speedups}" if speedups else ""), fontsize=8)
    fig.tight_layout()
    return fig
