"""Softmax over all 2^k' codes of a token: the classic AR head, only viable for small k'."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.generator.heads.base import (
    Guidance,
    Head,
    HeadOutput,
    bits_to_code,
    code_to_bits,
    fp32_region,
    gumbel_argmax,
)
from barlab.utils.integers import check_int

MAX_CODE_BITS = 62  # codes are built in int64
BYTES_PER_PARAM = 16  # fp32 weight + its gradient + AdamW's two fp32 moments
LOGIT_COPIES = 3  # fp32 logits, their log-softmax (kept for backward) and the gradient of the logits
GB = 10**9


def linear_head_params(cond_dim: int, bits_per_step: int) -> int:
    """Parameters of ``Linear(cond_dim -> 2^bits_per_step)`` (weights + bias), as an exact Python int."""
    return (2 ** int(bits_per_step)) * (int(cond_dim) + 1)


def linear_head_memory(cond_dim: int, bits_per_step: int, batch_tokens: int = 0) -> tuple[int, int]:
    """Training memory of the linear head in bytes, as exact Python ints: ``(states, logits)``.

    states: parameters x 16 bytes (fp32 weights, gradients and AdamW's two moments).
    logits: 3 fp32 tensors of ``batch_tokens x 2^k`` (the logits, the log-softmax that cross-entropy
    keeps for backward, and the gradient of the logits), the peak of one training step's head.
    Not counted: the backbone, its activations, and CFG sampling (a batch of its own, no gradients).
    """
    states = BYTES_PER_PARAM * linear_head_params(cond_dim, bits_per_step)
    logits = LOGIT_COPIES * 4 * int(batch_tokens) * 2 ** int(bits_per_step)
    return states, logits


class LinearHead(Head):
    """``Linear(cond_dim -> 2^k')`` logits, cross-entropy on the integer code (bit j weighs 2^j).

    Refuses in ``__init__``, before creating any parameter, when training it would need more than
    ``max_memory_gb`` (10^9 bytes): see :func:`linear_head_memory` for what is counted.
    ``batch_tokens`` is the number of tokens (AR steps) one process trains on per step; the config
    check fills it in from ``generator.data.batch_size`` x AR steps when it is null. None counts the
    weights and optimizer states only.

    The default budget, 16 GB, is a fixed number rather than the free memory of whatever device the
    check runs on, so a config is admitted or refused the same way on a login node, a CPU CI machine
    and a GPU node. It admits k' = 16 at cond_dim 2048 (2.1 GB of states) with up to ~17,000 tokens
    per step (e.g. 64 sequences of 256 tokens), and k' = 18 (8.6 GB of states) with small batches;
    raise it on a large GPU (``head.max_memory_gb=120`` on an H100/H200).
    """

    def __init__(self, cond_dim: int, bits_per_step: int, max_memory_gb: float = 16.0,
                 batch_tokens: int | None = None, max_params: int | None = None):
        # max_params: the former parameter-count guard, ignored; accepted so that generator.pt files
        # written before head.max_memory_gb still load.
        super().__init__(cond_dim, bits_per_step)
        k = self.bits_per_step
        if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, (int, float)) or not max_memory_gb > 0:
            raise ConfigError("max_memory_gb", f"must be a positive number of GB, got {max_memory_gb!r}",
                              fix="max_memory_gb=16")
        tokens = 0 if batch_tokens is None else check_int(batch_tokens, "batch_tokens", fix="batch_tokens=null")
        if k > MAX_CODE_BITS:
            raise ConfigError("", f"linear softmax over 2^{k} codes: codes above 2^{MAX_CODE_BITS} do not fit "
                              "an int64", fix="head=mbm (or head=bitwise)")
        n = linear_head_params(self.cond_dim, k)
        states, logits = linear_head_memory(self.cond_dim, k, tokens)
        if states + logits > max_memory_gb * GB:
            batch = (f" + {logits / GB:,.1f} GB for {LOGIT_COPIES} fp32 copies (logits, log-softmax, gradient) of "
                     f"{tokens:,} tokens x 2^{k} codes" if tokens else "")
            raise ConfigError("", f"linear softmax over 2^{k} codes needs {(states + logits) / GB:,.1f} GB to "
                              f"train: {n:,} parameters x {BYTES_PER_PARAM} bytes (fp32 weights, gradients, Adam "
                              f"moments) = "
                              f"{states / GB:,.1f} GB{batch}; above head.max_memory_gb={max_memory_gb:g}",
                              fix="head=mbm (or head=bitwise), a smaller generator.data.batch_size, "
                                  "or raise head.max_memory_gb")
        self.num_codes = 2**k
        self.proj = nn.Linear(self.cond_dim, self.num_codes)

    def logits(self, cond: Tensor) -> Tensor:
        """cond (N, cond_dim) -> fp32 logits (N, 2^k')."""
        with fp32_region(cond.device):
            return self.proj(cond.float())

    def loss(self, cond: Tensor, bits: Tensor) -> HeadOutput:
        """cond (N, cond_dim), bits (N, k') {0,1} -> mean CE over the N tokens."""
        self._check_inputs(cond, bits)
        logits = self.logits(cond)
        target = bits_to_code(bits)
        loss = F.cross_entropy(logits, target)
        pred_bits = code_to_bits(logits.argmax(dim=-1), self.bits_per_step)
        acc = (pred_bits == bits.round()).float().mean()
        code_acc = (logits.argmax(dim=-1) == target).float().mean()
        return HeadOutput(loss=loss, bit_accuracy=acc.detach(), metrics={"code_accuracy": code_acc.detach()})

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Gumbel-max draw from softmax(l/τ) of the (guided) logits; τ = 0 is argmax. -> bits (N, k')."""
        self._check_inputs(cond)
        logits = self._guided(self.logits, cond, uncond, guidance)
        return code_to_bits(gumbel_argmax(logits, temperature, generator), self.bits_per_step)
