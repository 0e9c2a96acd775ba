"""Generator pipeline: paper presets, pretokenization, token shards, one tiny run per head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import read_json, run_module
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from barlab.config.paths import CONFIG_DIR
from barlab.data import ImageShardDataModule, SyntheticSource
from barlab.data.pretokenize import PretokenizeLimits, pretokenize
from barlab.data.token_datamodule import TokenShardDataModule
from barlab.data.token_shards import pack_bits, unpack_bits
from barlab.errors import ConfigError
from barlab.pipeline.generator_stage import pretokenize_limits
from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, Tokenizer

# (preset, bits per AR step, AR grid, paper parameter count)
PRESETS = [("bar_b", 16, (16, 16), 415e6), ("bar_b_p2", 64, (8, 8), 415e6),
           ("bar_b_p4", 256, (4, 4), 416e6), ("bar_l", 16, (16, 16), 1.1e9)]


@pytest.mark.parametrize("preset, bits_per_step, grid, paper", PRESETS)
def test_paper_presets_match_the_published_parameter_counts(preset, bits_per_step, grid, paper):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"generator={preset}", "head=mbm"])
    p = cfg.generator.token_shuffle
    assert 16 * p * p == bits_per_step                      # 16-bit tokenizer, p x p shuffling
    with torch.device("meta"):
        backbone = instantiate(cfg.generator.backbone, bits_per_step=bits_per_step, grid=grid, num_classes=1000)
        head = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=bits_per_step)
    total = sum(t.numel() for t in backbone.parameters()) + sum(t.numel() for t in head.parameters())
    assert abs(total - paper) / paper < 0.01, f"{preset}: {total / 1e6:.1f}M vs {paper / 1e6:.0f}M"


def test_bit_packing_round_trip():
    bits = (np.random.default_rng(0).random((64, 13)) > 0.5).astype(np.uint8)
    payload = pack_bits(bits)
    assert len(payload) == (64 * 13 + 7) // 8
    assert np.array_equal(unpack_bits(payload, 64, 13), bits)


def tiny_images_and_tokenizer(tmp_path):
    """24 training and 8 validation synthetic 16 px images in shards under ``tmp_path/img`` (no
    augmentation), and a random 5-bit tokenizer on a 4x4 grid, in eval mode."""
    images = ImageShardDataModule(str(tmp_path / "img"), SyntheticSource(num_train=24, num_val=8, image_size=16,
                                                                         num_classes=4), image_size=16,
                                  batch_size=8, num_workers=0, flip=False, random_crop=False)
    torch.manual_seed(0)
    tokenizer = Tokenizer(ConvEncoder(3, width=8, depth=1, downsample=4, out_channels=8), BinaryFSQ(8, bits=5),
                          ConvDecoder(3, width=8, depth=1, upsample=4, in_channels=8)).eval()
    return images, tokenizer


def test_pretokenization_stores_original_and_flip_and_reads_back(tmp_path):
    images, tokenizer = tiny_images_and_tokenizer(tmp_path)
    manifest = pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=8)
    assert (manifest["seq_len"], manifest["bits"], manifest["grid"]) == (16, 5, [4, 4])
    assert manifest["splits"]["train"]["num_samples"] == 48 and manifest["splits"]["val"]["num_samples"] == 8

    tokens = TokenShardDataModule(str(tmp_path / "tokens"), batch_size=8, num_workers=0)
    (val_batch,) = list(tokens.val_dataloader())
    (image_batch,) = list(images.val_dataloader())
    with torch.no_grad():
        expected = tokenizer.encode_bits(image_batch["image"])
    assert val_batch["bits"].shape == (8, 16, 5)
    assert torch.equal(val_batch["bits"], expected)
    assert torch.equal(val_batch["label"], image_batch["label"])

    train = next(iter(tokens.train_dataloader()))
    assert train["bits"].shape == (8, 16, 5) and set(train["bits"].unique().tolist()) <= {0.0, 1.0}

    # the train shards hold, for image i, key ..._{i}_0 = bits of the image and ..._{i}_1 = bits of its mirror image
    import tarfile

    stored = {}
    for shard in sorted((tmp_path / "tokens").glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".bits"):
                    stored[member.name[:-5]] = unpack_bits(tar.extractfile(member).read(), 16, 5)
    assert len(stored) == 48
    train_images = torch.cat([b["image"] for b in images.eval_dataset("train", batch_size=8)])
    assert train_images.shape == (24, 3, 16, 16)
    with torch.no_grad():
        plain_bits = tokenizer.encode_bits(train_images)
        mirror = torch.flip(train_images, dims=[3])                                  # left-right, by hand
        assert torch.equal(mirror[..., 0], train_images[..., -1])
        flipped_bits = tokenizer.encode_bits(mirror)
    for i in range(24):
        assert np.array_equal(stored[f"train_{i:07d}_0"], plain_bits[i].numpy()), i
        assert np.array_equal(stored[f"train_{i:07d}_1"], flipped_bits[i].numpy()), i
    assert not torch.equal(plain_bits, flipped_bits)


def test_pretokenization_limits_encode_the_first_images_and_refuse_other_shards(tmp_path):
    images, tokenizer = tiny_images_and_tokenizer(tmp_path)
    limits = PretokenizeLimits(train_images=10, val_images=3, flip=False)
    assert limits.folder_suffix() == "_train10_val3_noflip" and PretokenizeLimits().folder_suffix() == ""
    manifest = pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=8, limits=limits)
    assert manifest["splits"]["train"]["num_samples"] == 10 and manifest["splits"]["val"]["num_samples"] == 3
    assert manifest["augmentations"]["train"] == ["original"] and manifest["pretokenize"] == limits.as_dict()
    # the first 10 training images, in shard order, and no mirror images
    tokens = TokenShardDataModule(str(tmp_path / "tokens"), batch_size=3, num_workers=0)
    (val_batch,) = list(tokens.val_dataloader())
    first = next(iter(images.eval_dataset("val", batch_size=3)))
    with torch.no_grad():
        assert torch.equal(val_batch["bits"], tokenizer.encode_bits(first["image"]))
    limits.check_manifest(manifest, "tokens")
    with pytest.raises(ConfigError, match="pretokenized with") as err:
        PretokenizeLimits().check_manifest(manifest, "tokens")
    assert err.value.knob == "limits"
    PretokenizeLimits().check_manifest({"splits": {}}, "tokens")        # no record: written with the default
    with pytest.raises(ConfigError) as err:
        PretokenizeLimits(train_images=0)
    assert err.value.knob == "train_images"


def test_pretokenize_knob_errors_name_the_knob(compose_train):
    cfg = compose_train(["generator.data.pretokenize.val_images=-1"])
    with pytest.raises(ConfigError) as err:
        pretokenize_limits(cfg)
    assert err.value.knob == "generator.data.pretokenize.val_images"
    cfg = compose_train(["+generator.data.pretokenize.shuffle=true"])
    with pytest.raises(ConfigError, match="not a pretokenization setting") as err:
        pretokenize_limits(cfg)
    assert err.value.knob == "generator.data.pretokenize.shuffle"
    assert pretokenize_limits(compose_train([])) == PretokenizeLimits(20000, 2000, True)
    v1 = pretokenize_limits(compose_train(["experiment=main_job_v1"]))
    assert v1 == PretokenizeLimits() and v1.folder_suffix() == ""


@pytest.mark.slow
def test_one_tiny_end_to_end_run_per_head(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("barlab.train", "-m", "experiment=smoke", "head=linear,bitwise,mbm", "tokenizer.bits=6",
                      "tokenizer.max_steps=6", "tokenizer.val_every=6", "generator.max_steps=6",
                      "generator.val_every=6", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {read_json(p)["overrides"]["head"]: p.parent for p in sweep.glob("*/results.json")}
    assert sorted(runs) == ["bitwise", "linear", "mbm"]
    for head, run_dir in runs.items():
        results = read_json(run_dir / "results.json")
        assert results["status"] == "ok" and results["stage"] == "all"
        gen = results["generator"]
        assert gen["head"].lower().startswith(head[:3]) and gen["bits_per_step"] == 6 and gen["ar_steps"] == 16
        assert gen["train_steps"] == 6
        # 6 steps from init (logits ~0, see test_heads.py) barely move the loss off the uniform cross-entropy:
        # ln(2^6) = 6 ln 2 per token for the softmax over codes, ln 2 per bit for the per-bit heads; bit
        # (the tokenizer's bits are not balanced, so the first steps learn their biases: the loss only falls)
        uniform = 6 * math.log(2) if head == "linear" else math.log(2)
        assert 0.85 * uniform < gen["train_loss"] < 1.02 * uniform, (head, gen["train_loss"], uniform)
        # the final validation numbers, recomputed from generator.pt on the run's first 2 val batches of token
        # shards (final_eval.max_batches=2 x 16): exactly for the deterministic heads; MBM masks at random
        assert results["generator_val_bit_accuracy"] == gen["val_bit_accuracy"]
        loss, accuracy = validation_by_hand(run_dir, batches=2)
        if head == "mbm":
            assert loss == pytest.approx(gen["val_loss"], abs=0.05), (loss, gen["val_loss"])
        else:
            assert (loss, accuracy) == pytest.approx((gen["val_loss"], gen["val_bit_accuracy"]), abs=1e-5), head
        assert 0.0 < gen["train_bit_accuracy"] < 1.0
        check_diagnostics(run_dir, head, results)
        grid = Image.open(run_dir / "sample_grid.png")
        # 4 classes x 2 samples per class, 16 px images with 2 px padding, enlarged x2
        assert grid.size == (2 * (2 * 18 + 2), 2 * (4 * 18 + 2))


def check_diagnostics(run_dir, head: str, results: dict) -> None:
    """The diagnostics of a smoke run (64 validation sequences, 20 spliced images, 16 AR steps of 6 bits)."""
    from barlab.generator import cosine_allocation

    gen = results["generator"]
    diag = {k: v for k, v in gen.items() if k.startswith("diag_")}
    assert diag and all(results[k] == v for k, v in diag.items())          # lifted to the top level as they are
    assert diag["diag_sequences"] == 64 and "64 validation sequences" in gen["diagnostics_label"]
    alloc = cosine_allocation(6, 4) if head == "mbm" else (6,)
    assert [diag[f"diag_unmask_step{s}_bits"] for s in range(len(alloc))] == list(alloc)
    assert f"diag_unmask_step{len(alloc)}_acc" not in diag
    assert sorted(int(k[11:-10]) for k in diag if k.startswith("diag_splice")) == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert all(0.0 <= diag[k] <= 1.0 for k in diag if k.endswith("_acc"))
    if head != "mbm":
        # one-step heads: the first step's argmax with the true label is the teacher-forced bit accuracy
        _, accuracy = validation_by_hand(run_dir, batches=4)
        assert diag["diag_first_step_acc_label"] == pytest.approx(accuracy, abs=1e-6)
    logged = (run_dir / "csv" / "generator").rglob("metrics.csv")
    assert any("diagnostics/diag_first_step_acc_null" in p.read_text() for p in logged)


def validation_by_hand(run_dir, batches: int) -> tuple[float, float]:
    """Mean head loss and bit accuracy of ``run_dir/generator.pt`` over the first ``batches`` val batches of
    16 of its token shards, in raster order with the true labels, as GeneratorModule.validation_step does."""
    from itertools import islice

    from einops import rearrange

    from barlab.generator.image_generator import load_generator

    model, _ = load_generator(run_dir)
    tokens = TokenShardDataModule(str(run_dir / "tokens"), batch_size=16, num_workers=0, max_val_samples=64)
    losses, accuracies = [], []
    torch.manual_seed(0)
    with torch.no_grad():
        for batch in islice(tokens.val_dataloader(), batches):
            cond = model.backbone(batch["bits"], batch["label"])
            out = model.head.loss(rearrange(cond, "b l c -> (b l) c"), rearrange(batch["bits"], "b l k -> (b l) k"))
            losses.append(out.loss.item())
            accuracies.append(out.bit_accuracy.item())
    assert len(losses) == batches
    return sum(losses) / batches, sum(accuracies) / batches


@pytest.mark.parametrize("overrides, knob, fix", [
    (["tokenizer/quantizer=kl"], "head", "head=diffusion"),
    (["head=diffusion"], "tokenizer/quantizer", "tokenizer/quantizer=kl"),
])
def test_stage_all_refuses_a_head_of_the_other_token_type_before_training(compose_train, overrides, knob, fix):
    from barlab.errors import ConfigError
    from barlab.pipeline.preflight import check_config

    with pytest.raises(ConfigError) as err:
        check_config(compose_train(["experiment=smoke", *overrides]))
    assert str(err.value).startswith(f"{knob}: ") and f"(fix: {fix}" in str(err.value)
    check_config(compose_train(["experiment=smoke", "tokenizer/quantizer=kl", "head=diffusion"]))  # the pair is fine
