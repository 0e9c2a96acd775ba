"""Image shards written by several processes, and resumed after an interruption.

Shard ``i`` holds the samples ``[i * maxcount, (i + 1) * maxcount)`` of its split whatever the
number of writer processes; an interrupted write keeps its finished shards in ``.OUT.partial`` and
the same call again writes only the others.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from barlab.data.image_shards import PARTIAL, iter_range, read_manifest, write_shards
from barlab.data.imagefolder import ImageFolderSource
from barlab.data.shard_folder import partial_dir
from barlab.data.synthetic import SyntheticSource
from barlab.errors import ConfigError


def tar_samples(path) -> list[tuple[str, bytes, bytes]]:
    """``(key, png bytes, cls bytes)`` of every sample of a shard, in order."""
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".")[0] for name in members})
    return [(k, members[f"{k}.png"], members[f"{k}.cls"]) for k in keys]


def folder_bytes(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder)) if name.endswith(".tar")}


def small_source() -> SyntheticSource:
    return SyntheticSource(num_train=23, num_val=7, image_size=8, num_classes=3)


# Worker pools start Python processes (multiprocessing's spawn, which the conftest's audit of subprocess
# calls does not see): those tests are marked `process` by hand and run in the full tier.
@pytest.mark.process
def test_one_and_three_workers_write_the_same_shards(tmp_path):
    source = small_source()
    one = write_shards(source, str(tmp_path / "one"), maxcount=5, workers=1)
    three = write_shards(source, str(tmp_path / "three"), maxcount=5, workers=3)
    for manifest in (one, three):
        assert manifest["splits"]["train"]["shards"] == [f"train-{i:06d}.tar" for i in range(5)]
        assert manifest["splits"]["train"]["shard_sizes"] == [5, 5, 5, 5, 3]
        assert manifest["splits"]["val"]["shard_sizes"] == [5, 2]
        assert manifest["splits"]["train"]["num_samples"] == 23
    a, b = folder_bytes(tmp_path / "one"), folder_bytes(tmp_path / "three")
    assert list(a) == list(b) and len(a) == 7
    assert a == b  # byte-identical shards
    # shard i holds samples [5 i, 5 i + 5) of the split, in order, with the source's images and labels
    samples = tar_samples(tmp_path / "three" / "train-000003.tar")
    assert [k for k, _, _ in samples] == [f"train_{i:07d}" for i in range(15, 20)]
    img, label = source.make("train", 17)
    key, png, cls = samples[2]
    assert int(cls) == label
    with Image.open(io.BytesIO(png)) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(img))
    assert not os.path.exists(partial_dir(tmp_path / "three"))  # published: nothing left behind


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.process)])
def test_an_interrupted_write_resumes_with_only_the_missing_shards(tmp_path, workers):
    source = SyntheticSource(num_train=40, num_val=7, image_size=8, num_classes=3)  # 10 + 2 shards of 4
    all_shards = {("train", i) for i in range(10)} | {("val", 0), ("val", 1)}
    out = tmp_path / "out"
    first: list[tuple[str, int]] = []

    def interrupt_after_one(split, index, count):
        first.append((split, index))
        raise Interrupt

    with pytest.raises(Interrupt):
        write_shards(source, str(out), maxcount=4, workers=workers, on_shard=interrupt_after_one)
    partial = partial_dir(out)
    assert not os.path.exists(out) and read_manifest(str(out)) is None  # nothing published
    kept = {name: os.stat(os.path.join(partial, name)).st_mtime_ns
            for name in os.listdir(partial) if name.endswith(".tar")}
    kept_ids = {(name.split("-")[0], int(name.split("-")[1][:6])) for name in kept}
    # the interrupted one, plus (workers > 1) those still running then, at most one per other worker
    assert set(first) <= kept_ids and len(kept) <= workers
    # a killed worker's unfinished shard is thrown away on the re-run
    missing = sorted(all_shards - kept_ids)
    with open(os.path.join(partial, f"{missing[-1][0]}-{missing[-1][1]:06d}.tar.tmp"), "wb") as f:
        f.write(b"half a tar")

    second: list[tuple[str, int]] = []
    manifest = write_shards(source, str(out), maxcount=4, workers=workers,
                            on_shard=lambda split, index, count: second.append((split, index)))
    assert sorted(second) == missing  # only the missing shards were written, each once
    clean = write_shards(source, str(tmp_path / "clean"), maxcount=4)
    assert folder_bytes(out) == folder_bytes(tmp_path / "clean") and len(folder_bytes(out)) == 12
    assert manifest["splits"] == clean["splits"]
    for name, mtime in kept.items():  # the kept shards were not rewritten
        assert os.stat(out / name).st_mtime_ns == mtime
    assert sorted(os.listdir(out)) == sorted([*folder_bytes(out), "manifest.json"])  # no .tmp, no partial.json
    assert not os.path.exists(partial)


def test_a_partial_folder_of_another_source_or_maxcount_is_refused(tmp_path):
    out = tmp_path / "out"

    def interrupt(split, index, count):
        raise Interrupt

    with pytest.raises(Interrupt):
        write_shards(small_source(), str(out), maxcount=5, on_shard=interrupt)
    with open(os.path.join(partial_dir(out), PARTIAL)) as f:
        assert json.load(f)["maxcount"] == 5
    with pytest.raises(ConfigError, match=r"^out_dir: .*\.out\.partial holds an unfinished write of .*'maxcount': 5"
                                          r".*not .*'maxcount': 4") as err:
        write_shards(small_source(), str(out), maxcount=4)
    assert "\n" not in str(err.value)
    other = SyntheticSource(num_train=23, num_val=7, image_size=8, num_classes=3, seed=1)
    with pytest.raises(ConfigError, match="holds an unfinished write"):
        write_shards(other, str(out), maxcount=5)
    assert write_shards(small_source(), str(out), maxcount=5)["splits"]["train"]["num_samples"] == 23


def test_workers_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match="^workers: .*fix: workers=1"):
        write_shards(small_source(), str(tmp_path / "out"), workers=0)


def make_imagefolder(root, per_class=(5, 4), bad=("b", 2)):
    """``root/<a|b>/<i>.png`` 12x10 images, with one unreadable file ``bad``."""
    rng = np.random.default_rng(0)
    for cls, n in zip("ab", per_class):
        os.makedirs(root / cls)
        for i in range(n):
            path = root / cls / f"{i}.png"
            if (cls, i) == bad:
                path.write_bytes(b"not an image")
            else:
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)


@pytest.mark.process
def test_imagefolder_shards_are_positional_slices_with_skipped_files_left_out(tmp_path):
    make_imagefolder(tmp_path / "root")
    source = ImageFolderSource(str(tmp_path / "root"), val_fraction=0.0, max_size=6)
    keys = [k for k, _, _ in source.iter_samples("train")]
    assert len(keys) == 8 and "train_0000007" not in keys  # file 7 (b/2.png) is unreadable
    # the slice [4, 9) has the same keys, images and labels as the whole split has there
    part = list(iter_range(source, "train", 4, 9))
    whole = {k: (np.asarray(img), label) for k, img, label in source.iter_samples("train")}
    assert [k for k, _, _ in part] == ["train_0000004", "train_0000005", "train_0000006", "train_0000008"]
    for key, img, label in part:
        np.testing.assert_array_equal(np.asarray(img), whole[key][0])
        assert label == whole[key][1]
    one = write_shards(source, str(tmp_path / "one"), maxcount=4, workers=1)
    two = write_shards(ImageFolderSource(str(tmp_path / "root"), val_fraction=0.0, max_size=6),
                       str(tmp_path / "two"), maxcount=4, workers=2)
    assert one["splits"] == two["splits"]
    assert one["splits"]["train"]["shard_sizes"] == [4, 3, 1]  # shard 1 lost the unreadable file
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    assert [k for k, _, _ in tar_samples(tmp_path / "two" / "train-000001.tar")] == \
        ["train_0000004", "train_0000005", "train_0000006"]


@pytest.mark.process
def test_cli_workers_flag(tmp_path, capsys):
    from barlab.shard import main

    args = ["synthetic", "--num-train", "23", "--num-val", "7", "--image-size", "8", "--num-classes", "3",
            "--maxcount", "5"]
    assert main([*args, "--out", str(tmp_path / "bad"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --workers: must be") and "\n" not in err
    assert main([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    write_shards(small_source(), str(tmp_path / "one"), maxcount=5)
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")


def test_datamodule_passes_shard_workers_through(tmp_path, monkeypatch):
    import barlab.data.image_datamodule as dm

    seen = {}

    def fake_ensure(out_dir, source=None, maxcount=2000, workers=1):
        seen.update(maxcount=maxcount, workers=workers)
        return write_shards(source, out_dir, maxcount=maxcount, workers=1)

    monkeypatch.setattr(dm, "ensure_shards", fake_ensure)
    module = dm.ImageShardDataModule(str(tmp_path / "s"), source=small_source(), shard_size=5, shard_workers=3)
    assert module.num_classes == 3 and seen == {"maxcount": 5, "workers": 3}
    with pytest.raises(ConfigError, match="^shard_workers: "):
        dm.ImageShardDataModule(str(tmp_path / "s"), source=small_source(), shard_workers=0)
