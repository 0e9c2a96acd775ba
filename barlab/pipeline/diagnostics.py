"""The generator's diagnostics after training: on real validation tokens, where it loses what it knows.

Runs the three measurements of :mod:`barlab.generator.diagnostics` with the run's sampling settings
and returns them flat, ready for the loggers and ``results.json`` (a sweep table shows them):

=================================  ========================================================================
``diag_first_step_acc_label``      bit accuracy with every bit of the token masked (r = 1), true label
``diag_first_step_acc_null``       the same with the null label (no class)
``diag_unmask_step{s}_acc``        accuracy of the bits the sampler fixes at unmasking step s, run from
                                   all-masked on the teacher-forced conditions (guidance, temperature and
                                   allocation of ``sampling``); one step for the linear and bitwise heads
``diag_sampled_bit_acc``           all bits of those sampled tokens
``diag_splice{j}_class_acc``       class accuracy (the evaluation classifier) of images whose first j AR
                                   steps are generated and the rest copied from a real image of that class
=================================  ========================================================================

A generator of continuous tokens (``head=diffusion``) has no bits: it gets the splice only.

``diagnostics.enabled=false`` turns them off; ``diagnostics.sequences`` and ``diagnostics.splice_samples``
size them. Splicing needs a classifier with the dataset's classes (``metrics.backend=classifier``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from barlab.generator.backbone import ARBackbone
from barlab.generator.diagnostics import (
    first_step_accuracy,
    guidance_per_row,
    splice,
    splice_points,
    teacher_forced,
    unmasking_step_accuracy,
)
from barlab.generator.heads import Head
from barlab.generator.image_generator import decode_steps, sampler_kwargs
from barlab.generator.sampler import ARSampler
from barlab.generator.token_shuffle import shuffle
from barlab.utils.image_grid import float_to_uint8

log = logging.getLogger("barlab")

Classify = Callable[[torch.Tensor], torch.Tensor]
"""uint8 images (N, C, H, W) -> predicted classes (N,) long."""


def take_sequences(batches: Iterable[dict], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` sequences of token batches ``{"bits": (B, h·w, k), "label": (B,)}`` (continuous
    token shards: ``"tokens"``) -> (tokens (n, h·w, k) float, labels (n,) long), n <= count."""
    bits, labels, have = [], [], 0
    for batch in batches:
        bits.append(batch["tokens" if "tokens" in batch else "bits"].float())
        labels.append(batch["label"].long())
        have += bits[-1].shape[0]
        if have >= count:
            break
    if not bits:
        raise ValueError("no validation token sequences to diagnose the generator on")
    return torch.cat(bits)[:count], torch.cat(labels)[:count]


