"""Input embeddings of the AR context model (paper §4.1).

- ``BitEmbedding``: per-bit ``Embedding(3, ceil(d/k'))`` for {0, 1, [M]=2}, concatenated over the k'
  bits, then ``Linear(ceil(d/k')·k' -> d)``.
- ``ContinuousEmbedding``: continuous tokens (..., c·p²) -> ``Linear(c·p² -> d)``, in place of the
  per-bit embedding for continuous (KL) latents.
- ``ClassPrefix``: the prefix ``[CLS] + class_repeat × class embedding`` (ids 0..num_classes-1,
  ``num_classes`` = null class for CFG), plus a learned per-slot prefix position embedding.
- ``PositionEmbedding``: learned absolute embedding of the L image positions, and the RAR
  target-aware embedding of the position predicted next. Index ``L`` means "no position" and
  gives a zero vector (prefix slots, and slots without a target).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

MASK_BIT = 2  # the [M] id of a masked bit


class BitEmbedding(nn.Module):
    """Per-bit embedding: bits (..., k') in {0, 1, 2} (float or long) -> (..., width)."""

    def __init__(self, bits_per_step: int, width: int):
        super().__init__()
        self.bits_per_step = bits_per_step
        self.bit_dim = math.ceil(width / bits_per_step)
        self.table = nn.Embedding(3, self.bit_dim)
        self.proj = nn.Linear(self.bit_dim * bits_per_step, width)

    def forward(self, bits: Tensor) -> Tensor:
        e = self.table(bits.long())                                  # (..., k', e)
        return self.proj(rearrange(e, "... k e -> ... (k e)"))


class ContinuousEmbedding(nn.Linear):
    """Linear input projection of continuous tokens: (..., channels) float -> (..., width).

    The tokens are cast to the weight's dtype (the sampler keeps them in fp32 whatever the model's)."""

    def __init__(self, channels: int, width: int):
        super().__init__(channels, width)

    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens.to(self.weight.dtype))


class ClassPrefix(nn.Module):
    """The sequence prefix: labels (B,) long -> (prefix (B, 1 + class_repeat, d), class vector (B, d)).

    Slot 0 is a learned [CLS] vector, slots 1..class_repeat repeat the class embedding; every
    prefix slot gets its own learned position vector. The class vector also conditions adaLN.
    """

    def __init__(self, num_classes: int, width: int, class_repeat: int):
        super().__init__()
        self.null_class = num_classes
        self.class_repeat = class_repeat
        self.classes = nn.Embedding(num_classes + 1, width)
        self.cls = nn.Parameter(torch.zeros(width))
        self.pos = nn.Parameter(torch.zeros(1 + class_repeat, width))

    @property
    def length(self) -> int:
        return 1 + self.class_repeat

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        class_vec = self.classes(labels)                                        # (B, d)
        cls = repeat(self.cls, "d -> b 1 d", b=labels.shape[0]).to(class_vec.dtype)
        copies = repeat(class_vec, "b d -> b r d", r=self.class_repeat)
        prefix = torch.cat([cls, copies], dim=1) + self.pos                     # (B, P, d)
        return prefix, class_vec


class PositionEmbedding(nn.Module):
    """Learned absolute (L, d) and target-aware (L, d) position tables.

    ``current(pos)`` / ``target(pos)``: pos (B, n) long in [0, L] -> (B, n, d); index L gives zeros.
    With ``target_aware=False`` ``target`` returns zeros.
    """

    def __init__(self, seq_len: int, width: int, target_aware: bool = True):
        super().__init__()
        self.seq_len = seq_len
        self.table = nn.Parameter(torch.zeros(seq_len, width))
        self.target_table = nn.Parameter(torch.zeros(seq_len, width)) if target_aware else None

    @staticmethod
    def _lookup(table: Tensor, pos: Tensor) -> Tensor:
        padded = torch.cat([table, table.new_zeros(1, table.shape[1])], dim=0)   # row L = "none"
        return padded[pos]

    def current(self, pos: Tensor) -> Tensor:
        return self._lookup(self.table, pos)

    def target(self, pos: Tensor) -> Tensor:
        if self.target_table is None:
            return self.table.new_zeros(*pos.shape, self.table.shape[1])
        return self._lookup(self.target_table, pos)
