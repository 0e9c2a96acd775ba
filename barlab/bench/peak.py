"""This machine's matmul peak, measured once per bench run and shared by the benchmarks that give
a fraction of it (``mfu``: the training step; ``sampling``: the sampler).

The peak is the best FLOP/s of ``torch.matmul`` of two n x n matrices (2 n^3 FLOPs) over the run's
warm-up + repeats calls, in fp32 and, where the hardware has it (CUDA bf16, or a CPU with
avx512_bf16 / AMX), bf16.
"""

from __future__ import annotations

import torch

from barlab.bench.context import BenchContext
from barlab.bench.machine import cpu_has_bf16
from barlab.bench.timing import measure

MATMUL_N = {"ci": 256, "real": 2048, "real_cuda": 8192}  # n of the n x n x n matmul per size
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def matmul_n(ctx: BenchContext) -> int:
    return ctx.pick(MATMUL_N)


def matmul_peak(n: int, dtype: torch.dtype, ctx: BenchContext) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` over warm-up + repeats calls."""
    a = torch.randn(n, n, device=ctx.device).to(dtype)
    b = torch.randn(n, n, device=ctx.device).to(dtype)
    stats = measure(lambda: torch.matmul(a, b), ctx.device, ctx.warmup, ctx.warmup + ctx.repeats)
    return 2 * n**3 / stats["min_s"]


def peaks(ctx: BenchContext) -> dict[str, float | None]:
    """``{"fp32": FLOP/s, "bf16": FLOP/s or None}``: measured on the first call of a run, then reused
    (stored on ``ctx.peaks``), so every fraction in one report divides by the same figure."""
    if not ctx.peaks:
        n = matmul_n(ctx)
        ctx.peaks["fp32"] = matmul_peak(n, torch.float32, ctx)
        ctx.peaks["bf16"] = matmul_peak(n, torch.bfloat16, ctx) if bf16_supported(ctx.device) else None
    return ctx.peaks


def peak_for(ctx: BenchContext, precision: str) -> float:
    """The peak a run in Lightning ``precision`` is measured against (bf16 for ``bf16-mixed``)."""
    table = peaks(ctx)
    return table["bf16"] if precision == "bf16-mixed" and table["bf16"] else table["fp32"]


def peak_note(ctx: BenchContext) -> str:
    table, n = peaks(ctx), matmul_n(ctx)
    bf16 = f"{table['bf16'] / 1e12:.3g} TFLOP/s" if table["bf16"] else "not measured (no native bf16)"
    return f"peak: best {n}^3 matmul, fp32 {table['fp32'] / 1e12:.3g} TFLOP/s, bf16 {bf16}"
