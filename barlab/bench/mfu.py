"""``bench=mfu``: model FLOPs utilisation of a generator training step on this machine.

Peak: :func:`barlab.bench.peak.peaks` (the best n x n matmul, fp32 and bf16 where native). Step
FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` over training_step + backward, and
analytically, 6 x (matmul weights x tokens) + 12 x depth x B x S^2 x width for attention (S = the
backbone's slots, prefix included). Achieved FLOP/s = counted FLOPs / the bare training step's
median time (optimizer included); MFU = that / the peak of the step's precision.
"""

from __future__ import annotations

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from barlab.bench.context import BenchContext, ratio
from barlab.bench.models import build_module, compose_generator, count_params
from barlab.bench.peak import peak_for, peak_note, peaks
from barlab.bench.steps import BareTrainer, random_batch
from barlab.bench.timing import measure
from barlab.training.build import auto_precision

BAR_B_CI = ("generator.backbone.depth=1", "generator.head_width=256", "generator.head_depth=1")
BAR_B_CPU = ("generator.backbone.depth=2",)
SIZES = {
    "ci": dict(models=(("bar_b width, depth 1", "bar_b", BAR_B_CI, (4, 4), 4, 2),
                                   ("tiny", "tiny", (), (4, 4), 4, 4))),
    "real": dict(models=(("bar_b width, depth 2", "bar_b", BAR_B_CPU, (16, 16), 16, 2),
                                      ("tiny", "tiny", (), (8, 8), 16, 32))),
    "real_cuda": dict(models=(("bar_b", "bar_b", (), (16, 16), 16, 64),
                                           ("bar_l", "bar_l", (), (16, 16), 16, 16))),
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


def counted_flops(trainer: BareTrainer, batch: dict) -> int:
    """FLOPs of training_step + backward as FlopCounterMode counts them (matmuls, convolutions, SDPA)."""
    with FlopCounterMode(display=False) as counter:
        trainer.forward_backward(batch)
    trainer.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES) if not (ctx.size == "real" and ctx.device.type == "cuda") else SIZES["real_cuda"]
    precision = auto_precision() if ctx.device.type == "cuda" else "32-true"
    peak = peak_for(ctx, precision)
    rows, ratios = [], {}
    for name, preset, overrides, grid, bits, batch_size in s["models"]:
        cfg = compose_generator(preset, "mbm", [*overrides, "head.allocation=null"])
        module = build_module(cfg, grid, bits, 1000 if preset.startswith("bar") else 10, ctx.device, ctx.seed)
        batch = random_batch(module, batch_size, ctx.seed)
        trainer = BareTrainer(module, ctx.device, precision)
        counted, analytic = counted_flops(trainer, batch), analytic_flops(module, batch_size)
        step = measure(lambda: trainer.step(batch), ctx.device, ctx.warmup, ctx.repeats)  # noqa: B023
        achieved = counted / step["median_s"]
        rows.append({"model": name, "params": count_params(module), "batch": batch_size,
                     "ar_steps": module.backbone.seq_len, "precision": precision, "flops_counted": counted,
                     "flops_analytic": analytic, "counted_over_analytic": ratio(counted, analytic),
                     "step_s": step["median_s"], "min_s": step["min_s"], "max_s": step["max_s"],
                     "achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12, "mfu": achieved / peak})
        ratios[f"mfu_{preset}"] = achieved / peak
    return {"rows": rows, "ratios": ratios, "peaks_tflops": {k: v and v / 1e12 for k, v in peaks(ctx).items()},
            "notes": [peak_note(ctx)]}


def plot(result: dict):
    """Achieved TFLOP/s per model against the measured peaks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    rows = result["rows"]
    ax.bar([r["model"] for r in rows], [r["achieved_tflops"] for r in rows], label="achieved (training step)")
    for (dtype, value), style in zip(result["peaks_tflops"].items(), ("--", ":")):
        if value:
            ax.axhline(value, linestyle=style, color="k", label=f"{dtype} matmul peak")
    ax.set_yscale("log")
    ax.set_ylabel("TFLOP/s")
    ax.legend(fontsize=7)
    ax.set_title(", ".join(f"{r['model']}: MFU {r['mfu']:.1%}" for r in rows), fontsize=8)
    fig.tight_layout()
    return fig
