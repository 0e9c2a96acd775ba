"""More than one process: ``trainer=ddp_cpu`` (2 ranks, gloo) runs the whole pipeline; each rank reads
its own shards; rank 0 alone writes the artifacts; no process is left behind; an in-process sweep of
DDP jobs starts fresh ranks for every job."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import call_main, read_json

pytestmark = pytest.mark.slow


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the live processes whose arguments contain ``text``."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if text in line and not line.lstrip().startswith("Z")]


def shard_lines(log: Path, what: str) -> dict[int, list[str]]:
    """``{rank: shard names}`` from the 'rank r/2 reads <what> shards ...' lines of a rank's log."""
    found = {}
    for rank, names in re.findall(rf"rank (\d)/2 reads {what} shards (.*)", log.read_text()):
        found[int(rank)] = names.split()
    return found


def test_ddp_cpu_runs_the_whole_pipeline_on_two_ranks(ddp_runs):
    """Run ``a`` of the session's two DDP smoke runs (conftest.py): the first, with an empty tokenizer cache."""
    folder = ddp_runs.runs / "a"
    results = read_json(folder / "results.json")
    assert results["status"] == "ok"
    assert results["tokenizer"]["train_steps"] == 20 and results["generator"]["train_steps"] == 10
    assert results["tokenizer"]["cache"]["hit"] is False

    rank0, rank1 = folder / "train.log", folder / "train_ddp_process_1.log"
    for what, shards in (("train image", ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                          "train-000003.tar"]),
                         ("train token", ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                          "train-000003.tar"])):
        mine, theirs = shard_lines(rank0, what)[0], shard_lines(rank1, what)[1]
        assert mine == shards[0::2] and theirs == shards[1::2], (what, mine, theirs)  # disjoint halves

    # rank 0 alone wrote the artifacts: one of each, and rank 1 logged no write of its own
    assert (folder / "tokenizer.pt").is_file() and (folder / "generator.pt").is_file()
    assert "pretokenizing" in rank0.read_text() and "pretokenizing" not in rank1.read_text()
    assert processes_mentioning(str(folder)) == []          # no rank outlives the job
    # the gFID is rank 0's score of the 16 samples in samples.npz (one chunk of 64: rank 0 drew it all):
    # barlab.evaluate (in-process) on samples.npz with the same settings gives the same number
    scores = results["generator"]["gfid_eval"]
    assert results["gfid"] == scores["fid"] and scores["num_samples"] == 16 and scores["backend"] == "random"
    out = ddp_runs.root / "ddp_rescored.json"
    proc = call_main("barlab.evaluate", "data=synthetic", "data.image_size=16", "metrics.backend=random",
                     "metrics.reference.max_samples=256", "metrics.batch_size=64", "metrics.kid_subset_size=16",
                     f"samples={folder / 'samples.npz'}", f"out={out}", cwd=ddp_runs.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_json(out)
    assert again["num_samples"] == 16 and again["num_reference"] == scores["num_reference"]
    assert again["fid"] == pytest.approx(scores["fid"], rel=1e-5)


def test_a_sweep_of_ddp_jobs_in_one_process_starts_fresh_ranks_per_job(ddp_runs):
    """The sweep of the session's DDP runs (conftest.py): ``-m trainer=ddp_cpu ... head=mbm,bitwise``, two jobs
    that reuse run ``a``'s tokenizer from the cache and each train a generator on 2 ranks."""
    sweep = ddp_runs.sweep
    for job, head in ((0, "MBMHead"), (1, "BitwiseHead")):
        results = read_json(sweep / str(job) / "results.json")
        assert results["status"] == "ok" and results["generator"]["head"] == head
        assert results["generator"]["train_steps"] == 10 and results["tokenizer"]["cache"]["hit"] is True
        rank1 = (sweep / str(job) / "train_ddp_process_1.log").read_text()    # each job had its own rank 1
        assert "rank 1/2 reads train token shards" in rank1
    assert not (sweep / "2").exists()                                     # no rank started a sweep of its own
    assert processes_mentioning(str(sweep)) == []


def test_ddp_ranks_share_the_end_of_run_samples_and_join_what_one_process_draws(ddp_runs):
    """The sweep's jobs sample 16 images in chunks of 8 (metrics.gfid.batch_size=8): rank 0 draws chunk
    0, rank 1 chunk 1, and the joined samples.npz is what ``barlab.sample`` draws from generator.pt in
    one process with the same seed and batch size."""
    job = ddp_runs.sweep / "0"
    rank0, rank1 = (job / "train.log").read_text(), (job / "train_ddp_process_1.log").read_text()
    assert "rank 0/2 draws sample chunks [0] of 2" in rank0 and "rank 1/2 draws sample chunks [1] of 2" in rank1
    out = ddp_runs.root / "resampled"
    proc = call_main("barlab.sample", f"ckpt={job / 'generator.pt'}", "per_class=4", "batch_size=8", "seed=0",
                     "png=false", "device=cpu", f"out_dir={out}", cwd=ddp_runs.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "samples.npz").read_bytes() == (job / "samples.npz").read_bytes()
    assert read_json(job / "results.json")["generator"]["gfid_eval"]["num_samples"] == 16
