"""``bench=sweep_cost``: GPU-hours of the paper-scale studies, an ESTIMATE from counted FLOPs (not measured).

The sweep files (:data:`SWEEPS`: ``sweeps/bit_budget_paper.yaml``, ``sweeps/head_type_paper.yaml``) are
composed point by point, as their multiruns expand them (:mod:`barlab.config.sweeps`), and each point's
recipe is read from its own config: steps, global batch, the GAN's start and alternation, the images
pretokenized. FLOPs are counted by ``FlopCounterMode`` (matmuls, convolutions, attention), at batch 1:

- the tokenizer, on the CPU, its pretrained parts random stand-ins of the same shapes
  (:mod:`barlab.bench.stand_in_weights`): per image, the tokenizer's step before the GAN, its step with
  the GAN's hinge term, the discriminator's hinge step, and the forward pass that makes the
  discriminator's reconstruction (with ``tokenizer.loss.gan.alternate``, the official loop, the GAN
  phase alternates a tokenizer step and a discriminator step, each one of the ``max_steps``). Counted
  once per quantizer class of a sweep: the bit width changes only the quantizer's two 1x1 projections
  (under 0.01% of a step), and the KL latent's projections are as small.
- pretokenization (``stage=all``): the tokenizer's ``encode_bits`` per image, for every training image
  and its flip and every validation image, once per tokenizer (its jobs share the token shards).
- the generator, on the meta device (no memory, no time): the training step's forward and backward of
  one sequence (token shuffling, RAR order, backbone, head loss), per head and bit width.

A point that the generator's config check refuses (:func:`barlab.pipeline.preflight.check_generator`:
the linear head past ``head.max_memory_gb``) ends at once: 0 GPU-hours, with the reason. Not counted:
validation, rFID / gFID (a forward pass per image, well under 1% of a point) and data loading.

GPU-hours = FLOPs / (MFU x peak) / 3600 at :data:`barlab.bench.paper_tokenizer.ESTIMATE` (40% of an H100's
989 TFLOP/s dense bf16: an assumption). Each sweep's row also says whether its launcher settings cover
:data:`SAFETY` times the estimated wall time of its longest job: ``timeout_min x (max_num_timeout + 1)``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from barlab.bench.context import BenchContext
from barlab.bench.mfu import counted_flops
from barlab.bench.paper_tokenizer import ESTIMATE
from barlab.bench.stand_in_weights import FULL_SIZES, TINY_OVERRIDES, TINY_SIZES, pretrained_overrides, write_stand_ins
from barlab.config.sweeps import compose_sweep, sweep_points
from barlab.errors import ConfigError
from barlab.runtime.distributed import world_size

SWEEPS = ("bit_budget_paper", "head_type_paper")
# the launcher must allow this many times the estimated wall time (the utilisation is an assumption)
SAFETY = 2.0
# ImageNet's validation split (an image folder has no count knob; WebDataset's is data.val_samples)
IMAGENET_VAL = 50_000
# The paper tokenizer shrunk to seconds on a CPU (4x4 tokens at 32 px), on the sweeps' ImageFolder data,
# and BAR-B's generator at tiny widths: the sweep files' points, runnable anywhere.
TINY_TOKENIZER = [o for o in TINY_OVERRIDES if not o.startswith(("tokenizer=", "data=", "tokenizer.bits="))]
# (the MBM head keeps BAR-B's 2048 x 3: on the meta device its size costs nothing)
TINY_GENERATOR = ["generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
                  "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2"]
SIZES = {
    "ci": {"overrides": [*TINY_TOKENIZER, *TINY_GENERATOR], "sizes": TINY_SIZES, "flop_batch": 2},
    "real": {"overrides": [], "sizes": FULL_SIZES, "flop_batch": 1},
}


def gpu_hours(flops: float) -> float:
    """GPU-hours of ``flops`` at the assumed utilisation (:data:`ESTIMATE`)."""
    return flops / (ESTIMATE["bf16_peak_tflops"] * 1e12 * ESTIMATE["mfu"]) / 3600


def tokenizer_step_flops(cfg: DictConfig, flop_batch: int) -> dict[str, float]:
    """Per image, counted: ``off`` (the tokenizer's step, GAN off), ``gan_g`` (its step with the hinge
    term), ``disc`` (the discriminator's hinge step), ``recon`` (a reconstruction without gradients),
    ``encode`` (``encode_bits``: pretokenization; discrete tokenizers only)."""
    from barlab.pipeline.tokenizer_stage import build_tokenizer_module

    torch.manual_seed(0)
    module = build_tokenizer_module(cfg).train()
    side, channels = int(cfg.data.image_size), int(cfg.data.channels)
    images = torch.rand(flop_batch, channels, side, side) * 2 - 1
    made: dict[str, torch.Tensor] = {}

    def count(fn: Callable[[], object]) -> float:
        flops = counted_flops(fn) / flop_batch
        module.zero_grad(set_to_none=True)
        return flops

    def reconstruct() -> None:
        with torch.no_grad():
            made["recon"] = module.tokenizer(images)[0]

    out = {"off": count(lambda: module.autoencoder_loss(images, False)[0].backward()), "recon": count(reconstruct)}
    if module.tokenizer.is_discrete:
        out["encode"] = count(lambda: module.tokenizer.encode_bits(images))
    if module.discriminator is not None:
        out["gan_g"] = count(lambda: module.autoencoder_loss(images, True)[0].backward())
        out["disc"] = count(lambda: module.discriminator_loss(images, made["recon"]).backward())
    return out


def tokenizer_training_flops(cfg: DictConfig, per_image: dict[str, float]) -> float:
    """The tokenizer stage's training FLOPs: ``tokenizer.max_steps`` steps of the global batch, the GAN
    from ``loss.gan.start_step`` on (alternating: every other step the discriminator's, on a reconstruction
    made for it; else both in every step, the discriminator on the tokenizer's reconstruction)."""
    tok = cfg.tokenizer
    batch = int(tok.global_batch_size or int(cfg.data.batch_size) * world_size(cfg.trainer))
    steps = int(tok.max_steps)
    gan = tok.loss.gan
    gan_steps = max(0, steps - int(gan.start_step)) if "gan_g" in per_image else 0
    flops = (steps - gan_steps) * per_image["off"]
    if gan.get("alternate"):
        disc_steps = gan_steps // 2
        flops += (gan_steps - disc_steps) * per_image["gan_g"] + disc_steps * (per_image["recon"] + per_image["disc"])
    elif gan_steps:
        flops += gan_steps * (per_image["gan_g"] + per_image["disc"])
    return flops * batch


def pretokenized_images(cfg: DictConfig) -> int:
    """Images the generator stage encodes: its ``pretokenize`` limits, else the whole splits (with flips)."""
    limits, data = cfg.generator.data.pretokenize, cfg.data
    train = limits.train_images or data.get("train_samples") or data.get("epoch_length")
    val = limits.val_images or data.get("val_samples") or IMAGENET_VAL
    return int(train) * (2 if limits.flip else 1) + int(val)


def generator_step_flops(cfg: DictConfig) -> float:
    """Counted FLOPs of the generator's training step (forward + backward) for one sequence, built on the
    meta device over the token grid and bits of ``cfg``'s tokenizer: ``training_step``'s arithmetic
    (RAR order, label drop, backbone, head loss) without its logging, which reads values back."""
    from barlab.lightning import generator_module
    from barlab.pipeline.generator_stage import build_generator_module
    from barlab.pipeline.preflight import token_facts

    bits, grid = token_facts(cfg)
    with torch.device("meta"):
        module = build_generator_module(cfg, nn.Identity(), {"grid": list(grid), "bits_per_token": bits}, 1000)
    module.train()
    bits_in = torch.zeros(1, grid[0] * grid[1], bits, device="meta")
    label = torch.zeros(1, dtype=torch.long, device="meta")

    def step() -> None:
        order = generator_module.sample_orders(1, module.backbone.seq_len, 1.0, device=bits_in.device)
        labels = module.backbone.drop_labels(label, module.label_drop)
        module._loss({"bits": bits_in}, order, labels).loss.backward()

    return float(counted_flops(step))


def launcher_check(cfg: DictConfig, wall_hours: float) -> dict:
    """Whether ``hydra.launcher`` allows :data:`SAFETY` x ``wall_hours``, and the requeues that would."""
    launcher = cfg.hydra.launcher
    timeout_min, requeues = int(launcher.timeout_min), int(launcher.max_num_timeout)
    needed = max(1, math.ceil(SAFETY * wall_hours * 60 / timeout_min))
    return {"timeout_min": timeout_min, "max_num_timeout": requeues, "allowed_hours": timeout_min * (requeues + 1) / 60,
            "periods_at_estimate": math.ceil(wall_hours * 60 / timeout_min), "max_num_timeout_needed": needed - 1,
            "covers": requeues + 1 >= needed}


class SweepCost:
    """The estimate of one run: tokenizer counts shared between the sweeps (per quantizer class)."""

    def __init__(self, ctx: BenchContext, stand_ins: dict[str, Path]):
        self.s = ctx.pick(SIZES)
        self.extra = [*self.s["overrides"], *pretrained_overrides(stand_ins)]
        self.tokenizer_counts: dict[str, dict[str, float]] = {}

    def compose(self, name: str, point: list[str]) -> DictConfig:
        cfg = compose_sweep(name, [*point, *self.extra])
        with open_dict(cfg):  # the run folder, as a job's (the hydra node's own interpolations need it)
            cfg.paths.output_dir = cfg.hydra.sweep.dir
        return cfg

    def tokenizer(self, cfg: DictConfig) -> dict[str, float]:
        family = str(cfg.tokenizer.quantizer._target_)
        if family not in self.tokenizer_counts:
            self.tokenizer_counts[family] = tokenizer_step_flops(cfg, self.s["flop_batch"])
        return self.tokenizer_counts[family]

    def point(self, name: str, point: list[str]) -> tuple[dict, DictConfig]:
        cfg = self.compose(name, point)
        row = {"sweep": name, "point": " ".join(point), "gpus": world_size(cfg.trainer)}
        per_image = self.tokenizer(cfg)
        if cfg.stage == "tokenizer":
            row["tokenizer_tflop"] = tokenizer_training_flops(cfg, per_image) / 1e12
        else:
            from barlab.pipeline.preflight import check_generator

            try:
                check_generator(cfg)
            except ConfigError as err:
                return {**row, "status": "refused", "reason": str(err), "gpu_hours": 0.0, "wall_hours": 0.0}, cfg
            gen = cfg.generator
            batch = int(gen.global_batch_size or int(gen.data.batch_size) * world_size(cfg.trainer))
            per_sequence = generator_step_flops(cfg)
            row["tflop_per_sequence"] = per_sequence / 1e12
            row["generator_tflop"] = per_sequence * int(gen.max_steps) * batch / 1e12
            # pretokenization: once per tokenizer, charged to the sweep (see sweep), not to each of its jobs
            row["pretokenize_tflop"] = per_image["encode"] * pretokenized_images(cfg) / 1e12
        flops = 1e12 * (row.get("tokenizer_tflop", 0.0) + row.get("generator_tflop", 0.0))
        row.update(status="trained", gpu_hours=gpu_hours(flops), wall_hours=gpu_hours(flops) / row["gpus"])
        return row, cfg

    def sweep(self, name: str, select: Sequence[str] = ()) -> tuple[list[dict], dict]:
        """Rows of the sweep's points (``select``: swept values replaced, as on the command line) and its summary."""
        rows, cfgs = [], []
        for point in sweep_points(compose_sweep(name, self.extra), select):
            row, cfg = self.point(name, point)
            rows.append(row)
            cfgs.append(cfg)
        # once per tokenizer (per bit width), shared by its jobs: pretokenization, and for stage=all the
        # tokenizer's training when the cache does not hold it yet (the bit-budget sweep trains it)
        per_tokenizer: dict[int, tuple[dict, DictConfig]] = {}
        for row, cfg in zip(rows, cfgs):
            if "pretokenize_tflop" in row:
                per_tokenizer.setdefault(int(cfg.tokenizer.bits), (row, cfg))
        pretokenize_hours = gpu_hours(sum(1e12 * row["pretokenize_tflop"] for row, _ in per_tokenizer.values()))
        uncached_hours = gpu_hours(sum(tokenizer_training_flops(cfg, self.tokenizer(cfg))
                                       for _, cfg in per_tokenizer.values()))
        longest = max(rows, key=lambda r: r["wall_hours"])
        summary = {"sweep": name, "jobs": len(rows), "trained": sum(r["status"] == "trained" for r in rows),
                   "refused": [r["point"] for r in rows if r["status"] == "refused"],
                   "gpu_hours": sum(r["gpu_hours"] for r in rows) + pretokenize_hours,
                   "pretokenize_gpu_hours": pretokenize_hours,
                   "tokenizers_if_not_cached_gpu_hours": uncached_hours,
                   "longest_job_wall_hours": longest["wall_hours"],
                   "launcher": launcher_check(cfgs[rows.index(longest)], longest["wall_hours"])}
        return rows, summary


# size=ci (the suite's `bench=all`): a few points, enough to exercise every path; composing is most of the time
CI_POINTS = {"bit_budget_paper": ["point=fsq16,kl1"], "head_type_paper": ["tokenizer.bits=16"]}


def run(ctx: BenchContext, select: dict[str, Sequence[str]] | None = None) -> dict:
    """Every point of :data:`SWEEPS` (at ``size=ci`` only :data:`CI_POINTS`); ``select``: per sweep,
    overrides of its swept values (fewer points)."""
    s = ctx.pick(SIZES)
    if select is None and ctx.size == "ci":
        select = CI_POINTS
    with tempfile.TemporaryDirectory() as tmp:
        cost = SweepCost(ctx, write_stand_ins(Path(tmp), s["sizes"], ctx.seed))
        rows, sweeps = [], {}
        for name in SWEEPS:
            sweep_rows, sweeps[name] = cost.sweep(name, (select or {}).get(name, ()))
            rows += sweep_rows
    notes = [f"GPU-hours: an ESTIMATE, not measured: counted FLOPs at {ESTIMATE['mfu']:.0%} (assumed) of an "
             f"{ESTIMATE['gpu']}'s {ESTIMATE['bf16_peak_tflops']:.0f} TFLOP/s dense bf16 peak"]
    notes += [f"{name}: {summary['jobs']} jobs ({summary['trained']} trained, refused: "
              f"{', '.join(summary['refused']) or 'none'}), {summary['gpu_hours']:.4g} GPU-hours; longest job "
              f"{summary['longest_job_wall_hours']:.3g} h on its GPUs; launcher {summary['launcher']}"
              for name, summary in sweeps.items()]
    ratios = {f"gpu_hours_estimate_{name}": summary["gpu_hours"] for name, summary in sweeps.items()}
    return {"rows": rows, "sweeps": sweeps, "tokenizer_flops_per_image": cost.tokenizer_counts,
            "estimate": {**ESTIMATE, "safety": SAFETY}, "ratios": ratios, "notes": notes}


def plot(result: dict):
    """Estimated GPU-hours per point, one bar each, refused points marked."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    colours = {name: colour for name, colour in zip(SWEEPS, ("tab:blue", "tab:orange"))}
    ax.bar(range(len(rows)), [r["gpu_hours"] for r in rows], color=[colours.get(r["sweep"], "tab:gray") for r in rows])
    for i, r in enumerate(rows):
        if r["status"] == "refused":
            ax.annotate("refused", (i, 0), ha="center", va="bottom", rotation=90, fontsize=7, color="tab:red")
    ax.set_xticks(range(len(rows)), [r["point"].replace("tokenizer.bits=", "k=") for r in rows], rotation=90,
                  fontsize=7)
    ax.set_ylabel("GPU-hours (ESTIMATE)")
    ax.set_title(f"paper-scale sweeps, estimated at {ESTIMATE['mfu']:.0%} MFU (assumed)", fontsize=9)
    fig.tight_layout()
    return fig
