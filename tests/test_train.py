"""End-to-end: `python -m barlab.train` runs, sweeps, writes results and refuses bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import call_main, error_lines, read_json, run_module
from PIL import Image

from barlab.tokenizer.checkpoint import load_tokenizer


def test_smoke_run_writes_results_checkpoint_and_grid(smoke_tokenizer):
    """The session's smoke tokenizer run (conftest.py): experiment=smoke stage=tokenizer tokenizer.bits=6."""
    run_dir = smoke_tokenizer.parent
    results = read_json(run_dir / "results.json")
    assert results["status"] == "ok"
    assert results["overrides"]["tokenizer.bits"] == 6
    assert results["bits_per_token"] == 6
    assert results["grid"] == [4, 4]                      # 16 px / f4
    assert results["bits_per_image"] == 4 * 4 * 6
    assert results["train_steps"] == 20

    grid = Image.open(run_dir / "recon_grid.png")
    assert grid.mode == "RGB" and grid.width > 16 * 8    # 8 per row, enlarged
    assert (run_dir / "checkpoints" / "tokenizer" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "tokenizer" / "metrics.csv").read_text().count("train/loss") == 1

    tokenizer, info = load_tokenizer(run_dir / "tokenizer.pt")
    assert info["bits_per_token"] == 6 and info["image_size"] == 16
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    bits = tokenizer.encode_bits(images)
    assert bits.shape == (2, 16, 6) and set(bits.unique().tolist()) <= {0.0, 1.0}
    assert tokenizer.decode_bits(bits, (4, 4)).shape == (2, 3, 16, 16)

    # The reported SSIM and bit usage are those of the exported (EMA) tokenizer on the 128 validation images
    # (final_eval.max_batches=2 x val_batch_size=64), recomputed here from tokenizer.pt and the shards:
    # usage = share of ones per bit over the 128 x 16 tokens, entropy = H(usage), SSIM on [0, 1] images.
    from torchmetrics.functional.image import structural_similarity_index_measure

    from barlab.data import ImageShardDataModule

    val = ImageShardDataModule(str(run_dir.parent / "data" / "shards" / "synthetic_16px"), image_size=16,
                               val_batch_size=64, num_workers=0)
    images = torch.cat([b["image"] for b in val.val_dataloader()])
    assert images.shape == (128, 3, 16, 16)
    with torch.no_grad():
        bits = tokenizer.encode_bits(images)
        recon = tokenizer.decode_bits(bits, (4, 4)).float().clamp(-1, 1)
    usage = bits.reshape(-1, 6).mean(0)
    assert results["bit_stats"]["usage"] == pytest.approx(usage.tolist(), abs=2 / 2048)
    entropy = [0.0 if u in (0.0, 1.0) else -(u * math.log2(u) + (1 - u) * math.log2(1 - u))
               for u in results["bit_stats"]["usage"]]
    assert results["bit_stats"]["entropy"] == pytest.approx(entropy, abs=1e-6)
    ssim = structural_similarity_index_measure((recon + 1) / 2, (images + 1) / 2, data_range=1.0).item()
    assert results["ssim"] == pytest.approx(ssim, abs=2e-3)
    assert results["ssim"] < 0.999  # 20 steps do not reconstruct perfectly: the number is not a constant
    # PSNR as the module computes it: per image over (C, H, W) on [0, 1] pixels, averaged over the 128 images
    mse = ((recon + 1) / 2 - (images + 1) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    assert results["psnr"] == pytest.approx(psnr, abs=0.02)
    flat = (10 * torch.log10(1 / ((images + 1) / 2 - 0.5).pow(2).mean(dim=(1, 2, 3)))).mean().item()
    assert results["psnr"] > flat + 1.0  # better than a mid-grey image: the 20 steps learnt something


@pytest.mark.slow
def test_multirun_writes_one_results_per_job(tokenizer_sweep):
    """The session's tokenizer sweep (conftest.py): tokenizer.bits=0,4,8, the first refused."""
    _, sweep = tokenizer_sweep
    runs = sorted(sweep.glob("*/results.json"))
    assert [p.parent.name for p in runs] == ["0", "1", "2"]
    by_bits = {read_json(p)["overrides"]["tokenizer.bits"]: read_json(p) for p in runs}
    assert by_bits[4]["bits_per_image"] == 64 and by_bits[8]["bits_per_image"] == 128
    assert by_bits[4]["train_steps"] == by_bits[8]["train_steps"] == 6
    assert by_bits[4]["status"] == by_bits[8]["status"] == "ok"


@pytest.mark.slow
def test_failing_sweep_point_keeps_the_others_and_exits_nonzero(tokenizer_sweep):
    proc, sweep = tokenizer_sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = {read_json(p)["overrides"]["tokenizer.bits"]: read_json(p) for p in sweep.glob("*/results.json")}
    assert rows[0]["status"] == "failed" and "tokenizer.bits" in rows[0]["error"]
    assert rows[0]["outcome"] == "refused"
    assert rows[4]["status"] == "ok" and rows[8]["status"] == "ok"
    # the job's own line as it is refused, then the sweep's summary naming it once the sweep is over
    assert error_lines(proc.stderr) == [f"error: {rows[0]['error']}",
                                        "error: 1 of 3 sweep job(s) failed: #0 (experiment=smoke stage=tokenizer "
                                        "tokenizer.bits=0 tokenizer.max_steps=6 tokenizer.val_every=6 "
                                        "metrics.rfid.enabled=False cache.tokenizer=False): refused: "  # as parsed
                                        f"{rows[0]['error']} (see python -m barlab.analysis {sweep})"]


@pytest.mark.parametrize("override, knob", [
    ("tokenizer.bits=0", "tokenizer.bits"),
    ("tokenizer.bits=-3", "tokenizer.bits"),
    ("tokenizer.bits=2.5", "tokenizer.bits"),
    ("tokenizer.bits=abc", "tokenizer.bits"),
    ("tokenizer/quantizer=vq", "tokenizer/quantizer"),
    ("tokenizer.quantizer=fsq", "tokenizer.quantizer"),
    ("data=fashion_mnist data.source.idx_dir=/nonexistent/fmnist", "data.source.idx_dir"),
    ("data=imagefolder", "data.source.root"),
    ("data.image_size=30", "data.image_size"),
    ("tokenizer.max_steps=0", "tokenizer.max_steps"),
    ("generator.token_shuffle=0", "generator.token_shuffle"),
    ("stage=generator", "tokenizer_ckpt"),
    ("stage=sample", "stage"),
    ("ckpt_path=/etc/hostname", "ckpt_path"),
    ("head=linear tokenizer.bits=40", "head"),
    ("head=softmax", "head"),
])
def test_bad_config_exits_nonzero_with_one_line_naming_the_knob(tmp_path, override, knob):
    # in-process (barlab.train.main with this argv): the same exit status and stderr, without a start-up;
    # test_linear_head_refusal_happens_before_any_training runs one refusal as a real process
    proc = call_main("barlab.train", "experiment=smoke", *override.split(), f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert knob in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.quick
def test_linear_head_refusal_happens_before_any_training(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module("barlab.train", "experiment=smoke", "head=linear", "tokenizer.bits=40",
                      f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "2^40" in line and "head=mbm" in line
    assert not (run_dir / "checkpoints").exists()          # refused before the tokenizer even started
    assert read_json(run_dir / "results.json")["status"] == "failed"
