"""``trainer=ddp_cpu`` on 2 ranks trains the same weights as 1 process at the same global batch.

Both stages' modules are built from the composed ``experiment=smoke`` config (``build_tokenizer_module``,
``build_generator_module`` with ``head=bitwise``), the trainer by ``build_trainer`` and the batch split by
``apply_global_batch``, as the pipeline does; each run trains 3 steps on the same fixed global batches:

- tokenizer, ``tokenizer.global_batch_size=8``: 2 ranks × 4 samples, against 1 process × 8;
- generator, ``generator.global_batch_size=8`` with at most 4 per process: 2 ranks × 4, against 1 process
  × 4 × 2 accumulation steps.

The pipeline's own data could not be compared this way: each rank resamples its own half of the shards.
The training step's random draws (RAR orders, label drop) are turned off here for the same reason: a process
draws them for the rows it holds, so 1 and 2 processes draw different ones for the same sample.

Tolerance: the runs differ only in the order of float32 sums (two half-batch means all-reduced, against two
accumulated half-batch losses; one 8-sample mean against two 4-sample means): ~1e-7 relative in each gradient
and each loss. The first step's gradients are compared at rel 1e-4 / abs 1e-5 of the largest gradient, the
losses of every step at rel 1e-5. The weights themselves are not compared element by element: AdamW's update
lr·m/(√v + ε) turns an element whose gradient is within rounding of 0 (e.g. a conv bias in front of a
GroupNorm, which removes most of its effect) into a ±lr step whose sign is that rounding's, so such an element
differs by up to 1.3e-3 after 3 steps (measured), as large as a real update. What the weights compute is
compared instead: the trained models' outputs on a probe batch, at rel 1e-3 / abs 1e-4 of their scale, while a
wrong split, a missing average or a doubled gradient changes the losses and gradients at their first digits.

Run as a script, this file is one process of such a run (``python tests/test_ddp_equivalence.py <trainer> <out>``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

STEPS, GLOBAL, GEN_MAX_PER_RANK, TOK_MAX_PER_RANK = 3, 8, 4, 8
GRID, BITS, CLASSES = (4, 4), 4, 4


def compose(trainer: str, out: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from barlab.config.paths import CONFIG_DIR

    overrides = ["experiment=smoke", f"trainer={trainer}", "head=bitwise", "generator.label_drop=0.0",
                 f"data.batch_size={TOK_MAX_PER_RANK}", f"tokenizer.global_batch_size={GLOBAL}",
                 f"generator.data.batch_size={GEN_MAX_PER_RANK}", f"generator.global_batch_size={GLOBAL}",
                 f"tokenizer.max_steps={STEPS}", f"generator.max_steps={STEPS}", "tokenizer.scheduler.warmup_steps=0",
                 "generator.scheduler.warmup_steps=0", "+trainer.enable_checkpointing=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(out / "run")
        cfg.paths.root_dir = str(out)
        cfg.paths.data_dir = str(out / "data")
    return cfg


def global_batch(stage: str, step: int) -> dict:
    """The GLOBAL samples of training step ``step``, the same in every run."""
    gen = torch.Generator().manual_seed(1000 * (stage == "generator") + step)
    if stage == "tokenizer":
        images = torch.nn.functional.avg_pool2d(torch.rand(GLOBAL, 3, 16, 16, generator=gen) * 2 - 1, 3, 1, 1)
        return {"image": images, "label": torch.zeros(GLOBAL, dtype=torch.long)}
    return {"bits": torch.randint(0, 2, (GLOBAL, GRID[0] * GRID[1], BITS), generator=gen).float(),
            "label": torch.randint(0, CLASSES, (GLOBAL,), generator=gen)}


def rank_batches(stage: str, rank: int, world: int, per_rank: int, accumulation: int) -> list[dict]:
    """This rank's micro-batches, step by step: rank r holds rows [r·G/world, (r+1)·G/world) of each global batch."""
    out = []
    for step in range(STEPS):
        full = global_batch(stage, step)
        for micro in range(accumulation):
            start = rank * (GLOBAL // world) + micro * per_rank
            out.append({k: v[start:start + per_rank] for k, v in full.items()})
    return out


def probe(stage: str) -> dict:
    """A fixed batch the trained models are evaluated on (the same in every run)."""
    full = global_batch(stage, 99)
    return {k: v[:4] for k, v in full.items()}


def worker(trainer_name: str, out: Path) -> None:
    """One process of a run: train the tokenizer, then the generator. Saves per stage the gradient of the first
    optimiser step, the per-batch losses, the final weights and the trained model's outputs on a probe batch."""
    import lightning as L
    from torch import nn

    import barlab.lightning.generator_module as generator_module
    from barlab.pipeline.generator_stage import build_generator_module
    from barlab.pipeline.tokenizer_stage import build_tokenizer_module
    from barlab.pipeline.trainer import build_trainer
    from barlab.runtime.distributed import apply_global_batch

    real_ratio = generator_module.random_ratio
    generator_module.random_ratio = lambda *args: 0.0          # raster orders (see the module docstring)
    cfg = compose(trainer_name, out)

    class Record(L.Callback):
        def __init__(self, target: nn.Module):
            self.target, self.losses, self.grads = target, [], None

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if self.grads is None:              # the first step's gradient, after the all-reduce / accumulation
                self.grads = {n: p.grad.detach().clone() for n, p in self.target.named_parameters()
                              if p.grad is not None}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    result = {}
    for stage in ("tokenizer", "generator"):
        L.seed_everything(0)
        if stage == "tokenizer":
            module = build_tokenizer_module(cfg)
            target, max_per_rank, can_accumulate = module.tokenizer, TOK_MAX_PER_RANK, False
        else:
            info = {"grid": list(GRID), "bits_per_token": BITS}
            module = build_generator_module(cfg, nn.Identity(), info, CLASSES)
            target, max_per_rank, can_accumulate = nn.ModuleList([module.backbone, module.head]), GEN_MAX_PER_RANK, True
        init = {k: v.detach().clone() for k, v in target.state_dict().items()}
        record = Record(target)
        trainer = build_trainer(cfg, cfg[stage], [record], [])
        data = SimpleNamespace(batch_size=max_per_rank)
        apply_global_batch(trainer, data, GLOBAL, f"{stage}.global_batch_size", can_accumulate)
        batches = rank_batches(stage, trainer.global_rank, trainer.world_size, data.batch_size,
                               trainer.accumulate_grad_batches)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
        with torch.no_grad():
            module.eval()
            batch = probe(stage)
            if stage == "tokenizer":
                outputs = module.tokenizer(batch["image"])[0]
            else:
                outputs = module.backbone(batch["bits"], batch["label"])
        # the generator's step loss is the unscaled one of each micro-batch (Lightning divides by the accumulation)
        losses = [loss for loss, _ in module._recent] if stage == "generator" else record.losses
        result[stage] = {"weights": {k: v.detach().clone() for k, v in target.state_dict().items()}, "init": init,
                         "grads": record.grads, "losses": losses, "outputs": outputs, "steps": trainer.global_step,
                         "world": trainer.world_size, "per_rank": data.batch_size,
                         "accumulation": trainer.accumulate_grad_batches}
    # the random orders of the first training step with RAR on, seeded as run_generator_stage seeds every rank
    generator_module.random_ratio = real_ratio
    L.seed_everything(cfg.seed, workers=True)
    module = build_generator_module(cfg, nn.Identity(), {"grid": list(GRID), "bits_per_token": BITS}, CLASSES)
    drawn = []
    forward = module.backbone.forward
    module.backbone.forward = lambda bits, labels, order=None: drawn.append(order.clone()) or forward(bits, labels,
                                                                                                      order)
    cfg.generator.max_steps = 1
    trainer = build_trainer(cfg, cfg.generator, [], [])
    batches = rank_batches("generator", trainer.global_rank, trainer.world_size, 4, 1)[:1]
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    result["first_orders"] = drawn[0]
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, world: int) -> list[dict]:
    """Start the ``world`` processes of one run (``trainer=ddp_cpu`` for 2, ``trainer=cpu`` for 1), wait, read."""
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    if world > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world), NODE_RANK="0")
    procs = []
    for rank in range(world):
        rank_env = {**env, "LOCAL_RANK": str(rank), "RANK": str(rank)} if world > 1 else env
        procs.append(subprocess.Popen([sys.executable, __file__, "ddp_cpu" if world > 1 else "cpu", str(out)],
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(world)]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """(the 2 ranks' records, the single process's record); each run started once for the module."""
    tmp = tmp_path_factory.mktemp("ddp_equivalence")
    ranks = launch(tmp / "ddp", 2)
    (single,) = launch(tmp / "single", 1)
    return ranks, single


@pytest.mark.slow
def test_two_ddp_ranks_train_the_same_model_as_one_process(ddp_runs):
    ranks, single = ddp_runs
    for stage, per_rank, accumulation in (("tokenizer", 8, 1), ("generator", 4, 2)):
        one, r0, r1 = single[stage], ranks[0][stage], ranks[1][stage]
        assert (one["world"], one["per_rank"], one["accumulation"]) == (1, per_rank, accumulation)
        assert (r0["world"], r0["per_rank"], r0["accumulation"]) == (2, 4, 1)
        assert one["steps"] == r0["steps"] == r1["steps"] == STEPS
        for name, value in r0["weights"].items():
            assert torch.equal(r1["weights"][name], value), (stage, name)       # DDP keeps the ranks identical
        # the first update's gradient: the mean over the global batch in both runs
        assert one["grads"].keys() == r0["grads"].keys() and len(one["grads"]) > 10
        scale = max(float(g.abs().max()) for g in one["grads"].values())
        for name, grad in one["grads"].items():
            torch.testing.assert_close(r0["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m, s=stage, n=name: f"{s} grad {n}: {m}")
        # the global loss of each step: the mean over ranks, or over the accumulated micro-batches
        ddp_losses = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
        one_losses = [sum(one["losses"][i:i + accumulation]) / accumulation
                      for i in range(0, len(one["losses"]), accumulation)]
        assert len(ddp_losses) == len(one_losses) == STEPS
        assert ddp_losses == pytest.approx(one_losses, rel=1e-5)
        assert one_losses[0] != pytest.approx(one_losses[-1], rel=1e-4)          # training moved the loss
        # the trained models compute the same function (weights: see the module docstring)
        moved = max(float((one["weights"][n] - one["init"][n]).abs().max()) for n in one["weights"]
                    if one["weights"][n].is_floating_point())
        assert moved > 2e-3                                                       # 3 AdamW steps of lr 1e-3
        out_scale = float(one["outputs"].abs().max())
        torch.testing.assert_close(r0["outputs"], one["outputs"], rtol=1e-3, atol=1e-4 * out_scale)
        changed = sum(float((one["weights"][n] - r0["weights"][n]).abs().max() > 1e-5) for n in one["weights"])
        assert changed <= len(one["weights"]) // 5, changed                      # only a few near-zero gradients


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="barlab bug: every DDP rank seeds its global RNG with the same cfg.seed "
                   "(L.seed_everything in run_generator_stage / run_tokenizer_stage), so all ranks draw the same RAR "
                   "orders, label drops and MBM masks for their own rows at every step")
def test_ddp_ranks_draw_their_own_random_orders(ddp_runs):
    ranks, _ = ddp_runs
    first = [r["first_orders"] for r in ranks]
    assert first[0].shape == first[1].shape == (4, GRID[0] * GRID[1])
    assert not torch.equal(first[0], torch.arange(GRID[0] * GRID[1]).expand(4, -1))    # RAR is on at step 0
    assert not torch.equal(first[0], first[1])


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
