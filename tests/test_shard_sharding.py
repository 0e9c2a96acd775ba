"""Who reads which shard: every stored sample is read exactly once across DDP ranks × loader workers in an
evaluation pass (also with a sample limit), each rank's training shards are its own share of the folder, and
every (rank, worker) draws its own seeded stream."""

from __future__ import annotations

import io
import itertools
import tarfile
from types import SimpleNamespace

import pytest
import torch

from barlab.data.loader_stages import SkipCounter, rank_shards, worker_seed
from barlab.data.loaders import eval_pipeline

SIZES = [3, 4, 2, 5, 1, 3]


@pytest.fixture
def shards(tmp_path):
    """Six tar shards of SIZES samples each; sample j of shard i has the key s{i}_{j} (.cls and .png members)."""
    urls = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"val-{i:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for j in range(size):
                for ext, payload in (("cls", b"0"), ("png", b"not decoded here")):
                    info = tarfile.TarInfo(f"s{i}_{j}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        urls.append(str(path))
    return urls


def keys_of(stream):
    return (sample["__key__"] for sample in stream)


def read_as(monkeypatch, urls, rank, world, worker, workers, max_samples=None):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.delenv("WORKER", raising=False)
    monkeypatch.delenv("NUM_WORKERS", raising=False)
    monkeypatch.setattr(torch.utils.data, "get_worker_info",
                        lambda: SimpleNamespace(id=worker, num_workers=workers) if workers > 1 else None)
    pipeline = eval_pipeline(urls, SIZES, SkipCounter(shared=False), keys_of, lambda src: src,
                             max_samples=max_samples, per_rank=True, where="test")
    return list(pipeline)


ALL = [f"s{i}_{j}" for i, size in enumerate(SIZES) for j in range(size)]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (2, 3), (4, 1)])
@pytest.mark.parametrize("max_samples", [None, 8])
def test_each_sample_is_read_once_across_ranks_and_workers(shards, monkeypatch, world, workers, max_samples):
    seen, per_rank = [], []
    for rank in range(world):
        mine = []
        for worker in range(workers):
            mine += read_as(monkeypatch, shards, rank, world, worker, workers, max_samples)
        per_rank.append(mine)
        seen += mine
    want = ALL if max_samples is None else ALL[:max_samples]
    assert sorted(seen) == sorted(want)                     # every sample once: none lost, none twice
    assert all(per_rank)                                    # every rank has something to validate on


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_training_shards_are_split_between_ranks(world, monkeypatch):
    urls = [f"train-{i:06d}.tar" for i in range(6)]
    shares = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        shares.append(rank_shards(urls, "train"))
    assert sorted(itertools.chain(*shares)) == urls                          # a partition of the folder
    assert [len(s) for s in shares] == [len(urls[r::world]) for r in range(world)]
    assert shares[0][0] == urls[0] and (world == 1 or shares[1][0] == urls[1])


def test_too_few_training_shards_give_every_rank_all_of_them(monkeypatch):
    urls = ["a.tar", "b.tar"]
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        assert rank_shards(urls, "train") == urls


def test_every_rank_and_worker_draws_its_own_seed(monkeypatch):
    seeds = {}
    for rank, worker in itertools.product(range(8), range(8)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "8")
        monkeypatch.setattr(torch.utils.data, "get_worker_info",
                            lambda w=worker: SimpleNamespace(id=w, num_workers=8))
        seeds[(rank, worker)] = worker_seed()
    assert len(set(seeds.values())) == 64
    assert seeds[(0, 0)] == 0 and seeds[(1, 0)] != seeds[(0, 1)]
