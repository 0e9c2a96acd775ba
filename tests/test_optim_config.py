"""The optimiser and LR-schedule config nodes build the recipe the configs always meant.

Each stage's ``optim`` node (a ``_partial_`` AdamW) and ``scheduler`` node (a ``_partial_`` warm-up +
cosine) are composed from the default configs, completed by the LightningModules, and checked
against numbers written out here: learning rate, betas and weight decay per parameter group, which
generator parameters decay, and the learning rate at step 0, at the end of warm-up and at max_steps.
"""

from __future__ import annotations

import re
import warnings

import lightning as L
import pytest
import torch

from barlab.pipeline.generator_stage import build_generator_module
from barlab.pipeline.tokenizer_stage import build_tokenizer_module

# the layers whose weight matrices the generator decays (its Linear layers, by name), and the
# sub-modules whose layers it never decays (adaLN modulations, the MBM head's mask-ratio MLP)
DECAYED_LAYERS = r"(qkv|proj|w1|w2|w3|out|in_proj)"
EXEMPT = r"(^|\.)(ada|final_ada|t_mlp)\."


def attach_trainer(module: L.LightningModule, max_steps: int) -> L.LightningModule:
    """``module`` attached to a bare trainer, so that ``configure_optimizers`` sees ``max_steps``."""
    module.trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    return module


def lrs_at(scheduler, steps: list[int]) -> list[list[float]]:
    """The learning rate of every parameter group after 0 < ``steps[0]`` < ... scheduler steps."""
    out, done = [], 0
    with warnings.catch_warnings():  # scheduler.step() without optimizer.step(): the LR is all we read
        warnings.simplefilter("ignore")
        for step in steps:
            for _ in range(step - done):
                scheduler.step()
            done = step
            out.append([group["lr"] for group in scheduler.optimizer.param_groups])
    return out


@pytest.mark.parametrize("preset, lr, warmup, min_ratio, max_steps, gan", [
    ("bar_fsq", 2e-3, 50, 0.05, 800, False),
    ("bar_fsq_256", 1e-4, 10_000, 0.1, 20_000, True),   # max_steps shortened from 200k for the test's speed
])
def test_tokenizer_optimizers_and_schedule(compose_train, preset, lr, warmup, min_ratio, max_steps, gan):
    cfg = compose_train([f"tokenizer={preset}", f"tokenizer.max_steps={max_steps}", "data=synthetic",
                         "data.image_size=32"])
    module = attach_trainer(build_tokenizer_module(cfg), cfg.tokenizer.max_steps)
    optimizers, schedulers = module.configure_optimizers()
    assert len(optimizers) == len(schedulers) == (2 if gan else 1)
    owners = [module.tokenizer] + ([module.discriminator] if gan else [])
    for optimizer, owner in zip(optimizers, owners):
        assert type(optimizer) is torch.optim.AdamW
        (group,) = optimizer.param_groups
        assert group["initial_lr"] == lr and tuple(group["betas"]) == (0.9, 0.999) and group["weight_decay"] == 0.0
        assert {id(p) for p in group["params"]} == {id(p) for p in owner.parameters()}
    assert module.grad_clip == 1.0
    for entry in schedulers:
        assert entry["interval"] == "step"
        expected = [lr / (warmup + 1), lr, lr * min_ratio]
        assert lrs_at(entry["scheduler"], [0, warmup, max_steps]) == [[pytest.approx(v, rel=1e-12)] for v in expected]


def test_generator_optimizer_groups_and_schedule(compose_train):
    cfg = compose_train([])
    tokenizer = build_tokenizer_module(cfg).tokenizer
    info = {"grid": list(tokenizer.grid_size(cfg.data.image_size)),
            "bits_per_token": tokenizer.quantizer.bits_per_token}
    module = attach_trainer(build_generator_module(cfg, tokenizer, info, num_classes=10), cfg.generator.max_steps)
    configured = module.configure_optimizers()
    optimizer, entry = configured["optimizer"], configured["lr_scheduler"]
    assert type(optimizer) is torch.optim.AdamW and entry["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    for group in (decay, no_decay):
        assert group["initial_lr"] == 1e-3 and tuple(group["betas"]) == (0.9, 0.96)
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    assert module.grad_clip == 1.0

    named = dict(torch.nn.ModuleList([module.backbone, module.head]).named_parameters())
    expected = {n for n, p in named.items()
                if re.search(rf"(^|\.){DECAYED_LAYERS}\.weight$", n) and not re.search(EXEMPT, n)}
    decayed = {n for n, p in named.items() if any(p is q for q in decay["params"])}
    assert decayed == expected and len(decayed) == 30   # 4 blocks x 5 + bit_embed.proj + out, head: 2 x 3 + 2
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)   # every trainable parameter, once

    max_steps, warmup, lr = 1200, 100, 1e-3
    middle = (warmup + max_steps) // 2                                     # cosine at half way: cos(pi/2) = 0
    expected_lr = [lr / (warmup + 1), lr, lr * (0.025 + 0.975 * 0.5), lr * 0.025]
    assert lrs_at(entry["scheduler"], [0, warmup, middle, max_steps]) == [
        [pytest.approx(v, rel=1e-12)] * 2 for v in expected_lr]


def test_paper_presets_keep_their_recipe(compose_train):
    bar_b = compose_train(["generator=bar_b"]).generator
    assert (bar_b.optim.lr, list(bar_b.optim.betas), bar_b.optim.weight_decay) == (4e-4, [0.9, 0.96], 0.03)
    assert (bar_b.scheduler.warmup_steps, bar_b.scheduler.min_lr_ratio, bar_b.grad_clip) == (62_500, 0.025, 1.0)
    smoke = compose_train(["experiment=smoke"]).generator
    assert smoke.scheduler.warmup_steps == 2 and smoke.optim.lr == 1e-3
