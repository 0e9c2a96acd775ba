"""Tests of barlab.data: IDX files, sources, shard writing, transforms, the DataModule and the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from barlab.data import (
    FashionMNISTSource,
    ImageFolderSource,
    ImageShardDataModule,
    ImageTransform,
    SyntheticSource,
    ensure_shards,
    fashion_mnist,
    read_idx,
    write_idx,
    write_shards,
)
from barlab.data.tar_members import iter_tar
from barlab.data.transforms import center_crop, resize_shorter, to_tensor
from barlab.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def open_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barlab.shard", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _shard_labels(out_dir, manifest, split) -> dict[str, int]:
    labels = {}
    for shard in manifest["splits"][split]["shards"]:
        with open(os.path.join(out_dir, shard), "rb") as f:
            for name, data in iter_tar(f):
                if name.endswith(".cls"):
                    labels[name[:-4]] = int(data)
    return labels


def _tiny_fmnist(folder, n_train=20, n_val=10, gz=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, prefix in (("train", n_train, "train"), ("val", n_val, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
        arrays[split] = (images, labels)
    return arrays


# ---- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip_and_truncation(tmp_path, name):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = str(tmp_path / name)
    write_idx(path, images)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, images)
    ints = np.array([-7, 0, 123456], dtype=np.int32)
    write_idx(str(tmp_path / "i.idx"), ints)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "i.idx")), ints)

    raw = open_bytes(path)
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="a-idx3-ubyte"):
        read_idx(path)
    with open(path, "wb") as f:
        f.write(b"\x12\x34garbage")
    with pytest.raises(DataError, match="a-idx3-ubyte.*re-download"):
        read_idx(path)


# ---- Fashion-MNIST -----------------------------------------------------------------------------
def test_fashion_mnist_tiny_idx_dir_to_shards(tmp_path):
    arrays = _tiny_fmnist(tmp_path / "idx", gz=False)
    source = FashionMNISTSource(idx_dir=str(tmp_path / "idx"), allow_download=False)
    assert (source.num_samples("train"), source.num_samples("val")) == (20, 10)
    assert source.num_classes == 10 and source.channels == 1 and source.class_names[9] == "Ankle boot"
    key, img, label = next(source.iter_samples("train"))
    assert key == "train_0000000" and img.mode == "L" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), arrays["train"][0][0])

    out = tmp_path / "shards"
    manifest = write_shards(source, str(out), maxcount=8)
    assert manifest["splits"]["train"]["num_samples"] == 20 and manifest["splits"]["val"]["num_samples"] == 10
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert manifest["source"] == "fashion-mnist" and manifest["channels"] == 1 and manifest["num_classes"] == 10
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for split in ("train", "val"):
        labels = _shard_labels(out, manifest, split)
        assert [labels[f"{split}_{i:07d}"] for i in range(len(labels))] == arrays[split][1].tolist()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folders left behind


def test_fashion_mnist_lookup_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        FashionMNISTSource(idx_dir="/nonexistent")
    assert err.value.knob == "idx_dir" and "train-images-idx3-ubyte" in str(err.value)
    assert "\n" not in str(err.value)

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "missing"))
    source = FashionMNISTSource(download_dir=str(tmp_path / "dl"), allow_download=False)  # lazy: no error yet
    with pytest.raises(DataError) as err:
        next(source.iter_samples("train"))
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "data.source.idx_dir" in str(err.value)

    arrays = _tiny_fmnist(tmp_path / "mirror", n_train=3, n_val=2)  # download (from a file:// mirror)
    monkeypatch.setattr(fashion_mnist, "BASE_URL", (tmp_path / "mirror").as_uri() + "/")
    source = FashionMNISTSource(download_dir=str(tmp_path / "dl"))
    assert not (tmp_path / "dl").exists()  # constructing does not download
    assert [label for _, _, label in source.iter_samples("val")] == arrays["val"][1].tolist()
    expected = sorted(n + ".gz" for pair in fashion_mnist.FILES.values() for n in pair)
    assert sorted(os.listdir(tmp_path / "dl")) == expected

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "mirror"))  # the Debian folder needs no idx_dir
    assert FashionMNISTSource(allow_download=False).num_samples("train") == 3


# ---- synthetic source and transforms ------------------------------------------------------------
def test_synthetic_source_is_deterministic_and_class_dependent():
    a, b = SyntheticSource(num_train=16, num_classes=3, seed=1), SyntheticSource(num_train=16, num_classes=3, seed=1)
    samples = list(a.iter_samples("train"))
    assert len(samples) == 16 and len({k for k, _, _ in samples}) == 16
    for (ka, ia, la), (kb, ib, lb) in zip(samples, b.iter_samples("train")):
        assert ka == kb and la == lb and np.array_equal(np.asarray(ia), np.asarray(ib))
    assert {label for _, _, label in samples} == {0, 1, 2}
    assert samples[0][1].mode == "RGB" and samples[0][1].size == (16, 16)
    gray = SyntheticSource(num_val=2, channels=1, image_size=8)
    assert next(gray.iter_samples("val"))[1].mode == "L"
    with pytest.raises(ConfigError) as err:
        SyntheticSource(channels=2)
    assert err.value.knob == "channels" and err.value.fix == "channels=3"


def test_source_and_data_errors_name_the_knobs_through_the_config(compose_train):
    from barlab.config.instantiate import instantiate_checked

    with pytest.raises(ConfigError) as err:
        instantiate_checked(compose_train(["experiment=smoke", "data.source.channels=2"]).data, "data")
    assert str(err.value) == "data.source.channels: must be 1 or 3, got 2 (fix: data.source.channels=3)"
    with pytest.raises(ConfigError) as err:
        instantiate_checked(compose_train(["experiment=smoke", "data.batch_size=0"]).data, "data")
    assert str(err.value) == "data.batch_size: must be a positive integer, got 0 (fix: data.batch_size=64)"


def test_transforms_shapes_and_ranges():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 40), dtype=np.uint8))  # W=40, H=28
    assert resize_shorter(img, 32).size == (46, 32)
    assert center_crop(resize_shorter(img, 32), 32).size == (32, 32)
    t3 = to_tensor(img, 3)
    assert t3.shape == (3, 28, 40) and t3.dtype == torch.float32 and torch.equal(t3[0], t3[2])
    assert t3.min() >= -1 and t3.max() <= 1
    assert float(to_tensor(Image.new("L", (2, 2), 255), 1).max()) == 1.0
    assert to_tensor(Image.new("RGB", (5, 3), (255, 0, 0)), 1).shape == (1, 3, 5)
    out = ImageTransform(32, 3, train=True)(img)
    assert out.shape == (3, 32, 32) and out.min() >= -1 and out.max() <= 1


# ---- DataModule ---------------------------------------------------------------------------------
def test_datamodule_round_trip_synthetic(tmp_path):
    source = SyntheticSource(num_train=40, num_val=24, image_size=12, num_classes=4, channels=3)
    dm = ImageShardDataModule(str(tmp_path / "shards"), source=source, image_size=16, batch_size=8,
                              val_batch_size=10, num_workers=0, epoch_length=20, shuffle_buffer=16)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.num_classes, dm.channels, dm.image_size) == (4, 3, 16)

    train = dm.train_dataloader()
    batches = list(train)
    assert len(train) == len(batches) == 3  # ceil(20 / 8)
    for batch in batches:
        assert batch["image"].shape == (8, 3, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1 and batch["image"].std() > 0.1
        assert batch["label"].dtype == torch.long and batch["skipped"] == 0
        assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < 4

    val = list(dm.val_dataloader())
    assert [len(b["label"]) for b in val] == [10, 10, 4]
    expected = list(source.iter_samples("val"))
    assert torch.cat([b["label"] for b in val]).tolist() == [label for _, _, label in expected]
    # and the images: the source's own, through the shards (PNG, lossless) and the eval transform (12 -> 16 px)
    by_hand = torch.stack([ImageTransform(16, 3, train=False)(image) for _, image, _ in expected])
    assert torch.equal(torch.cat([b["image"] for b in val]), by_hand)
    eval_tf = ImageTransform(16, 3, train=False)
    assert torch.allclose(val[0]["image"][3], eval_tf(expected[3][1]))  # PNG is lossless
    assert dm.skipped == 0

    gray = ImageShardDataModule(str(tmp_path / "shards"), channels=1, image_size=8, batch_size=4,
                                num_workers=0, max_val_samples=7)
    val = list(gray.val_dataloader())
    assert val[0]["image"].shape == (4, 1, 8, 8)
    assert torch.cat([b["label"] for b in val]).tolist() == [label for _, _, label in expected[:7]]


def _hand_made_dataset(folder, source, garbage_at=3):
    """Shards of source's val split, with a garbage PNG inserted as sample ``garbage_at`` of the first shard."""
    members = []
    for i, (key, img, label) in enumerate(source.iter_samples("val")):
        if i == garbage_at:
            members += [("val_bad.cls", b"1"), ("val_bad.png", b"this is not a png")]
        members += [(f"{key}.cls", str(label).encode()), (f"{key}.png", _png(img))]
    os.makedirs(folder)
    _write_tar(os.path.join(folder, "val-000000.tar"), members)
    _write_tar(os.path.join(folder, "train-000000.tar"), members)
    n = source.num_samples("val")
    manifest = {"source": "hand", "num_classes": source.num_classes, "class_names": source.class_names,
                "channels": 3,
                "splits": {s: {"num_samples": n, "shards": [f"{s}-000000.tar"]} for s in ("train", "val")}}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_sample_is_skipped_and_counted(tmp_path, num_workers):
    source = SyntheticSource(num_val=9, image_size=8)
    _hand_made_dataset(str(tmp_path / "d"), source)
    dm = ImageShardDataModule(str(tmp_path / "d"), image_size=8, batch_size=4, num_workers=num_workers)
    batches = list(dm.val_dataloader())
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [label for _, _, label in source.iter_samples("val")]  # 9 good of 10 stored
    assert sum(b["skipped"] for b in batches) == 1 and batches[0]["skipped"] == 1
    assert dm.skipped == 1
    train = next(iter(dm.train_dataloader()))  # the train stream skips it too
    assert train["image"].shape == (4, 3, 8, 8)


