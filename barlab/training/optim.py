"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

from torch import nn


# adaLN modulations (backbone and MBM head), the MBM head's final adaLN and its mask-ratio MLP: the
# official name rule ('ln' in adaLN_modulation / adaln_before_head, 'embed' in t_embedder) exempts them
NO_DECAY_MODULES = frozenset({"ada", "final_ada", "t_mlp"})


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the weight matrices of Linear / Conv layers only.

    Biases, norms, embeddings and every other 1-D or table parameter get no decay (as in BAR's
    and nanoGPT's recipe).
    """
    decay, no_decay = [], []
    for path, sub in module.named_modules():
        exempt = bool(NO_DECAY_MODULES.intersection(path.split(".")))
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = name == "weight" and isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not exempt
            (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
