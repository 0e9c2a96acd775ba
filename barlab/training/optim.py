"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

from torch import nn


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the weight matrices of Linear / Conv layers only.

    Biases, norms, embeddings and every other 1-D or table parameter get no decay (as in BAR's
    and nanoGPT's recipe).
    """
    decay, no_decay = [], []
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = name == "weight" and isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d))
            (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
