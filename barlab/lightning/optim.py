"""Optimiser helpers shared by the LightningModules.

The optimiser itself is a config node (a stage's ``optim``: ``_target_: torch.optim.AdamW``,
``_partial_: true``, with lr, betas and weight_decay); the modules call it on their parameters or
on the groups of :func:`decay_groups`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

# ``optim`` config node, instantiated: parameters (or groups) -> optimiser
OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]


# adaLN modulations (backbone and MBM head), the MBM head's final adaLN and its mask-ratio MLP: the
# official name rule ('ln' in adaLN_modulation / adaln_before_head, 'embed' in t_embedder) exempts them
NO_DECAY_MODULES = frozenset({"ada", "final_ada", "t_mlp"})


def decay_groups(module: nn.Module, weight_decay: float | None = None) -> list[dict]:
    """AdamW parameter groups: weight decay on the weight matrices of Linear / Conv layers only.

    Biases, norms, embeddings and every other 1-D or table parameter get no decay (as in BAR's
    and nanoGPT's recipe). ``weight_decay`` None: the decayed group carries no ``weight_decay`` key
    and so takes the optimiser's own (the ``optim.weight_decay`` knob).
    """
    decay, no_decay = [], []
    for path, sub in module.named_modules():
        exempt = bool(NO_DECAY_MODULES.intersection(path.split(".")))
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = name == "weight" and isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not exempt
            (decay if is_matrix else no_decay).append(param)
    decayed = {"params": decay} if weight_decay is None else {"params": decay, "weight_decay": weight_decay}
    return [decayed, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
