"""``bench=generation_budget``: the speed side of study 3 (``sweeps/generation_budget.yaml``), every
generator of the study timed side by side in one process.

The study's points, composed as the sweep composes them (``experiment=head_study token_head=<t>
channels_per_token=<c>``): binary FSQ at 16·c bits per token with the MBM or the bitwise head, and a KL
latent of c channels with the diffusion head, for c = 1, 2, 4 (``ci``: c = 1, 2 at tiny widths). Each
point's generator is built with random weights (no sampler stops early, so the arithmetic is the trained
one's) and gets:

- ``train``: one training step as the study trains (the module's ``training_step`` with shuffling, label
  drop and RAR orders, backward, clip, AdamW, schedule; :class:`barlab.bench.steps.BareTrainer`) on a
  random batch of the recipe's size (``generator.data.batch_size``); steps/s;
- ``sample``: one ``ARSampler.sample`` call of ``sample_batch`` images with the run's sampling settings and
  CFG on (g = 3; every point of the study's grid has g > 1, and the cost does not depend on g); images/s
  of tokens, without the tokenizer's decode (the same for every head of one tokenizer).

The points are timed in rounds, in a rotated order each round, and each number is the median over rounds.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from barlab.bench.context import BenchContext, ratio
from barlab.bench.models import build_module, compose_train, count_params
from barlab.bench.steps import BareTrainer, random_batch
from barlab.bench.timing import measure
from barlab.generator.image_generator import sampler_kwargs

log = logging.getLogger("barlab")
TOKEN_HEADS = ("fsq_mbm", "fsq_bitwise", "kl_diffusion")
GUIDANCE, NUM_CLASSES = 3.0, 10
TINY = ("generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
        "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2")
SIZES = {
    "ci": dict(channels=(1, 2), batch=4, sample_batch=4, rounds=2, overrides=(*TINY, "data.image_size=16")),
    # the study's own sizes (experiment=head_study): Fashion-MNIST's 8 x 8 grid, the recipe's batch
    "real": dict(channels=(1, 2, 4), batch=None, sample_batch=100, rounds=3, overrides=()),
}
HEAD_OVERRIDES = {"ci": {"fsq_mbm": ("head.width=32", "head.depth=1"), "fsq_bitwise": (),
                         "kl_diffusion": ("head.width=32", "head.depth=1", "head.sampling_steps=5")},
                  "real": {"fsq_mbm": (), "fsq_bitwise": (), "kl_diffusion": ()}}


def point_config(token_head: str, c: int, overrides: tuple[str, ...]):
    """The composed ``train`` config of one study point."""
    return compose_train(["experiment=head_study", f"token_head={token_head}", f"channels_per_token={c}",
                          *overrides])


def build_point(cfg, ctx: BenchContext):
    """(GeneratorModule, token grid, bits per token) of a composed study point, random weights."""
    side = int(cfg.data.image_size) // int(cfg.tokenizer.encoder.downsample)
    grid = (side, side)
    if cfg.head._target_.endswith("DiffusionHead"):
        c = int(cfg.tokenizer.quantizer.channels)
        return build_module(cfg, grid, 16 * c, NUM_CLASSES, ctx.device, ctx.seed, token_channels=c), grid, 16 * c
    bits = int(cfg.tokenizer.bits)
    return build_module(cfg, grid, bits, NUM_CLASSES, ctx.device, ctx.seed), grid, bits


class Point:
    """One study point: its generator, a training loop on one random batch, and its sampling call."""

    def __init__(self, token_head: str, c: int, s: dict, ctx: BenchContext):
        cfg = point_config(token_head, c, (*s["overrides"], *HEAD_OVERRIDES[ctx.size][token_head]))
        module, grid, bits = build_point(cfg, ctx)
        batch_size = s["batch"] or int(cfg.generator.data.batch_size)
        self.row = {"token_head": token_head, "channels_per_token": c, "bits_per_token": bits,
                    "bits_per_image": bits * grid[0] * grid[1], "ar_steps": module.backbone.seq_len,
                    "head": type(module.head).__name__, "params": count_params(module.backbone) +
                    count_params(module.head), "batch": batch_size, "sample_batch": s["sample_batch"]}
        self.batch = random_batch(module, batch_size, ctx.seed)
        self.trainer = BareTrainer(module, ctx.device, "32-true", total_steps=10_000)
        self.sampling = {**sampler_kwargs(module.sampling), "guidance": GUIDANCE}
        self.labels = torch.arange(s["sample_batch"], device=ctx.device) % NUM_CLASSES
        self.module, self.ctx = module, ctx
        self.train_s: list[float] = []
        self.sample_s: list[float] = []

    def time_once(self, first: bool) -> None:
        """One round: ``ctx.repeats`` training steps (after ``ctx.warmup`` in the first round) and one
        sampling call (after one untimed call in the first round); their medians."""
        ctx = self.ctx
        self.train_s.append(measure(lambda: self.trainer.step(self.batch), ctx.device, ctx.warmup if first else 0,
                                    ctx.repeats)["median_s"])
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        self.sample_s.append(measure(lambda: self.module.sampler.sample(self.labels, generator=gen, **self.sampling),
                                     ctx.device, int(first), 1)["median_s"])

    def result(self) -> dict:
        train, sample = statistics.median(self.train_s), statistics.median(self.sample_s)
        return {**self.row, "train_step_s": train, "train_steps_per_s": 1.0 / train,
                "train_images_per_s": self.row["batch"] / train, "sample_s": sample,
                "sample_images_per_s": self.row["sample_batch"] / sample,
                "sample_images_per_s_min": self.row["sample_batch"] / max(self.sample_s),
                "sample_images_per_s_max": self.row["sample_batch"] / min(self.sample_s),
                "rounds": len(self.sample_s)}


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    points = [Point(t, c, s, ctx) for c in s["channels"] for t in TOKEN_HEADS]
    start = time.perf_counter()
    for r in range(s["rounds"]):
        shift = r % len(points)
        for point in points[shift:] + points[:shift]:      # a rotated order each round
            point.time_once(first=r == 0)
        log.info("generation_budget: round %d/%d of %d points done, %.0f s", r + 1, s["rounds"], len(points),
                 time.perf_counter() - start)
    rows = [p.result() for p in points]
    return {"rows": rows, "ratios": budget_ratios(rows),
            "notes": [f"study 3's generators (experiment=head_study token_head=... channels_per_token=...), "
                      f"random weights, {' '.join(s['overrides']) or 'the study sizes'}; fp32",
                      f"train: one full step (training_step, backward, clip, AdamW) on a batch of the recipe's "
                      f"size; sample: {s['sample_batch']} images per call, CFG g = {GUIDANCE}, the run's "
                      "sampling settings, tokens only (no decode)",
                      f"{s['rounds']} rounds in rotated order; medians over rounds"]}


def point_value(rows: list[dict], token_head: str, c: int, key: str) -> float | None:
    return next((r[key] for r in rows if r["token_head"] == token_head and r["channels_per_token"] == c), None)


def budget_ratios(rows: list[dict]) -> dict:
    """Per c: sampling images/s and training steps/s of each discrete head over the diffusion head."""
    out = {}
    for c in sorted({r["channels_per_token"] for r in rows}):
        for head in ("fsq_mbm", "fsq_bitwise"):
            for key, name in (("sample_images_per_s", "sample"), ("train_steps_per_s", "train")):
                out[f"{name}_{head}_over_kl_diffusion_c{c}"] = ratio(point_value(rows, head, c, key),
                                                                     point_value(rows, "kl_diffusion", c, key))
    return out


def plot(result: dict):
    """Sampling images/s and training steps/s against bits per image, one line per tokenizer and head."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for head in TOKEN_HEADS:
        part = sorted((r for r in rows if r["token_head"] == head), key=lambda r: r["bits_per_image"])
        x = [r["bits_per_image"] for r in part]
        axes[0].errorbar(x, [r["sample_images_per_s"] for r in part], marker="o", label=head,
                         yerr=[[r["sample_images_per_s"] - r["sample_images_per_s_min"] for r in part],
                               [r["sample_images_per_s_max"] - r["sample_images_per_s"] for r in part]])
        axes[1].plot(x, [r["train_steps_per_s"] for r in part], marker="o", label=head)
    for ax, label in ((axes[0], "sampling images/s (CFG, tokens only)"), (axes[1], "training steps/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bits per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("study 3: the generators' speed side by side")
    fig.tight_layout()
    return fig
