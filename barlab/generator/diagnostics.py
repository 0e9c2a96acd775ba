"""Where a generator loses what it knows: the head's first unmasking step, each unmasking step, each AR step.

Three measurements on real token sequences (the backbone always sees the true context: teacher forcing):

- :func:`first_step_accuracy`: bit accuracy of the head's prediction with every bit of the token still
  masked (r = 1), the state each token starts from at sampling time. Given the true label and given the
  null label, it shows how much the class shapes that first step.
- :func:`unmasking_step_accuracy`: the head's own sampler (allocation, guidance, temperature) run from
  all-masked on the teacher-forced conditions; the accuracy of the bits fixed at each unmasking step.
- :func:`splice`: the first j AR steps of a generated sequence, the rest from a real one. Decoded and
  classified over j, it locates the AR step where samples lose their class.

All are plain functions of plain modules: the wiring (which batches, which classifier) lives above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor

from barlab.generator.backbone import ARBackbone
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads import Head


@torch.no_grad()
def teacher_forced(backbone: ARBackbone, steps: Tensor, labels: Tensor) -> Tensor:
    """Conditions of every AR step given the true context, raster order.

    steps (B, L, k') {0,1}, labels (B,) long (``backbone.null_class`` for the unconditional branch)
    -> cond (B·L, C), rows in ``(b l)`` order.
    """
    return rearrange(backbone(steps, labels), "b l c -> (b l) c")


def guidance_per_row(batch: int, length: int, guidance: float, schedule: str, power: float = 1.0) -> Tensor:
    """The sampler's guidance g_t of AR step t, for rows in ``(b l)`` order: -> (B·L,) fp32."""
    per_step = torch.tensor([guidance_scale(t, length, guidance, schedule, power) for t in range(length)])
    return per_step.repeat(batch).float()


@torch.no_grad()
def first_step_accuracy(head: Head, cond: Tensor, bits: Tensor, generator: torch.Generator | None = None) -> float:
    """Share of the bits the head gets right from the condition alone, every bit masked (r = 1), argmax,
    no guidance. cond (N, cond_dim), bits (N, k') {0,1} -> float in [0, 1]."""
    pred = head.first_step_bits(cond, generator=generator)
    return float((pred == bits.round()).float().mean())


@torch.no_grad()
def unmasking_step_accuracy(head: Head, cond: Tensor, uncond: Tensor | None, bits: Tensor,
                            guidance: float | Tensor = 1.0, temperature: float = 1.0,
                            generator: torch.Generator | None = None,
                            allocation: Sequence[int] | None = None) -> dict[str, list[float] | float]:
    """The head's sampler run from all-masked on given conditions; how right the bits of each step are.

    cond/uncond (N, cond_dim) (uncond None: no guidance), bits (N, k') {0,1} the true bits; guidance
    scalar or (N,) (the sampler's g_t of each row). Returns ``step_accuracy`` (one per unmasking step:
    the share of the bits fixed at that step that are right), ``step_bits`` (bits fixed per token at
    each step) and ``accuracy`` (all bits of the sampled tokens).
    """
    sampled, step = head.sample_with_steps(cond, uncond, guidance, temperature=temperature, generator=generator,
                                           allocation=allocation)
    right = sampled == bits.round()
    steps = int(step.max()) + 1
    acc, count = [], []
    for s in range(steps):
        fixed = step == s
        acc.append(float(right[fixed].float().mean()) if fixed.any() else float("nan"))
        count.append(float(fixed.sum()) / bits.shape[0])
    return {"step_accuracy": acc, "step_bits": count, "accuracy": float(right.float().mean())}


def splice(generated: Tensor, real: Tensor, j: int) -> Tensor:
    """The first ``j`` AR steps of ``generated``, the rest of ``real``: (B, L, k') each -> (B, L, k').

    ``j = 0`` is the real sequence, ``j = L`` the generated one. Because sampling is autoregressive, the
    first j steps of a whole sample are exactly what a sampler stopped after j steps would give.
    """
    if generated.shape != real.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} must have one shape")
    if not 0 <= j <= real.shape[1]:
        raise ValueError(f"j must be in [0, {real.shape[1]}], got {j}")
    out = real.clone()
    out[:, :j] = generated[:, :j]
    return out


def splice_points(length: int, max_points: int) -> list[int]:
    """The j of :func:`splice` to measure: 0 … L when that is at most ``max_points`` + 1 values, else
    ``max_points`` + 1 evenly spaced ones from 0 to L (both ends kept)."""
    if length + 1 <= max_points + 1:
        return list(range(length + 1))
    return sorted({round(i * length / max_points) for i in range(max_points + 1)})
