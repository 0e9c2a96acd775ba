"""The paper-scale studies, ``sweeps/bit_budget_paper.yaml`` and ``sweeps/head_type_paper.yaml``: every
point composes with its SLURM launcher settings, the paper tokenizer takes the KL quantizer, the head
study's tokenizers are the bit-budget study's (one cache key), the linear head's refused points, the
cost estimate (``bench=sweep_cost``), and points of both files run two steps at tiny widths on CPU."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from barlab.bench import sweep_cost
from barlab.config.paths import SWEEPS_DIR
from barlab.config.sweeps import compose_sweep, sweep_points
from barlab.errors import ConfigError
from tests.helpers import call_main, error_lines, read_json, run_module
from tests.tiny_pretrained import TINY_OVERRIDES, pretrained_overrides, write_tiny_pretrained

TOKENS = 16 * 16   # ImageNet at 256 px through the 16-px patches of SigLIP2
# (timeout_min, max_num_timeout) of each file: sized from the estimate (docs/paper_scale.md)
LAUNCHERS = {"bit_budget_paper": (240, 4), "head_type_paper": (720, 6)}


@pytest.fixture
def compose_job(tmp_path):
    """``compose_job(sweep, overrides, run="run") -> cfg``: one job of ``sweeps/<sweep>.yaml`` as Hydra hands
    it to the job (no hydra node, HydraConfig set), its run folder ``tmp_path/<run>``, data under
    ``tmp_path/data`` (shared by every job of the test, as is the tokenizer cache under it)."""
    from hydra.core.hydra_config import HydraConfig

    def compose(sweep, overrides=(), run="run"):
        cfg = compose_sweep(sweep, list(overrides))
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(tmp_path / run)
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.data_dir = str(tmp_path / "data")
        return cfg

    return compose


# ---------------------------------------------------------------- every point, at full size

@pytest.mark.parametrize("sweep", list(LAUNCHERS))
def test_every_point_composes_with_its_slurm_launcher_and_8_gpus_per_node(sweep):
    points = sweep_points(compose_sweep(sweep))
    assert len(points) == {"bit_budget_paper": 7, "head_type_paper": 15}[sweep]
    for point in points:
        cfg = compose_sweep(sweep, point)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher"), point
        assert (launcher["timeout_min"], launcher["max_num_timeout"]) == LAUNCHERS[sweep]
        assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8 and launcher["nodes"] == 1
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 8
        assert cfg.tokenizer.encoder._target_.endswith("SigLIP2Encoder") and cfg.data.image_size == 256
        assert OmegaConf.is_missing(cfg.data.source, "root")   # ImageNet's folder: the one required knob
        assert cfg.tokenizer.max_steps == 200_000 and cfg.tokenizer.global_batch_size == 256
        if sweep == "head_type_paper":
            assert cfg.generator.backbone.width == 768 and cfg.generator.backbone.depth == 24
            assert cfg.generator.max_steps == 250_000 and cfg.generator.global_batch_size == 2048
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])   # the job's own config
        job.paths.output_dir = "/run"
        OmegaConf.to_container(job, resolve=True)   # every interpolation resolves


def test_bit_budget_points_match_kl_channels_to_fsq_bits_at_full_width():
    """The KL points are the same tokenizer with the KL latent (1152 -> 2c ... c -> 1024), built on the meta
    device at full size: kl1 stores the bits of fsq16, kl2 those of fsq32."""
    from barlab.tokenizer.checkpoint import build_tokenizer

    budgets = {}
    for point in ("fsq16", "fsq32", "kl1", "kl2"):
        cfg = compose_sweep("bit_budget_paper", [f"point={point}"])
        with torch.device("meta"):
            tokenizer = build_tokenizer(cfg.tokenizer)
        quantizer = tokenizer.quantizer
        assert (quantizer.latent_channels, quantizer.out_channels) == (1152, 1024), point
        assert type(quantizer).__name__ == ("KLLatent" if point.startswith("kl") else "BinaryFSQ")
        assert getattr(quantizer, "bound", "official") == "official"
        budgets[point] = tokenizer.bits_per_image(256)
    assert budgets == {"fsq16": TOKENS * 16, "kl1": TOKENS * 16, "fsq32": TOKENS * 32, "kl2": TOKENS * 32}


def test_the_paper_preset_takes_the_kl_quantizer(compose_train, tmp_path):
    """tokenizer=bar_fsq_paper tokenizer/quantizer=kl: the preset's decoder width reaches the KL latent, and
    the official bound stays with the binary FSQ; a tiny version (32 wide in, 48 out) reconstructs."""
    from barlab.tokenizer.checkpoint import build_tokenizer

    paths = pretrained_overrides(write_tiny_pretrained(tmp_path / "pretrained"))
    cfg = compose_train([*TINY_OVERRIDES, *paths, "stage=tokenizer", "tokenizer/quantizer=kl",
                         "tokenizer.quantizer.channels=3", "tokenizer.decoder.width=48"])
    assert "bound" not in cfg.tokenizer.quantizer
    tokenizer = build_tokenizer(cfg.tokenizer)
    assert (tokenizer.quantizer.latent_channels, tokenizer.quantizer.out_channels) == (32, 48)
    recon, q = tokenizer(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert recon.shape == (2, 3, 32, 32) and q.bits is None and tokenizer.bits_per_image(32) == 16 * 3 * 16
    assert compose_train([*TINY_OVERRIDES, *paths]).tokenizer.quantizer.bound == "official"


def test_the_head_study_finds_the_bit_budget_tokenizers_in_the_cache(compose_job):
    """Each head-study job's tokenizer cache key is the bit-budget point's of the same bit width."""
    from barlab.runtime.tokenizer_cache import cache_key

    def key(sweep, *point):
        return cache_key(compose_job(sweep, point, run=sweep))[0]

    keys = {bits: key("bit_budget_paper", f"point=fsq{bits}") for bits in (10, 14, 16, 18, 32)}
    assert len(set(keys.values())) == 5
    for bits, trained in keys.items():
        assert key("head_type_paper", "head=mbm", f"tokenizer.bits={bits}") == trained, bits
    assert key("head_type_paper", "head=linear", "tokenizer.bits=16") == keys[16]   # the head is not in the key


@pytest.mark.parametrize("head, bits, refused", [("linear", 16, False), ("linear", 18, True),
                                                 ("linear", 32, True), ("mbm", 32, False)])
def test_the_linear_head_is_refused_at_18_and_32_bits_and_mbm_trains_at_32(compose_job, head, bits, refused):
    from barlab.pipeline.preflight import check_generator

    cfg = compose_job("head_type_paper", [f"head={head}", f"tokenizer.bits={bits}"])
    if not refused:
        check_generator(cfg)   # BAR-B with its head, built on the meta device
        return
    with pytest.raises(ConfigError, match=rf"^head: linear softmax over 2\^{bits} codes needs .*16,384 tokens .*"
                                          r"above head\.max_memory_gb=16"):
        check_generator(cfg)


def test_a_multirun_of_a_paper_sweep_is_checked_for_slurm_before_anything_is_submitted(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch here
    args = ("-m", "-cd", str(SWEEPS_DIR), "-cn", "head_type_paper")
    proc = call_main("barlab.train", *args, cwd=tmp_path)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        "error: hydra/launcher=slurm: sbatch is not on PATH, so no job can be submitted from this machine (fix: run "
        "on a SLURM login node, or drop hydra/launcher=slurm to run the sweep here)"], proc.stderr[-2000:]


# ---------------------------------------------------------------- the estimate

def test_the_estimate_follows_the_recipe_and_labels_itself(compose_job):
    """The tokenizer's 200k steps: 100k without the GAN, then the official alternation (50k tokenizer steps
    with the hinge term, 50k discriminator steps on a reconstruction made for them), 256 images each."""
    per_image = {"off": 3.0, "gan_g": 5.0, "recon": 1.0, "disc": 2.0}
    cfg = compose_job("bit_budget_paper", ["point=kl1"])
    expected = 256 * (100_000 * 3.0 + 50_000 * 5.0 + 50_000 * (1.0 + 2.0))
    assert sweep_cost.tokenizer_training_flops(cfg, per_image) == expected
    with open_dict(cfg):
        cfg.tokenizer.loss.gan.alternate = False
    assert sweep_cost.tokenizer_training_flops(cfg, per_image) == 256 * (100_000 * 3.0 + 100_000 * (5.0 + 2.0))
    head = compose_job("head_type_paper", ["head=mbm", "tokenizer.bits=16"])
    assert sweep_cost.pretokenized_images(head) == 2 * 1_281_167 + 50_000
    assert sweep_cost.gpu_hours(989e12 * 0.4 * 3600) == pytest.approx(1.0)


@pytest.mark.slow
def test_bench_sweep_cost_at_tiny_size():
    from barlab.bench.context import BenchContext

    # fewer points than the sweeps have (every point: tests/test_bench.py, bench=all): hydra's compose is
    # most of the time
    select = {"bit_budget_paper": ["point=fsq16,kl1"], "head_type_paper": ["tokenizer.bits=14,18,32"]}
    result = sweep_cost.run(BenchContext("ci", torch.device("cpu"), warmup=0, repeats=1), select)
    rows = {(r["sweep"], r["point"]): r for r in result["rows"]}
    assert len(rows) == 2 + 3 * 3
    refused = rows[("head_type_paper", "head=linear tokenizer.bits=32")]
    assert refused["status"] == "refused" and refused["gpu_hours"] == 0 and "head.max_memory_gb" in refused["reason"]
    # the tiny BAR-B's linear head grows as 2^k; the bitwise head's barely moves
    linear = [rows[("head_type_paper", f"head=linear tokenizer.bits={k}")]["tflop_per_sequence"] for k in (14, 18)]
    bitwise = [rows[("head_type_paper", f"head=bitwise tokenizer.bits={k}")]["tflop_per_sequence"] for k in (14, 18)]
    assert linear[1] / linear[0] > 10 and bitwise[1] / bitwise[0] < 1.1
    for name, summary in result["sweeps"].items():
        assert summary["gpu_hours"] == pytest.approx(
            sum(r["gpu_hours"] for r in result["rows"] if r["sweep"] == name) + summary["pretokenize_gpu_hours"])
        assert summary["launcher"]["covers"] and summary["launcher"]["timeout_min"] == LAUNCHERS[name][0]
    counts = result["tokenizer_flops_per_image"]
    assert set(counts) == {"barlab.tokenizer.BinaryFSQ", "barlab.tokenizer.KLLatent"}
    fsq, kl = counts["barlab.tokenizer.BinaryFSQ"], counts["barlab.tokenizer.KLLatent"]
    assert 0 < fsq["recon"] < fsq["off"] < fsq["gan_g"] and fsq["disc"] > 0 and fsq["encode"] > 0
    assert kl["off"] == pytest.approx(fsq["off"], rel=0.02)   # the bottleneck is a sliver of the step
    assert "ESTIMATE" in result["notes"][0] and "assumed" in result["notes"][0]


# ---------------------------------------------------------------- tiny runs

@pytest.fixture
def tiny_points(tmp_path):
    """Overrides that shrink any point of the two files to seconds on a CPU: the tiny paper tokenizer (its
    pretrained files written under tmp_path), BAR-B at tiny widths, a 32-px ImageFolder of 2 classes, one
    CPU process, random features for the metrics. The same for every job, so the tokenizer cache matches."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("val", 4)):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "images" / split / label / f"{i}.png")
    images = tmp_path / "images"
    common = [*sweep_cost.TINY_TOKENIZER, *pretrained_overrides(write_tiny_pretrained(tmp_path / "pretrained")),
              f"data.source.root={images / 'train'}", f"data.source.val_root={images / 'val'}",
              "data.num_workers=0", "data.val_batch_size=8", "trainer=cpu", "trainer.devices=1",
              "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
              "tokenizer.max_steps=2", "tokenizer.val_every=2", "tokenizer.loss.gan.start_step=0",
              "final_eval.max_batches=1", "callbacks.recon_grid.num_images=4", "metrics.backend=random",
              "metrics.rfid.max_samples=8", "metrics.reference.max_samples=16", "metrics.max_pr_samples=16",
              "metrics.kid_subset_size=4", "metrics.batch_size=8"]
    generator = [*sweep_cost.TINY_GENERATOR, "generator.global_batch_size=null", "generator.data.batch_size=4",
                 "generator.data.num_workers=0", "generator.data.max_val_samples=8", "generator.data.shard_size=64",
                 "generator.max_steps=2", "generator.val_every=2", "generator.scheduler.warmup_steps=1",
                 "sampling.per_class=1", "metrics.gfid.per_class=1", "metrics.gfid.batch_size=8"]
    return {"tokenizer": common, "generator": [*common, *generator]}


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.filterwarnings(r"ignore:std\(\)")   # the Inception score of 2 samples: one split
def test_points_of_both_files_run_two_steps_and_the_head_study_reuses_the_tokenizer(tmp_path, compose_job,
                                                                                     tiny_points):
    from barlab.pipeline.run import run

    # a binary-FSQ point from the command line, as one job of the sweep (no -m: it runs here, not on SLURM)
    proc = run_module("barlab.train", "-cd", str(SWEEPS_DIR), "-cn", "bit_budget_paper", "point=fsq16",
                      *tiny_points["tokenizer"], f"hydra.run.dir={tmp_path / 'fsq16'}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsq = read_json(tmp_path / "fsq16" / "results.json")
    assert fsq["status"] == "ok" and fsq["train_steps"] == 2 and fsq["bits_per_image"] == 4 * 4 * 16
    assert fsq["cache"]["hit"] is False   # trained here, and stored in the tokenizer cache

    # the KL point at the same budget: 1 channel of 16 bits per token
    kl = run(compose_job("bit_budget_paper", ["point=kl1", *tiny_points["tokenizer"]], run="kl1"))
    assert kl["train_steps"] == 2 and kl["bits_per_image"] == fsq["bits_per_image"] and 0 < kl["psnr"] < 60

    # a head-study point: its tokenizer is the fsq16 job's, from the cache; then BAR-B (tiny) trains 2 steps
    cfg = compose_job("head_type_paper", ["head=mbm", "tokenizer.bits=16", "head.width=32", "head.depth=1",
                                          *tiny_points["generator"]], run="mbm16")
    body = run(cfg)
    assert body["tokenizer_cached"] is True and body["tokenizer"]["cache"]["trained_in"] == str(tmp_path / "fsq16")
    assert body["generator"]["train_steps"] == 2 and body["gfid"] == body["gfid"]   # a number, not NaN