@torch.no_grad()
def diagnose(backbone: ARBackbone, head: Head, tokenizer: nn.Module, grid: tuple[int, int], token_shuffle: int,
             sampling: dict[str, Any], bits: torch.Tensor, labels: torch.Tensor, classify: Classify | None,
             splice_samples: int, max_splice_points: int = 8, seed: int = 0,
             batch_size: int = 250) -> dict[str, Any]:
    """The diagnostics of one generator on real token sequences.

    bits (n, h·w, k) raster tokens and labels (n,) of real images; ``sampling`` the generator's settings
    (guidance, schedule, power, temperature, allocation). The teacher-forced accuracies use all n; the
    splice uses the first ``splice_samples`` (none without ``classify``). -> flat ``diag_*`` numbers.
    """
    start = time.time()
    device = next(backbone.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    steps = shuffle(bits.to(device), grid, token_shuffle)                   # (n, L, k')
    out: dict[str, Any] = {} if head.token_type == "continuous" else bit_diagnostics(
        backbone, head, steps, labels.to(device), sampling, gen, batch_size)
    if classify is not None and splice_samples > 0:
        out.update(splice_class_accuracy(ARSampler(backbone, head), tokenizer, grid, token_shuffle, sampling,
                                         steps[:splice_samples], labels[:splice_samples].to(device), classify,
                                         max_splice_points, gen, batch_size, backbone.token_type))
    out["diag_sequences"] = steps.shape[0]
    out["diag_time_s"] = round(time.time() - start, 1)
    return out


def bit_diagnostics(backbone: ARBackbone, head: Head, steps: torch.Tensor, labels: torch.Tensor,
                    sampling: dict[str, Any], gen: torch.Generator, batch_size: int = 250) -> dict[str, Any]:
    """The first step's bit accuracy (true and null label) and the accuracy per unmasking step of a
    bit head, on the teacher-forced conditions of the true AR steps ``steps`` (n, L, k') with labels (n,)."""
    n, length = steps.shape[:2]
    device = steps.device
    targets = steps.reshape(n * length, -1)
    null = torch.full_like(labels, backbone.null_class)
    cond = torch.cat([teacher_forced(backbone, steps[lo:lo + batch_size], labels[lo:lo + batch_size])
                      for lo in range(0, n, batch_size)])                   # (n·L, C)
    uncond = torch.cat([teacher_forced(backbone, steps[lo:lo + batch_size], null[lo:lo + batch_size])
                        for lo in range(0, n, batch_size)])
    out: dict[str, Any] = {
        "diag_first_step_acc_label": first_step_accuracy(head, cond, targets, generator=gen),
        "diag_first_step_acc_null": first_step_accuracy(head, uncond, targets, generator=gen),
    }
    g = float(sampling.get("guidance", 1.0))
    per_row = guidance_per_row(n, length, g, sampling.get("schedule", "linear"), sampling.get("power", 1.0))
    unmask = unmasking_step_accuracy(head, cond, uncond if g != 1.0 else None, targets, guidance=per_row.to(device),
                                     temperature=float(sampling.get("temperature", 1.0)), generator=gen,
                                     allocation=sampling.get("allocation"))
    for s, acc in enumerate(unmask["step_accuracy"]):
        out[f"diag_unmask_step{s}_acc"] = acc
        out[f"diag_unmask_step{s}_bits"] = unmask["step_bits"][s]
    out["diag_sampled_bit_acc"] = unmask["accuracy"]
    return out


@torch.no_grad()
def splice_class_accuracy(sampler: ARSampler, tokenizer: nn.Module, grid: tuple[int, int], token_shuffle: int,
                          sampling: dict[str, Any], real_steps: torch.Tensor, labels: torch.Tensor,
                          classify: Classify, max_points: int, generator: torch.Generator | None,
                          batch_size: int = 250, token_type: str = "discrete") -> dict[str, float]:
    """Class accuracy of images whose first j AR steps are sampled (for the real image's label) and the
    rest are the real image's, for j in :func:`splice_points`. real_steps (n, L, k'), labels (n,) ->
    ``{"diag_splice{j}_class_acc": accuracy}``; j = 0 is the real tokens decoded, j = L plain samples.
    ``token_type``: how the steps decode (``discrete`` bits or ``continuous`` tokens)."""
    generated = torch.cat([
        sampler.sample(labels[lo:lo + batch_size], generator=generator, **sampler_kwargs(sampling))
        for lo in range(0, labels.shape[0], batch_size)])
    out = {}
    for j in splice_points(real_steps.shape[1], max_points):
        mixed = splice(generated, real_steps.to(generated.dtype), j)
        right = 0
        for lo in range(0, labels.shape[0], batch_size):
            images = decode_steps(tokenizer, mixed[lo:lo + batch_size], grid, token_shuffle, token_type)
            right += int((classify(float_to_uint8(images.cpu())).to(labels.device) == labels[lo:lo + batch_size]).sum())
        out[f"diag_splice{j}_class_acc"] = right / labels.shape[0]
    return out


def classifier_of(cfg: DictConfig, device: torch.device) -> tuple[Classify | None, str]:
    """The evaluation network as a classifier of the dataset's classes, and what it is; (None, why) when
    ``metrics.backend`` gives no class logits."""
    from barlab.metrics.metric_setup import build_feature_net

    net = build_feature_net(cfg, device)
    if not (net.class_logits and net.num_classes):
        return None, f"no splice: {net.backend} has no logits over the dataset's classes (metrics.backend=classifier)"

    def classify(images: torch.Tensor) -> torch.Tensor:
        return net.extract(images.to(device)).logits.argmax(dim=1)

    return classify, f"class accuracy by {net.name} ({net.label})"


def run_diagnostics(cfg: DictConfig, backbone: ARBackbone, head: Head, tokenizer: nn.Module, grid: tuple[int, int],
                    token_shuffle: int, batches: Iterable[dict], sampling: dict[str, Any]) -> dict[str, Any]:
    """``diagnose`` with the ``diagnostics`` and ``metrics`` settings of ``cfg`` on validation token batches."""
    node = cfg.get("diagnostics") or {}
    device = next(backbone.parameters()).device
    bits, labels = take_sequences(batches, int(node.get("sequences", 512)))
    splice_samples = int(node.get("splice_samples", 100))
    classify, label = classifier_of(cfg, device) if splice_samples > 0 else (None, "no splice: splice_samples=0")
    was = backbone.training, head.training
    backbone.eval()
    head.eval()
    try:
        out = diagnose(backbone, head, tokenizer, grid, token_shuffle, sampling, bits, labels, classify,
                       splice_samples, int(node.get("splice_points", 8)), seed=int(cfg.seed),
                       batch_size=int(cfg.metrics.gfid.batch_size))
    finally:
        backbone.train(was[0])
        head.train(was[1])
    out["diagnostics_label"] = (f"teacher-forced on {out['diag_sequences']} validation sequences; splice on "
                                f"{min(splice_samples, out['diag_sequences'])}; {label}")
    log.info("diagnostics: first-step bit accuracy %s (label), %s (null); unmasking steps %s; splice %s",
             *(round(out[k], 3) if k in out else "n/a"
               for k in ("diag_first_step_acc_label", "diag_first_step_acc_null")),
             [round(v, 3) for k, v in out.items() if k.startswith("diag_unmask") and k.endswith("_acc")],
             {k[len("diag_splice"):-len("_class_acc")]: round(v, 3) for k, v in out.items()
              if k.startswith("diag_splice")})
    return out
