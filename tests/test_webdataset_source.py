"""``data=webdataset``: existing WebDataset shards in the official BAR layout (brace URLs; ``jpg``/``png``/``jpeg``/
``webp`` + ``cls`` members), read as they are with the official preprocessing, split over ranks and workers like
barlab's own shards, refused in one line when a file is missing or unreadable."""

from __future__ import annotations

import io
import itertools
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from barlab.data.wds_datamodule import WebDatasetDataModule, even_sizes, expand_urls
from barlab.errors import ConfigError

SHARDS, PER_SHARD = 4, 3
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
BIG = (300, 400)  # (width, height) of the one image that is not 256 x 256: sample 0 of val shard 0


def encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=FORMATS[ext], **({"quality": 95} if ext != "png" else {}))
    return buf.getvalue()


def label_of(shard: int, j: int) -> int:
    return 10 * shard + j  # the shard and the sample can be read back from the label


def solid(label: int, size=(256, 256)) -> Image.Image:
    """Red channel = 4 * label (so the label can be read back from the image), G 100, B 200."""
    return Image.new("RGB", size, (4 * label, 100, 200))


def big_image() -> Image.Image:
    """A 300 x 400 image with a vertical and a horizontal ramp, so that any other crop or resize shows."""
    y, x = np.mgrid[0:BIG[1], 0:BIG[0]]
    arr = np.stack([x * 255 // BIG[0], y * 255 // BIG[1], (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def write_official_shards(folder, split: str) -> str:
    """SHARDS shards ``imagenet-{split}-00000i.tar`` of PER_SHARD samples, image members cycling through jpg, png,
    webp, jpeg; returns the brace pattern. Sample 0 of val shard 0 is the 300 x 400 PNG ``big_image``."""
    os.makedirs(folder, exist_ok=True)
    exts = itertools.cycle(FORMATS)
    for shard in range(SHARDS):
        with wds.TarWriter(os.path.join(folder, f"imagenet-{split}-{shard:06d}.tar"), encoder=False) as tar:
            for j in range(PER_SHARD):
                label = label_of(shard, j)
                ext = next(exts)
                img = solid(label)
                if (split, shard, j) == ("val", 0, 0):
                    ext, img = "png", big_image()
                tar.write({"__key__": f"{split}_{label:08d}", ext: encode(img, ext), "cls": str(label).encode()})
    return os.path.join(folder, f"imagenet-{split}-{{000000..{SHARDS - 1:06d}}}.tar")


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagenet")
    return write_official_shards(str(folder), "train"), write_official_shards(str(folder), "val")


def module(patterns, **kw) -> WebDatasetDataModule:
    args = dict(num_classes=1000, train_samples=SHARDS * PER_SHARD, val_samples=SHARDS * PER_SHARD, batch_size=4,
                num_workers=0, shuffle_buffer=4, seed=0)
    return WebDatasetDataModule(*patterns, **{**args, **kw})


def red_labels(images: torch.Tensor) -> list[int]:
    """Labels read back from solid images' red channel (JPEG / WebP are lossy: rounded)."""
    red = (images[:, 0].mean(dim=(1, 2)) + 1) * 255 / 2
    return [round(float(r) / 4) for r in red]


def all_labels() -> list[int]:
    return [label_of(s, j) for s in range(SHARDS) for j in range(PER_SHARD)]


def test_brace_patterns_expand_in_order(patterns):
    train, _ = patterns
    urls = expand_urls(train, "train_urls")
    assert [os.path.basename(u) for u in urls] == [f"imagenet-train-{i:06d}.tar" for i in range(SHARDS)]
    assert all(os.path.isabs(u) for u in urls)
    assert expand_urls([train.replace("{000000..000003}", "{000000..000001}"),
                        train.replace("{000000..000003}", "00000{2,3}")], "train_urls") == urls  # lists too
    assert even_sizes(10, 4) == [3, 3, 2, 2] and sum(even_sizes(50000, 50)) == 50000


def test_train_loader_yields_official_batches_with_their_labels(patterns):
    dm = module(patterns, val_batch_size=5)
    assert (dm.num_classes, dm.channels, dm.class_names[7]) == (1000, 3, "7")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 3  # epoch of train_samples = 12 samples: 3 batches of 4
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
        image, label = batch["image"], batch["label"]
        assert image.shape == (4, 3, 256, 256) and image.dtype == torch.float32 and label.dtype == torch.int64
        assert image.min() >= -1 and image.max() <= 1
        assert red_labels(image) == label.tolist()                 # each image with its own label
        assert torch.allclose(image[:, 1], torch.tensor(100 * 2 / 255 - 1), atol=0.05)   # G of every format
    assert set(itertools.chain(*(b["label"].tolist() for b in batches))) <= set(all_labels())
    assert dm.skipped == 0


def test_eval_is_the_deterministic_official_centre_crop(patterns):
    dm = module(patterns, val_batch_size=SHARDS * PER_SHARD)
    first, second = next(iter(dm.val_dataset())), next(iter(dm.val_dataset()))
    assert torch.equal(first["image"], second["image"]) and first["label"].tolist() == all_labels()
    # the 300 x 400 image: shorter side to 256 (bicubic) -> 256 x 341, central 256 x 256 crop, no flip
    resized = big_image().resize((256, 341), Image.Resampling.BICUBIC)
    top = (341 - 256) // 2
    want = np.asarray(resized.crop((0, top, 256, top + 256)), dtype=np.float32).transpose(2, 0, 1) * 2 / 255 - 1
    assert torch.allclose(first["image"][0], torch.from_numpy(want), atol=1e-6)
    assert red_labels(first["image"][1:]) == all_labels()[1:]


def test_train_crops_a_large_image_to_the_image_size(patterns, tmp_path):
    (tmp_path / "one").mkdir()
    with wds.TarWriter(str(tmp_path / "one" / "big-000000.tar"), encoder=False) as tar:
        tar.write({"__key__": "a", "jpg": encode(big_image(), "jpg"), "cls": b"5"})
        tar.write({"__key__": "b", "png": encode(solid(6), "png"), "cls": b"6"})  # a JPEG decoder that fails: 6
    dm = WebDatasetDataModule(str(tmp_path / "one" / "big-000000.tar"), patterns[1], batch_size=1, num_workers=0,
                              train_samples=2, shuffle_buffer=0)
    batch = next(iter(dm.train_dataset()))
    assert batch["image"].shape == (1, 3, 256, 256) and batch["label"].tolist() == [5]
    assert dm.skipped == 0


def as_rank(monkeypatch, rank: int, world: int, worker: int, workers: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setattr(torch.utils.data, "get_worker_info",
                        lambda: SimpleNamespace(id=worker, num_workers=workers) if workers > 1 else None)


def test_two_ranks_by_two_workers_split_the_shards(patterns, monkeypatch):
    dm = module(patterns, val_batch_size=2, num_workers=2)
    seen, per_rank = [], []
    for rank in range(2):
        mine = []
        for worker in range(2):
            as_rank(monkeypatch, rank, 2, worker, 2)
            mine += [label for batch in dm.val_dataset() for label in batch["label"].tolist()]
        per_rank.append(mine)
        seen += mine
    assert sorted(seen) == all_labels()                  # one eval pass: every sample once, none twice
    assert all(per_rank)
    # first max_val_samples samples, the shard sizes taken from val_samples
    limited = []
    for rank, worker in itertools.product(range(2), range(2)):
        as_rank(monkeypatch, rank, 2, worker, 2)
        limited += [label for batch in module(patterns, max_val_samples=5, num_workers=2).val_dataset()
                    for label in batch["label"].tolist()]
    assert sorted(limited) == all_labels()[:5]
    # training: each rank resamples its own shards (urls[rank::world]), every worker its own stream
    for rank in range(2):
        shards = set()
        for worker in range(2):
            as_rank(monkeypatch, rank, 2, worker, 2)
            for batch in itertools.islice(module(patterns, num_workers=2, batch_size=2).train_dataset(), 4):
                shards |= {label // 10 for label in batch["label"].tolist()}
        assert shards <= set(range(rank, SHARDS, 2)) and shards


def test_bad_samples_and_shards_are_skipped_not_fatal(patterns, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    with wds.TarWriter(str(folder / "val-000000.tar"), encoder=False) as tar:
        tar.write({"__key__": "a", "jpg": encode(solid(1), "jpg"), "cls": b"1"})
        tar.write({"__key__": "b", "txt": b"a caption, no image", "cls": b"2"})  # no image member
        tar.write({"__key__": "c", "webp": b"not a webp", "cls": b"3"})           # corrupt image
        tar.write({"__key__": "d", "png": encode(solid(4), "png"), "cls": b"4"})
    (folder / "val-000001.tar").write_bytes(b"garbage, not a tar" * 100)           # damaged shard
    dm = WebDatasetDataModule(patterns[0], str(folder / "val-00000{0..1}.tar"), val_samples=5, num_workers=0,
                              val_batch_size=8)
    batches = list(dm.val_dataset())
    assert [b["label"].tolist() for b in batches] == [[1, 4]]
    assert batches[0]["skipped"] == 3 and dm.skipped == 3


@pytest.mark.parametrize("case", ["no file", "some missing", "directory", "remote", "empty"])
def test_missing_or_unreadable_files_are_refused_in_one_line(patterns, tmp_path, case):
    train, val = patterns
    (tmp_path / "x-000000.tar").mkdir()
    bad, message = {
        "no file": (str(tmp_path / "nope-{0..2}.tar"), f"train_urls: no file: {tmp_path}/nope-0.tar does not exist"),
        "some missing": (train.replace("000003}", "000009}"),
                         f"train_urls: 6 missing of 10 files: {os.path.dirname(train)}/imagenet-train-000004.tar "
                         "does not exist"),
        "directory": (str(tmp_path / "x-{000000..000000}.tar"), f"train_urls: {tmp_path}/x-000000.tar is not a "
                                                                 "readable file"),
        "remote": ("https://host/imagenet-{0..1}.tar", "train_urls: 'https://host/imagenet-{0..1}.tar': only local"),
        "empty": ("", "train_urls: names no shard files"),
    }[case]
    with pytest.raises(ConfigError) as err:
        WebDatasetDataModule(bad, val)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert "(fix: train_urls=" in str(err.value)


def test_the_composed_config_instantiates_and_passes_the_checks(patterns, compose_train):
    from barlab.config.instantiate import instantiate_checked
    from barlab.pipeline.preflight import check_config

    train, val = patterns
    cfg = compose_train(["data=webdataset", f"data.train_urls='{train}'", f"data.val_urls='{val}'",
                         "stage=tokenizer", "data.num_workers=0", "data.train_samples=12", "data.val_samples=12"])
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.num_classes) == (256, 3, 1000)
    check_config(cfg)
    dm = instantiate_checked(cfg.data, "data")
    assert type(dm) is WebDatasetDataModule and dm.train_urls == expand_urls(train, "x")
    assert dm.manifest["splits"]["val"]["shard_sizes"] == [3, 3, 3, 3] and dm.epoch_length == 12
    missing = train.replace("000003}", "000005}")
    cfg = compose_train(["data=webdataset", f"data.train_urls='{missing}'", f"data.val_urls='{val}'",
                         "stage=tokenizer"])
    for step in (check_config, lambda c: instantiate_checked(c.data, "data")):
        with pytest.raises(ConfigError, match=r"^data\.train_urls: 2 missing of 6 files: .*imagenet-train-000004\.tar "
                                              r"does not exist \(fix: data\.train_urls="):
            step(cfg)
    with pytest.raises(ConfigError, match=r"^data\.train_urls: is required but not set"):
        check_config(compose_train(["data=webdataset", "stage=tokenizer"]))
