"""The tokenizer cache: sweep jobs that share a tokenizer config train it once, in series, in parallel
and under DDP; jobs with another tokenizer config, or with the cache off, train their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import read_json, run_module

from barlab.runtime.tokenizer_cache import TokenizerCache, attempt_token, cache_key

SMOKE = ("experiment=smoke", "metrics.backend=random")


def test_the_key_covers_the_tokenizer_recipe_and_not_the_run(compose_train):
    base = cache_key(compose_train(["experiment=smoke"]))[0]
    assert len(base) == 16 and all(c in "0123456789abcdef" for c in base)
    same = [["experiment=smoke", "head=bitwise"], ["experiment=smoke", "generator.max_steps=7"],
            ["experiment=smoke", "data.num_workers=3"], ["experiment=smoke", "metrics.gfid.per_class=9"],
            ["experiment=smoke", "run_name=other"], ["experiment=smoke", "callbacks.progress_log.every_n_steps=7"],
            ["experiment=smoke", "~callbacks.progress_log"]]
    for overrides in same:
        assert cache_key(compose_train(overrides))[0] == base, overrides
    other = [["experiment=smoke", "tokenizer.bits=6"], ["experiment=smoke", "seed=1"],
             ["experiment=smoke", "tokenizer.max_steps=21"], ["experiment=smoke", "data.batch_size=8"],
             ["experiment=smoke", "callbacks.ema.decay=0.99"], ["experiment=smoke", "metrics.rfid.max_samples=32"],
             ["experiment=smoke", "tokenizer.quantizer.bound=official"]]
    keys = {cache_key(compose_train(overrides))[0] for overrides in other}
    assert base not in keys and len(keys) == len(other)


def test_ranks_share_one_attempt_token(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "BARLAB_ATTEMPT"):
        monkeypatch.delenv(name, raising=False)
    local = attempt_token()
    assert os.environ["BARLAB_ATTEMPT"] == local and attempt_token() == local  # the children inherit it
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert attempt_token() == "77.0.2"


def check_one_tokenizer_for_both(sweep: Path) -> dict:
    """Jobs 0 and 1 of ``sweep`` share one trained tokenizer and one token-shard folder."""
    first, second = (read_json(sweep / str(job) / "results.json") for job in (0, 1))
    assert first["status"] == second["status"] == "ok"
    caches = [first["tokenizer"]["cache"], second["tokenizer"]["cache"]]
    assert caches[0]["key"] == caches[1]["key"]
    assert sorted([c["hit"] for c in caches]) == [False, True]  # one trained it, the other reused it
    trainer_job = 0 if not caches[0]["hit"] else 1
    assert caches[0]["trained_in"] == caches[1]["trained_in"] == str(sweep / str(trainer_job))
    assert first["psnr"] == second["psnr"] and first["rfid"] == second["rfid"]
    entry = Path(caches[0]["entry"])
    tokenizer_bytes = (entry / "tokenizer.pt").read_bytes()
    for job in (0, 1):
        assert (sweep / str(job) / "tokenizer.pt").read_bytes() == tokenizer_bytes
        assert (sweep / str(job) / "tokens").resolve() == (entry / "tokens_256").resolve()
    logs = "".join((sweep / str(job) / "train.log").read_text() for job in (0, 1))
    assert logs.count("pretokenizing") == 1
    assert read_json(entry / "result.json")["psnr"] == first["psnr"]
    return caches[0]


@pytest.mark.slow
def test_a_sweep_over_heads_trains_one_tokenizer(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("barlab.train", "-m", *SMOKE, "head=bitwise,mbm", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = check_one_tokenizer_for_both(sweep)
    assert not read_json(sweep / "0" / "results.json")["tokenizer_cached"]
    assert read_json(sweep / "1" / "results.json")["tokenizer_cached"]

    # the one entry of the two jobs' tokenizer, named by its key
    entries = sorted(p.name for p in (tmp_path / "data" / "cache" / "tokenizers").iterdir() if p.is_dir())
    assert entries == [cache["key"]]


@pytest.mark.slow
def test_the_cache_off_trains_afresh_and_stores_nothing(tokenizer_sweep):
    """The session's tokenizer sweep (conftest.py, tokenizer.bits=0,4,8 with cache.tokenizer=false)."""
    _, sweep = tokenizer_sweep
    rows = [read_json(sweep / j / "results.json") for j in ("1", "2")]
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["bits_per_token"] for r in rows] == [4, 8]
    assert [r.get("cache") for r in rows] == [None, None] and not any(r.get("tokenizer_cached") for r in rows)
    assert all((sweep / j / "tokenizer.pt").is_file() for j in ("1", "2"))     # each job trained its own
    cache = sweep.parent / "data" / "cache" / "tokenizers"
    assert not cache.exists() or [p.name for p in cache.iterdir()] == []


@pytest.mark.slow
def test_parallel_jobs_wait_for_the_one_that_trains(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("barlab.train", "-m", *SMOKE, "head=bitwise,mbm", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_tokenizer_for_both(sweep)
    logs = [(sweep / str(job) / "train.log").read_text() for job in (0, 1)]
    assert sum("waiting for another job preparing tokenizer" in log for log in logs) == 1


@pytest.mark.slow
def test_ddp_ranks_follow_rank_zero_on_a_hit(ddp_runs):
    """The session's DDP smoke runs (conftest.py): run ``a`` trains the tokenizer, then job 0 of a sweep in the
    same root (``b``: the same settings, head=mbm) and job 1 (head=bitwise: the same tokenizer key) hit it."""
    a = read_json(ddp_runs.runs / "a" / "results.json")
    assert a["tokenizer"]["cache"]["hit"] is False
    for job in ("0", "1"):
        folder = ddp_runs.sweep / job
        b = read_json(folder / "results.json")
        cache = b["tokenizer"]["cache"]
        assert cache["hit"] is True and cache["key"] == a["tokenizer"]["cache"]["key"]
        assert b["generator"]["train_steps"] == 10 and b["psnr"] == a["psnr"]
        rank1 = (folder / "train_ddp_process_1.log").read_text()
        assert "rank 1/2 reads train token shards" in rank1        # rank 1 trained the generator with rank 0 ...
        assert "rank 1/2 reads train image shards" not in rank1    # ... and, like rank 0, no tokenizer
        decision = read_json(folder / "stages" / "tokenizer.cache.json")
        assert decision["hit"] is True and decision["attempt"]


def test_an_unusable_entry_is_trained_again(tmp_path, compose_train):
    cfg = compose_train(["experiment=smoke"])
    cache = TokenizerCache(cfg)
    cache.entry.mkdir(parents=True)
    (cache.entry / "result.json").write_text("{}")
    (cache.entry / "tokenizer.pt").write_text("not a checkpoint")
    assert cache.lookup() is None