def test_skip_count_is_exact_with_two_loader_workers(tmp_path):
    """Two val shards, one per worker, with 1 and 2 garbage samples: 3 skips in all, none lost or doubled."""
    source = SyntheticSource(num_val=12, image_size=8)
    samples = list(source.iter_samples("val"))
    folder = tmp_path / "d"
    folder.mkdir()
    shards, garbage = [], {0: [2], 1: [0, 4]}
    for s, part in enumerate((samples[:6], samples[6:])):
        members = []
        for i, (key, img, label) in enumerate(part):
            if i in garbage[s]:
                members += [(f"val_bad{s}{i}.cls", b"1"), (f"val_bad{s}{i}.png", b"not a png")]
            members += [(f"{key}.cls", str(label).encode()), (f"{key}.png", _png(img))]
        name = f"val-{s:06d}.tar"
        _write_tar(str(folder / name), members)
        shards.append(name)
    manifest = {"source": "hand", "num_classes": source.num_classes, "class_names": source.class_names,
                "channels": 3, "splits": {"val": {"num_samples": 12, "shards": shards},
                                          "train": {"num_samples": 12, "shards": shards}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dm = ImageShardDataModule(str(folder), image_size=8, batch_size=4, num_workers=2)
    batches = list(dm.val_dataloader())
    labels = sorted(torch.cat([b["label"] for b in batches]).tolist())
    assert labels == sorted(label for _, _, label in samples)      # all 12 good samples, each once
    assert sum(b["skipped"] for b in batches) == 3
    assert dm.skipped == 3


def test_truncated_or_missing_shard_does_not_crash(tmp_path):
    source = SyntheticSource(num_train=8, num_val=30, image_size=8)
    out = str(tmp_path / "s")
    write_shards(source, out, maxcount=10)
    shard = os.path.join(out, "val-000001.tar")
    raw = open_bytes(shard)
    with open(shard, "wb") as f:
        f.write(raw[: len(raw) // 2 + 100])  # cut in the middle of a member
    os.remove(os.path.join(out, "val-000002.tar"))
    dm = ImageShardDataModule(out, image_size=8, batch_size=4, num_workers=0)
    labels = torch.cat([b["label"] for b in dm.val_dataloader()]).tolist()
    expected = [label for _, _, label in source.iter_samples("val")]
    assert 10 < len(labels) < 20 and labels == expected[: len(labels)]
    assert dm.skipped == 2  # one truncated shard, one missing shard


def test_config_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        ensure_shards(str(tmp_path / "empty"), None)
    assert err.value.knob == "out_dir" and "python -m barlab.shard" in str(err.value)
    with pytest.raises(ConfigError) as err:  # read lazily by the data module: its own argument
        ImageShardDataModule(str(tmp_path / "empty"), batch_size=1).prepare_data()
    assert err.value.knob == "shards_dir" and "python -m barlab.shard" in str(err.value)
    with pytest.raises(ConfigError, match="batch_size"):
        ImageShardDataModule(str(tmp_path / "empty"), batch_size=0)


def test_ensure_shards_prepares_once_under_concurrency(tmp_path):
    class CountingSource(SyntheticSource):
        calls = 0

        def iter_range(self, split, start, stop):   # what the shard writer reads, one call per shard
            CountingSource.calls += 1
            yield from super().iter_range(split, start, stop)

    source = CountingSource(num_train=30, num_val=10, image_size=8)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_shards(str(tmp_path / "x"), source)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CountingSource.calls == 2  # train + val written once (one shard each)
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert ensure_shards(str(tmp_path / "x"), None)["splits"]["train"]["num_samples"] == 30


# ---- ImageFolder --------------------------------------------------------------------------------
def test_imagefolder_source(tmp_path):
    root = tmp_path / "train"
    for c, cls in enumerate(["emu", "cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB" if c else "L", (20, 12), (40 * i, 30 * c, 0) if c else 40 * i).save(root / cls / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    (root / "dog" / "notes.txt").write_text("ignored")

    source = ImageFolderSource(str(root), val_fraction=0.2, max_size=6)
    assert source.class_names == ["cat", "dog", "emu"] and source.num_classes == 3 and source.channels == 3
    assert source.num_samples("train") + source.num_samples("val") == 16 and source.num_samples("val") == 3
    samples = {s: list(source.iter_samples(s)) for s in ("train", "val")}
    assert len(samples["train"]) + len(samples["val"]) == 15
    assert source.skipped["train"] + source.skipped["val"] == 1
    assert sorted(label for _, _, label in samples["val"]) == [0, 1, 2]
    assert all(img.mode == "RGB" and img.size == (10, 6) for _, img, _ in samples["train"])
    again = ImageFolderSource(str(root), val_fraction=0.2)
    assert [k for k, _, _ in again.iter_samples("val")] == [k for k, _, _ in samples["val"]]

    val_root = tmp_path / "val"
    (val_root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(val_root / "cat" / "a.jpg")
    with_val = ImageFolderSource(str(root), val_root=str(val_root))
    assert with_val.num_samples("val") == 1 and with_val.num_samples("train") == 16
    with pytest.raises(ConfigError) as err:
        ImageFolderSource(str(tmp_path / "nope"))
    assert err.value.knob == "root"


# ---- imports and CLI ----------------------------------------------------------------------------
def test_import_does_not_pull_torchvision():
    code = ("import sys, barlab, barlab.data, webdataset; barlab.data.ImageShardDataModule; "
            "import barlab.data.image_datamodule, barlab.shard; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.quick
def test_cli(tmp_path):
    from helpers import call_main

    out = tmp_path / "syn"
    # in-process (barlab.shard.main with this argv); the refusal below runs as a real process
    res = call_main("barlab.shard", "synthetic", "--out", str(out), "--num-train", "12", "--num-val", "5",
                    "--image-size", "8", "--maxcount", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == 12 and len(manifest["splits"]["train"]["shards"]) == 3
    assert "train=12" in res.stdout and "val=5" in res.stdout

    res = _run_cli("fashion-mnist", "--idx-dir", "/nonexistent", "--out", str(tmp_path / "fm"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.source.idx_dir")
    assert not (tmp_path / "fm").exists()


def test_stale_shards_are_reused_with_a_warning(tmp_path, caplog):
    out = str(tmp_path / "s")
    first = ensure_shards(out, SyntheticSource(num_train=6, num_val=2, image_size=8))
    assert first["source_spec"]["num_train"] == 6
    again = ensure_shards(out, SyntheticSource(num_train=9, num_val=2, image_size=8))
    assert again == first and "delete the folder or change data.shards_dir" in caplog.text


# ---- the shared shard folder and the readers -----------------------------------------------------
def _four_sample_shard(folder) -> str:
    from barlab.data.shard_folder import SplitShards

    with SplitShards(str(folder), "train", 100) as writer:
        for i in range(4):
            writer.add(f"s{i}", {"cls": str(i).encode(), "png": bytes(600)})   # 5 blocks a sample
        writer.close()
    return str(folder / "train-000000.tar")


@pytest.mark.parametrize("cut", [None, 2 * 5 * 512, 2 * 5 * 512 + 700, 2 * 5 * 512 + 100, 0])
def test_both_tar_readers_give_the_same_samples_and_skips(tmp_path, cut):
    """Whole, cut at a member boundary (no end-of-archive marker), inside a member, inside a header, empty."""
    from barlab.data.loader_stages import SkipCounter
    from barlab.data.tar_samples import READERS, TarSamples

    shard = _four_sample_shard(tmp_path)
    if cut is not None:
        with open(shard, "r+b") as f:
            f.truncate(cut)
    urls = [{"url": shard}, {"url": shard + ".missing"}, {"url": shard}]
    seen = {}
    for reader in READERS:
        counter = SkipCounter(shared=False)
        seen[reader] = ([(s["__key__"], s["cls"], s["png"]) for s in TarSamples(counter, reader=reader)(urls)],
                        counter.total)
    assert seen["webdataset"] == seen["tarstream"]
    keys, skips = [key for key, _, _ in seen["tarstream"][0]], seen["tarstream"][1]
    expected = {None: ["s0", "s1", "s2", "s3"], 2 * 5 * 512: ["s0"], 2 * 5 * 512 + 700: ["s0", "s1"],
                2 * 5 * 512 + 100: ["s0"], 0: []}[cut]
    assert keys == expected * 2 and skips == 1 + (2 if cut is not None else 0)


def test_shards_are_byte_identical_and_ustar(tmp_path):
    """Same source twice: the same bytes (fixed member metadata); plain ustar members, in sorted ext order."""
    source = SyntheticSource(num_train=6, num_val=2, image_size=8)
    a, b = write_shards(source, str(tmp_path / "a"), maxcount=4), write_shards(source, str(tmp_path / "b"), maxcount=4)
    assert a["splits"] == b["splits"] and a["splits"]["train"]["shard_sizes"] == [4, 2]
    for name in a["splits"]["train"]["shards"] + a["splits"]["val"]["shards"]:
        assert open_bytes(tmp_path / "a" / name) == open_bytes(tmp_path / "b" / name)
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:2]] == ["train_0000000.cls", "train_0000000.png"]
    assert {(m.mtime, m.mode, m.uname, m.gname, m.uid) for m in members} == {(0, 0o444, "", "", 0)}
    assert open_bytes(tmp_path / "a" / "train-000000.tar")[257:263] == b"ustar\x00"


def test_token_folder_is_written_like_an_image_folder(tmp_path):
    """Token shards go through the same folder writer: foreign folders refused, old ones replaced, 0755."""
    from barlab.data.token_shards import read_token_manifest, write_token_shards

    meta = {"seq_len": 2, "bits": 3, "grid": [1, 2]}
    rows = [(f"k{i}", np.full((2, 3), i % 2, dtype=np.uint8), i) for i in range(5)]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        write_token_shards({"train": rows}, str(foreign), meta)
    assert err.value.knob == "out_dir" and "refusing to overwrite" in str(err.value)
    assert (foreign / "notes.txt").exists()
    out = tmp_path / "tokens"
    write_token_shards({"train": rows}, str(out), meta, maxcount=2)
    manifest = write_token_shards({"train": rows[:3]}, str(out), meta, maxcount=2)
    assert read_token_manifest(str(out)) == manifest and manifest["splits"]["train"]["shard_sizes"] == [2, 1]
    assert sorted(os.listdir(out)) == ["manifest.json", "train-000000.tar", "train-000001.tar"]
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    (out / "manifest.json").write_text(json.dumps({**manifest, "kind": "images"}))
    with pytest.raises(DataError, match="unreadable manifest.*pretokenize again"):
        read_token_manifest(str(out))


def test_max_val_samples_means_the_same_for_images_and_tokens(tmp_path):
    """The first N stored samples of the val split, in shard order, across shard boundaries."""
    from barlab.data.token_datamodule import TokenShardDataModule
    from barlab.data.token_shards import write_token_shards

    source = SyntheticSource(num_train=4, num_val=10, image_size=8)
    write_shards(source, str(tmp_path / "img"), maxcount=4)
    labels = [label for _, _, label in source.iter_samples("val")]
    rows = {s: [(f"{s}{i}", np.zeros((2, 3), np.uint8), label) for i, label in enumerate(labels)]
            for s in ("train", "val")}
    write_token_shards(rows, str(tmp_path / "tok"), {"seq_len": 2, "bits": 3, "grid": [1, 2]}, maxcount=4)
    for n in (3, 6, 10, 50):
        images = ImageShardDataModule(str(tmp_path / "img"), image_size=8, batch_size=4, num_workers=0,
                                      max_val_samples=n)
        tokens = TokenShardDataModule(str(tmp_path / "tok"), batch_size=4, num_workers=0, max_val_samples=n)
        got_images = torch.cat([b["label"] for b in images.val_dataloader()]).tolist()
        got_tokens = torch.cat([b["label"] for b in tokens.val_dataloader()]).tolist()
        assert got_images == got_tokens == labels[:n]
    with pytest.raises(ConfigError) as err:
        TokenShardDataModule(str(tmp_path / "tok"), max_val_samples=0)
    assert err.value.knob == "max_val_samples"  # generator.data.max_val_samples through the generator stage


def test_skip_counter_pickles_without_its_shared_total_outside_worker_start():
    """Pickled outside a worker's start (a deepcopy of the pipeline, a checkpoint), the counter drops the
    cross-process Value (which can only be shared by inheritance) and becomes a local one; the copy's
    skips never reach the original's total."""
    import pickle

    from barlab.data.loader_stages import SkipCounter

    counter = SkipCounter()
    counter.skip("sample a", "bad png")
    copy = pickle.loads(pickle.dumps(counter))
    assert copy._shared is None and (copy.local, copy.total) == (1, 1)
    copy.skip("sample b", "bad png")
    assert (copy.local, copy.total) == (2, 2) and (counter.local, counter.total) == (1, 1)
