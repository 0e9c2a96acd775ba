"""The head interface: per-token condition (N, cond_dim) -> loss on / samples of k' bits.

The backbone produces one condition vector per token; a head turns it into a distribution over
the token's k' bits (``bits_per_step``). Classifier-free guidance is applied on the head's logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from barlab.utils.integers import check_int

Guidance = Tensor | float


@dataclass
class HeadOutput:
    """What ``Head.loss`` returns.

    Attributes:
        loss: scalar, mean over the N tokens.
        bit_accuracy: scalar in [0, 1], fraction of target bits the head's argmax gets right
            (linear: bits of the argmax code; bitwise: per-bit argmax; mbm: the masked bits).
        metrics: extra scalars to log.
    """

    loss: Tensor
    bit_accuracy: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that turns autocast off so the head runs in fp32 whatever the caller enabled."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform(0, 1) fp32 noise of ``shape`` drawn from ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise ``-log(-log u)`` of ``shape`` (fp32), finite everywhere."""
    u = uniform(shape, generator, device).clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - 2.0**-24)
    return -torch.log(-torch.log(u))


def gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample from softmax(logits / τ) over the last axis by the Gumbel-max trick; τ = 0 is argmax.

    logits (..., V) -> indices (...) long.
    """
    if temperature > 0:
        logits = logits + temperature * gumbel(tuple(logits.shape), generator, logits.device)
    return logits.argmax(dim=-1)


def is_unit_guidance(guidance: Guidance) -> bool:
    """True when ``guidance`` is the Python/0-d scalar 1 (the unconditional branch can be skipped)."""
    if isinstance(guidance, Tensor):
        return guidance.numel() == 1 and guidance.ndim == 0 and float(guidance) == 1.0
    return float(guidance) == 1.0


def apply_cfg(cond_logits: Tensor, uncond_logits: Tensor, guidance: Guidance) -> Tensor:
    """``l_u + g·(l_c − l_u)`` with g a scalar or per-row (N,); rows with g == 1 return l_c exactly.

    Shapes: cond_logits, uncond_logits (N, ...) -> (N, ...).
    """
    g = torch.as_tensor(guidance, dtype=cond_logits.dtype, device=cond_logits.device)
    if g.ndim == 1:
        g = g.reshape(-1, *([1] * (cond_logits.ndim - 1)))
    mixed = uncond_logits + g * (cond_logits - uncond_logits)
    return torch.where(g == 1, cond_logits, mixed)


def code_to_bits(code: Tensor, k: int) -> Tensor:
    """Integer codes (N,) int64 -> bits (N, k) float {0,1}, bit j having weight 2^j."""
    shifts = torch.arange(k, device=code.device, dtype=torch.int64)
    return ((rearrange(code, "n -> n 1") >> shifts) & 1).float()


def bits_to_code(bits: Tensor) -> Tensor:
    """Bits (N, k) {0,1} -> integer codes (N,) int64, bit j having weight 2^j (k <= 62)."""
    k = bits.shape[-1]
    weights = torch.ones(k, dtype=torch.int64, device=bits.device) << torch.arange(k, device=bits.device)
    return (bits.round().long() * weights).sum(dim=-1)


class Head(nn.Module):
    """Abstract head.

    Subclasses set ``bits_per_step`` (k') and ``cond_dim`` and implement:
        loss(cond (N, cond_dim), bits (N, k') {0,1}) -> HeadOutput, computed in fp32;
        sample(cond (N, cond_dim), uncond (N, cond_dim) | None, guidance scalar | (N,),
               temperature, generator) -> bits (N, k') float {0,1}.
    With ``uncond=None`` or guidance == 1 ``sample`` takes exactly the conditional path, drawing
    the same noise (N rows only, from ``generator``, in the same order).

    ``fuse_cfg``: under CFG, one forward over the 2N stacked rows (cond, then uncond) instead of
    two forwards of N rows. Same logits up to float rounding; larger matmuls. ``bench=sampling``
    measures both (``False`` is the previous path, kept for that A/B): 1.05-1.2x the images per
    second on a 2-core CPU, the most at small batches.
    """

    bits_per_step: int
    cond_dim: int
    fuse_cfg: bool = True
    # what the head models: "discrete" bits, or "continuous" tokens (real vectors of bits_per_step
    # channels); the generator stage pairs a continuous head only with a continuous tokenizer
    token_type: str = "discrete"

    def __init__(self, cond_dim: int, bits_per_step: int):
        super().__init__()
        self.bits_per_step = check_int(bits_per_step, "bits_per_step", fix="bits_per_step=16")
        self.cond_dim = check_int(cond_dim, "cond_dim", fix="cond_dim=2048")

    def loss(self, cond: Tensor, bits: Tensor) -> HeadOutput:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample_with_steps(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
                          temperature: float = 1.0, generator: torch.Generator | None = None,
                          allocation: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """``sample``, and the unmasking step at which each bit was fixed: -> (bits (N, k') float {0,1},
        step (N, k') long). A head that fixes every bit at once (linear, bitwise) reports step 0 for all;
        ``allocation`` is for heads that unmask in steps (None: the head's own)."""
        bits = self.sample(cond, uncond, guidance, temperature=temperature, generator=generator)
        return bits, torch.zeros(bits.shape, dtype=torch.long, device=bits.device)

    @torch.no_grad()
    def first_step_bits(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The most likely bits given the condition alone, every bit still unknown (mask ratio r = 1),
        without guidance: cond (N, cond_dim) -> bits (N, k') float {0,1}. For a head that fixes every bit
        at once this is its argmax sample."""
        return self.sample(cond, None, 1.0, temperature=0.0, generator=generator)

    def _guided(self, logits_fn, cond: Tensor, uncond: Tensor | None, guidance: Guidance, *rows: Tensor) -> Tensor:
        """Logits under CFG: ``logits_fn(cond, *rows)`` alone when uncond is None or guidance == 1,
        else mixed with ``logits_fn(uncond, *rows)``. ``rows``: further per-row inputs (N, ...) shared
        by both halves (stacked twice when ``fuse_cfg``). cond/uncond (N, cond_dim) -> (N, ...)."""
        if uncond is None or is_unit_guidance(guidance):
            return logits_fn(cond, *rows)
        if not self.fuse_cfg:
            return apply_cfg(logits_fn(cond, *rows), logits_fn(uncond, *rows), guidance)
        both = logits_fn(torch.cat([cond, uncond]), *(torch.cat([x, x]) for x in rows))
        cond_logits, uncond_logits = both.chunk(2)
        return apply_cfg(cond_logits, uncond_logits, guidance)

    def _check_inputs(self, cond: Tensor, bits: Tensor | None = None) -> None:
        """Shape checks: cond (N, cond_dim), bits (N, k')."""
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must be (N, {self.cond_dim}), got {tuple(cond.shape)}")
        if bits is not None and tuple(bits.shape) != (cond.shape[0], self.bits_per_step):
            raise ValueError(f"bits must be ({cond.shape[0]}, {self.bits_per_step}), got {tuple(bits.shape)}")
