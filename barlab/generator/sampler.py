"""Raster-order AR sampling with classifier-free guidance (paper §4.3).

    cond rows use the labels, uncond rows the null class (batch doubled; skipped when g == 1)
    for t in 0 .. L-1:
        g_t   = guidance_scale(t, L, g, schedule, power)
        z     = backbone condition for token t              (KV cache, or a full recompute)
        x_t   = head.sample(z_c, z_u, g_t, temperature, generator)      # (B, k') bits
    -> (B, L, k') raster bits

``allocation`` (MBM head only) replaces the head's stored unmasking allocation for this call, as the
official sampler's ``tokens_allocation`` does; it must sum to the bits per AR step.

With ``use_kv_cache=False`` every step reruns the teacher-forced forward on the tokens so far
(the rest zero; the causal mask makes them irrelevant). Both paths give the same bits.

Continuous tokens (backbone and head ``token_type == "continuous"``): the head samples real vectors
(B, c·p²) and the token buffer is fp32 whatever the model's dtype, so they are returned unrounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from barlab.errors import ConfigError
from barlab.generator.backbone import ARBackbone
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads import Head, MBMHead, check_allocation


def sampling_allocation(head: Head, allocation: Sequence[int] | None) -> tuple[int, ...] | None:
    """A sampling-time ``allocation`` checked against ``head``: None stays None (the head's own); otherwise
    the head must be the MBM head and the list must sum to its bits per AR step. Errors name ``allocation``."""
    if allocation is None:
        return None
    if not isinstance(head, MBMHead):
        raise ConfigError("allocation", f"only the MBM head unmasks bits in steps; this generator's head "
                          f"is {type(head).__name__}", fix="allocation=null")
    return check_allocation(allocation, head.bits_per_step)


class ARSampler:
    """Pairs a backbone with a head for sampling. Not an nn.Module; holds no state of its own."""

    def __init__(self, backbone: ARBackbone, head: Head):
        if head.cond_dim != backbone.cond_dim or head.bits_per_step != backbone.bits_per_step:
            raise ValueError(f"head (cond_dim={head.cond_dim}, bits={head.bits_per_step}) does not match backbone "
                             f"(cond_dim={backbone.cond_dim}, bits={backbone.bits_per_step})")
        head_type = getattr(head, "token_type", "discrete")
        backbone_type = getattr(backbone, "token_type", "discrete")
        if head_type != backbone_type:
            raise ValueError(f"head {type(head).__name__} models {head_type} tokens, the backbone {backbone_type} ones")
        self.backbone = backbone
        self.head = head

    @torch.no_grad()
    def sample(self, labels: Tensor, guidance: float = 1.0, schedule: str = "linear", power: float = 1.0,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               use_kv_cache: bool = True, allocation: Sequence[int] | None = None,
               clip_x0: float | None = None) -> Tensor:
        """labels (B,) long -> bits (B, L, k') float {0,1} (continuous: real tokens) in raster order.
        ``allocation``: the MBM head's unmasking allocation; ``clip_x0``: the diffusion head's x̂0 clamp
        (None: each head's own default)."""
        head_kwargs = {}
        alloc = sampling_allocation(self.head, allocation)
        if alloc is not None:
            head_kwargs["allocation"] = alloc
        if clip_x0 is not None:
            if getattr(self.head, "token_type", "discrete") != "continuous":
                raise ConfigError("clip_x0", f"only the diffusion head predicts x0; this generator's head is "
                                  f"{type(self.head).__name__}", fix="clip_x0=null")
            head_kwargs["clip_x0"] = clip_x0
        modes = (self.backbone.training, self.head.training)
        self.backbone.eval()
        self.head.eval()
        try:
            return self._sample(labels, guidance, schedule, power, temperature, generator, use_kv_cache, head_kwargs)
        finally:
            self.backbone.train(modes[0])
            self.head.train(modes[1])

    def _sample(self, labels: Tensor, guidance: float, schedule: str, power: float, temperature: float,
                generator: torch.Generator | None, use_kv_cache: bool, head_kwargs: dict) -> Tensor:
        model = self.backbone
        batch, length, k = labels.shape[0], model.seq_len, model.bits_per_step
        cfg = float(guidance) != 1.0
        rows = torch.cat([labels, torch.full_like(labels, model.null_class)]) if cfg else labels
        param = model.out.weight
        dtype = torch.float32 if getattr(model, "token_type", "discrete") == "continuous" else param.dtype
        tokens = torch.zeros(rows.shape[0], length, k, device=param.device, dtype=dtype)
        cache = model.new_cache(rows.shape[0]) if use_kv_cache else None
        cond = model.prefill(rows, cache) if use_kv_cache else None
        for t in range(length):
            if not use_kv_cache:
                cond = model(tokens, rows)[:, t]
            g_t = guidance_scale(t, length, guidance, schedule, power)
            z_c, z_u = (cond[:batch], cond[batch:]) if cfg else (cond, None)
            bits = self.head.sample(z_c, z_u, g_t, temperature=temperature, generator=generator, **head_kwargs)
            tokens[:, t] = torch.cat([bits, bits]).to(tokens.dtype) if cfg else bits.to(tokens.dtype)
            if use_kv_cache and t < length - 1:
                cond = model.step(tokens[:, t], t, cache)
        return tokens[:batch].float()
