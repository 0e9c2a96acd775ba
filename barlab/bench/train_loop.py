"""``bench=train_loop``: :class:`GeneratorModule` under ``lightning.Trainer`` (no logger, checkpoint,
progress bar or model summary) against a bare PyTorch loop (:class:`barlab.bench.steps.BareTrainer`)
with the same model (same seed), optimiser, schedule, batch (one batch repeated, through the same
kind of DataLoader) and precision. A step's time is the gap between consecutive step ends, so
Lightning's own work between steps (hooks, logging, batch transfer) is counted in full.

The two loops run in interleaved rounds (bare, Lightning; then Lightning, bare; ...), each round on
fresh, identically seeded modules, and the overhead is the median over rounds of each round's
Lightning / bare ratio. One run of each in a row is not enough on a shared machine: the load drifts
by more than the overhead (two back-to-back one-shot runs gave -4 % and -12 %), and whichever loop
ran first took the warmer or the busier half."""

from __future__ import annotations

import statistics
import time

import lightning as L
from torch.utils.data import DataLoader

from barlab.bench.context import BenchContext
from barlab.bench.models import build_module, compose_generator
from barlab.bench.steps import BareTrainer, RepeatBatch, random_batch, step_times
from barlab.bench.timing import device_sync, timing_summary
from barlab.pipeline.trainer import auto_precision

SIZES = {
    "ci": dict(grid=(4, 4), bits=4, batch=4, overrides=("generator.backbone.width=32", "generator.backbone.depth=1",
                                                        "generator.backbone.heads=2", "generator.backbone.cond_dim=32",
                                                        "generator.backbone.class_repeat=2",
                                                        "head.width=32", "head.depth=1")),
    # the tiny preset at its own sizes: Fashion-MNIST's 8x8 grid of 16-bit tokens, generator.data.batch_size
    "real": dict(grid=(8, 8), bits=16, batch=None, overrides=()),
}
NUM_CLASSES = 10
ROUNDS = {"ci": 2, "real": 4}


class StepEnds(L.Callback):
    """Wall-clock time at the end of every training batch (device synchronised)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        device_sync(pl_module.device)
        self.ends.append(time.perf_counter())


def setup(ctx: BenchContext, s: dict):
    """(model factory, batch, precision): a fresh, identically seeded module per loop."""
    cfg = compose_generator("tiny", "mbm", s["overrides"])
    batch_size = s["batch"] or int(cfg.generator.data.batch_size)
    make = lambda: build_module(cfg, s["grid"], s["bits"], NUM_CLASSES, ctx.device, ctx.seed)  # noqa: E731
    precision = auto_precision() if ctx.device.type == "cuda" else "32-true"
    return make, random_batch(make(), batch_size, ctx.seed), precision


def bare_step_times(make, batch: dict, steps: int, ctx: BenchContext, precision: str) -> list[float]:
    """Step durations (steps - 1,) of the bare loop over ``steps`` repeats of ``batch``."""
    trainer = BareTrainer(make(), ctx.device, precision, total_steps=steps)
    return step_times(trainer.step, DataLoader(RepeatBatch(batch, steps), batch_size=None), ctx.device)


def lightning_step_times(make, batch: dict, steps: int, ctx: BenchContext, precision: str) -> list[float]:
    """Step durations (steps - 1,) of ``Trainer.fit`` over ``steps`` repeats of ``batch``."""
    timer = StepEnds()
    trainer = L.Trainer(accelerator=ctx.device.type, devices=1, max_steps=steps, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(make(), train_dataloaders=DataLoader(RepeatBatch(batch, steps), batch_size=None))
    return [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:])]


def measure_bare(ctx: BenchContext) -> dict:
    """The bare loop alone: ``{"step": timing_summary(...), "batch": B, "samples_per_s": ...}`` (``data`` and
    ``mfu`` use it when ``train_loop`` has not run)."""
    make, batch, precision = setup(ctx, ctx.pick(SIZES))
    stats = timing_summary(bare_step_times(make, batch, ctx.warmup + ctx.repeats + 1, ctx, precision)[ctx.warmup:])
    return {"step": stats, "batch": batch["bits"].shape[0], "samples_per_s": batch["bits"].shape[0] / stats["median_s"]}


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    make, batch, precision = setup(ctx, s)
    steps = ctx.warmup + ctx.repeats + 1
    timers = {"bare": bare_step_times, "lightning": lightning_step_times}
    times: dict[str, list[float]] = {loop: [] for loop in timers}
    overheads = []
    for r in range(ctx.pick(ROUNDS)):
        medians = {}
        for loop in (("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")):
            measured = timers[loop](make, batch, steps, ctx, precision)[ctx.warmup:]
            times[loop] += measured
            medians[loop] = timing_summary(measured)["median_s"]
        overheads.append(100.0 * (medians["lightning"] / medians["bare"] - 1.0))
    rows = []
    for loop, measured in times.items():
        stats = timing_summary(measured)
        rows.append({"loop": loop, "batch": batch["bits"].shape[0], "precision": precision, "steps": stats["n"],
                     "step_s": stats["median_s"], "min_s": stats["min_s"], "max_s": stats["max_s"],
                     "iqr_s": stats["iqr_s"], "samples_per_s": batch["bits"].shape[0] / stats["median_s"]})
    overhead = statistics.median(overheads)
    return {"rows": rows, "ratios": {"lightning_overhead_pct": overhead},
            "overhead_pct_rounds": overheads, "model_samples_per_s": rows[0]["samples_per_s"],
            "notes": [f"tiny generator {' '.join(s['overrides']) or '(preset widths)'}, grid {s['grid']}, "
                      f"{s['bits']} bits, MBM head; step = training_step + backward + clip + AdamW + LR schedule",
                      f"{len(overheads)} interleaved rounds; Lightning overhead per round "
                      + ", ".join(f"{o:+.1f}%" for o in overheads) + f" (median {overhead:+.1f}%)"]}


def plot(result: dict):
    """Median step time per loop, min-max as error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    rows = result["rows"]
    ax.bar([r["loop"] for r in rows], [r["step_s"] * 1e3 for r in rows],
           yerr=[[(r["step_s"] - r["min_s"]) * 1e3 for r in rows], [(r["max_s"] - r["step_s"]) * 1e3 for r in rows]])
    ax.set_ylabel("training step (ms)")
    rounds = result.get("overhead_pct_rounds", [])
    spread = f" (rounds {min(rounds):+.1f} to {max(rounds):+.1f}%)" if rounds else ""
    ax.set_title(f"Lightning overhead {result['ratios']['lightning_overhead_pct']:+.1f}%{spread}", fontsize=9)
    fig.tight_layout()
    return fig
