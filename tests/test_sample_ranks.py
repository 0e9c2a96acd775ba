"""Class-balanced samples over ranks: per-chunk seeds, every chunk drawn once by one rank, one npz that
equals one process's, resuming a killed run, and ``barlab.sample`` under torchrun."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from barlab.errors import ConfigError
from barlab.metrics.class_balanced import (
    chunk_seed,
    class_balanced_labels,
    parts_dir,
    sample_class_balanced,
    sample_to_npz,
)
from barlab.utils.image_sets import npz_shapes, read_npz, write_npz, write_npz_from_parts
from tests.helpers import read_json, run_module
from tests.test_fidelity import write_generator


class FakeGenerator:
    """``generate(labels, generator)``: images whose pixels are the label plus noise from the stream
    (1 x 4 x 4 in [-1, 1]); counts the labels of every call."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, labels: torch.Tensor, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        with self.lock:
            self.calls.append(labels.tolist())
        noise = torch.rand(len(labels), 1, 4, 4, generator=generator)
        return (labels[:, None, None, None] / 10 + scale * noise / 2).clamp(-1, 1) * 2 - 1


def test_labels_and_chunk_seeds():
    assert class_balanced_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    seeds = {chunk_seed(s, c) for s in range(3) for c in range(50)}
    assert len(seeds) == 150 and all(0 <= x < 2**63 for x in seeds)
    assert chunk_seed(0, 1) == chunk_seed(0, 1)


def test_one_process_draws_each_chunk_from_its_own_stream():
    gen = FakeGenerator()
    images, labels = sample_class_balanced(gen, num_classes=3, per_class=5, batch_size=4, seed=7, show_bar=False,
                                           scale=1.0)
    assert images.shape == (15, 1, 4, 4) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert gen.calls == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 2, 2], [2, 2, 2]]
    # chunk 2 alone, from its own seed, gives the same images: no dependence on the chunks before it
    again = FakeGenerator()(labels[8:12], torch.Generator().manual_seed(chunk_seed(7, 2)))
    from barlab.utils.image_grid import float_to_uint8

    assert torch.equal(images[8:12], float_to_uint8(again))
    other, _ = sample_class_balanced(FakeGenerator(), 3, 5, batch_size=4, seed=8, show_bar=False)
    assert not torch.equal(images, other)


def draw(world: int, npz: Path, gen=None, **kwargs) -> FakeGenerator:
    """``sample_to_npz`` as ``world`` ranks, each in its own thread (rank 0 last)."""
    gen = gen or FakeGenerator()
    errors: list = []

    def rank(r: int) -> None:
        try:
            sample_to_npz(gen, 3, 5, npz, batch_size=4, seed=7, rank=r, world=world, show_bar=False,
                          stall_timeout_s=30, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=rank, args=(r,)) for r in reversed(range(world))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return gen


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_draw_every_chunk_once_and_join_the_npz_of_one_process(tmp_path, world):
    draw(1, tmp_path / "one.npz", png_dir=tmp_path / "png1")
    gen = draw(world, tmp_path / "many.npz", png_dir=tmp_path / "pngN")
    assert sorted(map(tuple, gen.calls)) == sorted([(0, 0, 0, 0), (0, 1, 1, 1), (1, 1, 2, 2), (2, 2, 2)])
    one, many = read_npz(tmp_path / "one.npz"), read_npz(tmp_path / "many.npz")
    assert one["arr_0"].shape == (15, 4, 4, 3) and one["arr_1"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "many.npz").read_bytes()
    images, _ = sample_class_balanced(FakeGenerator(), 3, 5, batch_size=4, seed=7, show_bar=False)
    assert np.array_equal(many["arr_0"][..., 0], images[:, 0].numpy())
    names = sorted(p.name for p in (tmp_path / "pngN").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "png1").iterdir()) and len(names) == 15
    assert names[5] == "000005_class1.png" and not parts_dir(tmp_path / "many.npz").exists()


def test_a_killed_sampling_resumes_with_the_missing_chunks_and_refuses_other_settings(tmp_path):
    draw(1, tmp_path / "ref.npz")

    class Killed(FakeGenerator):
        def __call__(self, labels, generator, **kw):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().__call__(labels, generator, **kw)

    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(Killed(), 3, 5, tmp_path / "s.npz", batch_size=4, seed=7, show_bar=False)
    assert sorted(p.name for p in parts_dir(tmp_path / "s.npz").glob("chunk-*")) == ["chunk-000000.npz",
                                                                                    "chunk-000001.npz"]
    with pytest.raises(ConfigError, match="unfinished write") as err:
        sample_to_npz(FakeGenerator(), 3, 5, tmp_path / "s.npz", batch_size=4, seed=8, show_bar=False)
    assert err.value.knob == "out_dir"
    gen = FakeGenerator()
    sample_to_npz(gen, 3, 5, tmp_path / "s.npz", batch_size=4, seed=7, show_bar=False)
    assert gen.calls == [[1, 1, 2, 2], [2, 2, 2]]
    assert (tmp_path / "s.npz").read_bytes() == (tmp_path / "ref.npz").read_bytes()


def test_the_joined_npz_reads_like_one_written_at_once(tmp_path):
    rng = np.random.default_rng(0)
    parts, images, labels = [], [], []
    for i, n in enumerate((3, 5, 1)):
        x = torch.from_numpy(rng.integers(0, 256, (n, 3, 6, 5), dtype=np.uint8))
        y = torch.arange(n) + 10 * i
        parts.append(write_npz(tmp_path / f"p{i}.npz", x, y))
        images.append(x)
        labels.append(y)
    write_npz_from_parts(tmp_path / "joined.npz", parts)
    write_npz(tmp_path / "whole.npz", torch.cat(images), torch.cat(labels))
    joined, whole = read_npz(tmp_path / "joined.npz"), read_npz(tmp_path / "whole.npz")
    assert joined.keys() == whole.keys() == {"arr_0", "arr_1"}
    assert np.array_equal(joined["arr_0"], whole["arr_0"]) and joined["arr_0"].shape == (9, 6, 5, 3)
    assert np.array_equal(joined["arr_1"], whole["arr_1"]) and joined["arr_1"].dtype == np.int64
    assert npz_shapes(tmp_path / "joined.npz") == {"arr_0": (9, 6, 5, 3), "arr_1": (9,)}
    write_npz_from_parts(tmp_path / "again.npz", parts)
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("joined.npz", "again.npz")]
    assert digest[0] == digest[1]


def test_torchrun_ranks_sample_the_npz_of_one_process(tmp_path):
    ckpt = write_generator(tmp_path)
    common = (f"ckpt={ckpt}", "per_class=3", "batch_size=4", "device=cpu", "png=false")
    env = {"OMP_NUM_THREADS": "1"}
    one = run_module("barlab.sample", *common, f"out_dir={tmp_path / 'one'}", cwd=tmp_path, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_module("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "barlab.sample", *common,
                     f"out_dir={tmp_path / 'two'}", cwd=tmp_path, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "one" / "samples.npz").read_bytes() == (tmp_path / "two" / "samples.npz").read_bytes()
    info = read_json(tmp_path / "two" / "sample_info.json")
    assert info["image_shape"] == [3, 16, 16]
    assert info["ranks"] == 2 and info["num_samples"] == 9 and read_json(tmp_path / "one" / "sample_info.json")[
        "ranks"] == 1
    assert "rank 1/2: sampling 3 x 3 classes" in two.stdout + two.stderr
