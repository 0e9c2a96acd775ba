"""Pretokenization over ranks: the plan of token shards, ranks sharing the work (same shards as one
process), resuming a killed run, and the command line under torchrun."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import barlab.data.pretokenize as pt
from barlab.data import ImageShardDataModule, SyntheticSource
from barlab.data.pretokenize import PretokenizeLimits, TokenShard, plan_token_shards, pretokenize
from barlab.data.shard_folder import partial_dir
from barlab.data.token_shards import read_token_manifest
from barlab.errors import ConfigError, DataError
from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, Tokenizer
from barlab.tokenizer.checkpoint import save_tokenizer
from tests.helpers import call_main, error_lines, read_json, run_module

TOKENIZER = {"encoder": {"_target_": "barlab.tokenizer.ConvEncoder", "in_channels": 3, "width": 8, "depth": 1,
                         "downsample": 4, "out_channels": 8},
             "quantizer": {"_target_": "barlab.tokenizer.BinaryFSQ", "latent_channels": 8, "bits": 5},
             "decoder": {"_target_": "barlab.tokenizer.ConvDecoder", "out_channels": 3, "width": 8, "depth": 1,
                         "upsample": 4, "in_channels": 8}}


def images_and_tokenizer(tmp_path: Path, num_train: int = 34, num_val: int = 9, size: int = 16, shard: int = 6,
                         factor: int = 4, bits: int = 5) -> tuple[ImageShardDataModule, Tokenizer]:
    """By default 34 training images in image shards of 6 (6, 6, 6, 6, 6, 4) and 9 validation images
    (6, 3), 16 px; a random 5-bit tokenizer on a 4x4 grid (``size // factor`` tokens a side)."""
    images = ImageShardDataModule(str(tmp_path / "img"), SyntheticSource(num_train=num_train, num_val=num_val,
                                                                         image_size=size, num_classes=4),
                                  image_size=size, batch_size=4, num_workers=0, shard_size=shard)
    torch.manual_seed(0)
    width = 8 if factor == 4 else 4
    tokenizer = Tokenizer(ConvEncoder(3, width=width, depth=1, downsample=factor, out_channels=width),
                          BinaryFSQ(width, bits=bits),
                          ConvDecoder(3, width=width, depth=1, upsample=factor, in_channels=width)).eval()
    return images, tokenizer


def digests(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every tar in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_plan_groups_whole_image_shards_to_fill_shard_size():
    # 24 sequences per token shard, 2 views of 5-image shards: 2 image shards (20 sequences) each
    plan = plan_token_shards("train", [5, 5, 5, 5, 3], views=2, shard_size=24)
    assert [(s.shards, s.start, s.limit) for s in plan] == [((0, 1), 0, None), ((2, 3), 10, None), ((4,), 20, None)]
    assert [s.images for s in plan] == [10, 10, 3]
    assert [s.name for s in plan] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    # the first 12 images: the second token shard stops 2 images into it, nothing after
    limited = plan_token_shards("train", [5, 5, 5, 5, 3], views=2, shard_size=24, max_images=12)
    assert [(s.shards, s.start, s.limit) for s in limited] == [((0, 1), 0, None), ((2, 3), 10, 2)]
    assert [s.images for s in limited] == [10, 2]
    # a token shard smaller than one image shard still takes a whole one; one view: twice as many per shard
    assert [s.shards for s in plan_token_shards("val", [5, 5, 5], views=1, shard_size=3)] == [(0,), (1,), (2,)]
    assert [s.shards for s in plan_token_shards("val", [5, 5, 5], views=1, shard_size=10)] == [(0, 1), (2,)]
    assert plan_token_shards("val", [], views=1, shard_size=10) == []
    with pytest.raises(DataError, match="no recorded sizes"):
        plan_token_shards("train", [5, None], views=2, shard_size=24)


def test_the_layout_and_keys(tmp_path):
    images, tokenizer = images_and_tokenizer(tmp_path)
    manifest = pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=4, shard_size=24)
    # 24 // (2 x 6) = 2 image shards (24 sequences) per train token shard; 24 // 6 = 4 per val token shard
    assert manifest["splits"]["train"] == {"num_samples": 68, "shards": ["train-000000.tar", "train-000001.tar",
                                                                          "train-000002.tar"],
                                           "shard_sizes": [24, 24, 20]}
    assert manifest["splits"]["val"] == {"num_samples": 9, "shards": ["val-000000.tar"], "shard_sizes": [9]}
    import tarfile

    with tarfile.open(tmp_path / "tokens" / "train-000001.tar") as tar:
        keys = sorted({name.split(".")[0] for name in tar.getnames()})
    assert keys == sorted(f"train_{i:07d}_{v}" for i in range(12, 24) for v in (0, 1))
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == [
        "manifest.json", "train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    assert not Path(partial_dir(str(tmp_path / "tokens"))).exists()


def run_ranks(world: int, tokenizer, images, out: Path, shard_size: int = 24, stall_timeout_s: float = 30,
              **kwargs) -> list[dict]:
    """``pretokenize`` as ``world`` ranks of one attempt, each in its own thread; their manifests."""
    results: list = [None] * world

    def rank(r: int) -> None:
        try:
            results[r] = pretokenize(tokenizer, images, str(out), batch_size=4, shard_size=shard_size, rank=r,
                                     world=world, attempt="attempt-1", stall_timeout_s=stall_timeout_s, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread
            results[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in reversed(threads):  # the other ranks first: they must wait for rank 0
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_ranks_share_the_work_and_write_the_shards_of_one_process(tmp_path, monkeypatch):
    images, tokenizer = images_and_tokenizer(tmp_path)
    one = pretokenize(tokenizer, images, str(tmp_path / "one"), batch_size=4, shard_size=24)
    writers: dict[str, str] = {}
    original = pt.write_tar

    def recording(path, samples):
        writers[Path(path).name] = threading.current_thread().name
        if Path(path).name not in ("train-000000.tar", "val-000000.tar"):
            time.sleep(0.5)  # ranks 1 and 2 finish after rank 0: it must wait for every shard to publish
        return original(path, samples)

    monkeypatch.setattr(pt, "write_tar", recording)
    manifests = run_ranks(3, tokenizer, images, tmp_path / "three", stall_timeout_s=10)  # a stalled rank fails fast
    assert all(m == one for m in manifests)
    assert digests(tmp_path / "three") == digests(tmp_path / "one")
    # rank r wrote shards r, r + 3, ... of [train-0, train-1, train-2, val-0]: every rank its own
    by_thread: dict[str, set[str]] = {}
    for name, thread in writers.items():
        by_thread.setdefault(thread, set()).add(name)
    assert sorted(map(sorted, by_thread.values())) == [["train-000000.tar", "val-000000.tar"],
                                                      ["train-000001.tar"], ["train-000002.tar"]]


def test_ranks_at_256_px_match_one_process(tmp_path):
    """ImageNet's size: 256 px images (in shards of 3) and a tokenizer with a 16x16 grid of 6-bit tokens."""
    images, tokenizer = images_and_tokenizer(tmp_path, num_train=7, num_val=2, size=256, shard=3, factor=16, bits=6)
    one = pretokenize(tokenizer, images, str(tmp_path / "one"), batch_size=4, shard_size=6)
    assert (one["seq_len"], one["bits"], one["grid"], one["image_size"]) == (256, 6, [16, 16], 256)
    assert one["splits"]["train"]["shard_sizes"] == [6, 6, 2] and one["splits"]["val"]["shard_sizes"] == [2]
    assert run_ranks(2, tokenizer, images, tmp_path / "two", shard_size=6) == [one, one]
    assert digests(tmp_path / "two") == digests(tmp_path / "one")


def test_a_killed_run_resumes_with_only_the_missing_shards(tmp_path, monkeypatch):
    images, tokenizer = images_and_tokenizer(tmp_path)
    pretokenize(tokenizer, images, str(tmp_path / "ref"), batch_size=4, shard_size=24)
    out, written = tmp_path / "tokens", []
    original = pt.write_tar

    def dies_on_the_third(path, samples):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while encoding
        written.append(Path(path).name)
        return original(path, samples)

    monkeypatch.setattr(pt, "write_tar", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        pretokenize(tokenizer, images, str(out), batch_size=4, shard_size=24)
    partial = Path(partial_dir(str(out)))
    assert sorted(p.name for p in partial.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert read_token_manifest(str(out)) is None

    # other settings are refused, the finished shards kept
    with pytest.raises(ConfigError, match="unfinished write") as err:
        pretokenize(tokenizer, images, str(out), batch_size=4, shard_size=24, limits=PretokenizeLimits(flip=False))
    assert err.value.knob == "out_dir"

    written.clear()
    monkeypatch.setattr(pt, "write_tar",
                        lambda path, samples: written.append(Path(path).name) or original(path, samples))
    manifest = pretokenize(tokenizer, images, str(out), batch_size=4, shard_size=24)
    assert written == ["train-000002.tar", "val-000000.tar"]
    assert digests(out) == digests(tmp_path / "ref") and manifest == read_token_manifest(str(tmp_path / "ref"))
    assert not partial.exists()


def test_a_rank_without_rank_0_gives_up_in_one_line(tmp_path):
    images, tokenizer = images_and_tokenizer(tmp_path)
    with pytest.raises(DataError, match=r"rank 1: waiting for rank 0 to start .*nothing new for 1 s"):
        pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=4, shard_size=24, rank=1, world=2,
                    attempt="a", stall_timeout_s=1)
    with pytest.raises(ConfigError) as err:
        pretokenize(tokenizer, images, str(tmp_path / "tokens"), rank=2, world=2)
    assert err.value.knob == "rank"
    assert isinstance(TokenShard("train", 0, (0,), 0), TokenShard)


@pytest.mark.process
def test_torchrun_ranks_write_what_one_process_writes(tmp_path):
    """``python -m barlab.pretokenize`` under torchrun with 2 ranks, against 1 process: the same token
    shards; each rank logs its own shards; a finished folder is reused as it is."""
    images, tokenizer = images_and_tokenizer(tmp_path)
    ckpt = save_tokenizer(tmp_path / "tokenizer.pt", OmegaConf.create(TOKENIZER), tokenizer.state_dict(), 16, 3)
    data = ("data=synthetic", "data.source.num_train=34", "data.source.num_val=9", "data.shard_size=6",
            f"data.shards_dir={tmp_path / 'img'}", "data.num_workers=0")
    common = (f"tokenizer_ckpt={ckpt}", "batch_size=4", "shard_size=24", "device=cpu", *data)
    env_threads = {"OMP_NUM_THREADS": "1"}
    one = run_module("barlab.pretokenize", *common, f"out_dir={tmp_path / 'one'}", cwd=tmp_path, env=env_threads)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_module("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "barlab.pretokenize",
                     *common, f"out_dir={tmp_path / 'two'}", cwd=tmp_path, env=env_threads)
    assert two.returncode == 0, two.stderr[-2000:]
    assert digests(tmp_path / "two") == digests(tmp_path / "one") and len(digests(tmp_path / "one")) == 4
    assert read_json(tmp_path / "two" / "manifest.json") == read_json(tmp_path / "one" / "manifest.json")
    logs = one.stdout + one.stderr, two.stdout + two.stderr
    assert "rank 0/2" in logs[1] and "rank 1/2" in logs[1] and "train-000001.tar, 24 sequences (rank 1/2" in logs[1]


@pytest.mark.quick
def test_the_command_refuses_bad_limits_and_a_missing_tokenizer_in_one_line(tmp_path):
    bad = call_main("barlab.pretokenize", f"tokenizer_ckpt={tmp_path / 'none.pt'}", f"out_dir={tmp_path / 'x'}",
                    "limits.train_images=0", cwd=tmp_path)
    assert bad.returncode == 2 and error_lines(bad.stderr) == [error_lines(bad.stderr)[0]]
    assert error_lines(bad.stderr)[0].startswith("error: limits.train_images:")
    missing = call_main("barlab.pretokenize", f"tokenizer_ckpt={tmp_path / 'none.pt'}", f"out_dir={tmp_path / 'x'}",
                        cwd=tmp_path)
    assert missing.returncode == 2 and f"tokenizer_ckpt={tmp_path / 'none.pt'} does not exist" in missing.stderr
    assert not (tmp_path / "x").exists()
