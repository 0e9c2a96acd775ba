"""Faults and bad input, end to end through ``python -m barlab.train`` / ``barlab.shard``.

- a NaN loss stops the run with one line (stage, step), keeps the last good checkpoint, and no
  NaN reaches ``last.ckpt``;
- wrong checkpoints (another head or bit width, another stage, a generator.pt as tokenizer, a text
  file, a truncated file) get one line naming the file and the mismatch, and nothing is overwritten;
- a bad generator knob fails before the tokenizer trains;
- a truncated shard and an undecodable image are skipped and counted;
- a full disk gives one line and leaves no folder or checkpoint that looks complete.

The tests share one small trained run (``trained_run``: stage=all, 4 + 4 steps) and one data folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import torch
from helpers import call_main, error_lines, read_json, run_module

FAST = ["experiment=smoke", "metrics.rfid.enabled=false", "metrics.gfid.enabled=false"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working folder for the module: the synthetic shards under data/ are made once."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def trained_run(workdir) -> Path:
    """A finished stage=all run (MBM head, 16 bits): tokenizer.pt, generator.pt, tokens/, both last.ckpt."""
    run_dir = workdir / "trained"
    proc = run_module("barlab.train", *FAST, "stage=all", "tokenizer.max_steps=4", "tokenizer.val_every=4",
                      "generator.max_steps=4", "generator.val_every=4",
                      "callbacks.model_checkpoint.every_n_train_steps=2", f"hydra.run.dir={run_dir}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def fingerprint(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int]]:
    """``relative path -> (sha256, mtime_ns)`` of every file under ``folder`` except those named in ``skip``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused run (exit 2, no traceback). The refused runs below call
    barlab.train's main() in-process (helpers.call_main): the same exit status and stderr, without a
    process start-up; tests/test_train.py runs a refusal as a real process. Only the shared trained run
    (``trained_run``) is a process of its own."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


# ------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("stage", ["tokenizer", "generator"])
def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(workdir, trained_run, stage):
    run_dir = workdir / f"nan_{stage}"
    extra = ([f"tokenizer_ckpt={trained_run / 'tokenizer.pt'}", f"generator.data.shards_dir={trained_run / 'tokens'}"]
             if stage == "generator" else [])
    # an absurd learning rate (a user's typo): the weights explode after step 1, the loss of step 2 is NaN
    proc = call_main("barlab.train", *FAST, f"stage={stage}", *extra, f"{stage}.max_steps=8",
                     f"{stage}.optim.lr=1e30", "callbacks.model_checkpoint.every_n_train_steps=1",
                     f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    last = run_dir / "checkpoints" / stage / "last.ckpt"
    assert line.startswith(f"error: {stage}: loss is nan at step 2;"), line
    assert f"the last good checkpoint is {last}" in line and f"{stage}.optim.lr" in line
    results = read_json(run_dir / "results.json")
    assert results["status"] == "failed" and results["error"] == line.removeprefix("error: ")

    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1                                     # the step before the NaN
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step_000001.ckpt"]


# ------------------------------------------------------------------------------------- wrong checkpoints
def test_ckpt_path_of_another_head_is_refused_and_overwrites_nothing(workdir, trained_run):
    run_dir = workdir / "other_head"
    ckpt = trained_run / "checkpoints" / "generator" / "last.ckpt"
    before = fingerprint(trained_run)
    proc = call_main("barlab.train", *FAST, "stage=generator", "head=bitwise", f"ckpt_path={ckpt}",
                     f"tokenizer_ckpt={trained_run / 'tokenizer.pt'}",
                     f"generator.data.shards_dir={trained_run / 'tokens'}", f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    assert f"checkpoint {ckpt}: it was trained with head=mbm" in line and "this run has head=bitwise" in line, line
    assert fingerprint(trained_run) == before
    assert not (run_dir / "checkpoints").exists()
    assert read_json(run_dir / "results.json")["status"] == "failed"


def test_ckpt_path_of_another_bit_width_is_refused(workdir, trained_run):
    run_dir = workdir / "other_bits"
    ckpt = trained_run / "checkpoints" / "tokenizer" / "last.ckpt"
    before = fingerprint(trained_run)
    proc = call_main("barlab.train", *FAST, "stage=tokenizer", "tokenizer.bits=8", f"ckpt_path={ckpt}",
                     f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    assert str(ckpt) in line and "tokenizer.bits=16" in line and "this run has tokenizer.bits=8" in line, line
    assert fingerprint(trained_run) == before
    assert not (run_dir / "checkpoints").exists()
    assert read_json(run_dir / "results.json")["status"] == "failed"


def test_tokenizer_checkpoint_given_to_the_generator_stage_is_refused(workdir, trained_run):
    ckpt = trained_run / "checkpoints" / "tokenizer" / "last.ckpt"
    run_dir = workdir / "tok_ckpt_to_gen"
    proc = call_main("barlab.train", *FAST, "stage=generator", f"ckpt_path={ckpt}",
                     f"tokenizer_ckpt={trained_run / 'tokenizer.pt'}",
                     f"generator.data.shards_dir={trained_run / 'tokens'}", f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    assert str(ckpt) in line and "checkpoint of the tokenizer stage" in line and "stage=generator" in line, line
    assert not (run_dir / "checkpoints").exists()


def test_checkpoint_without_identity_that_does_not_fit_gets_one_line(workdir, trained_run):
    """A checkpoint from before identities existed: the tensor names/shapes decide, in one line."""
    old = workdir / "old_mbm.ckpt"
    payload = torch.load(trained_run / "checkpoints" / "generator" / "last.ckpt", map_location="cpu",
                         weights_only=False)
    del payload["barlab"]
    torch.save(payload, old)
    run_dir = workdir / "old_ckpt"
    proc = call_main("barlab.train", *FAST, "stage=generator", "head=bitwise", f"ckpt_path={old}",
                     f"tokenizer_ckpt={trained_run / 'tokenizer.pt'}",
                     f"generator.data.shards_dir={trained_run / 'tokens'}", f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    assert str(old) in line and "weights do not fit this run's model" in line and "head." in line, line


def test_generator_file_as_tokenizer_ckpt_is_refused(workdir, trained_run):
    generator_pt = trained_run / "generator.pt"
    proc = call_main("barlab.train", *FAST, "stage=generator", f"tokenizer_ckpt={generator_pt}",
                     f"hydra.run.dir={workdir / 'gen_as_tok'}", cwd=workdir)
    line = one_error(proc)
    assert f"tokenizer_ckpt={generator_pt}: this is a barlab generator file" in line and "not a tokenizer" in line
    assert "fix: tokenizer_ckpt=<run>/tokenizer.pt" in line
    assert not (workdir / "gen_as_tok" / "tokens").exists()           # refused before pretokenization


@pytest.mark.parametrize("knob", ["ckpt_path", "tokenizer_ckpt"])
@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_file_that_is_no_checkpoint_gets_one_line(workdir, trained_run, knob, damage):
    source = trained_run / ("checkpoints/tokenizer/last.ckpt" if knob == "ckpt_path" else "tokenizer.pt")
    bad = workdir / f"{damage}_{knob}.ckpt"
    if damage == "text":
        bad.write_text("these are my notes, not a checkpoint\n")
    else:
        bad.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    stage = "tokenizer" if knob == "ckpt_path" else "generator"
    run_dir = workdir / f"bad_{damage}_{knob}"
    proc = call_main("barlab.train", *FAST, f"stage={stage}", f"{knob}={bad}", f"hydra.run.dir={run_dir}",
                     cwd=workdir)
    line = one_error(proc)
    assert str(bad) in line, line
    expected = "it is not a checkpoint" if damage == "text" else "it is cut short"
    assert expected in line, line
    assert not (run_dir / "checkpoints").exists()
    assert read_json(run_dir / "results.json")["status"] == "failed"


def test_ckpt_path_with_the_same_settings_resumes_from_its_step(workdir, trained_run):
    """The identity check accepts a checkpoint written by the same config."""
    run_dir = workdir / "same_settings"
    proc = call_main("barlab.train", *FAST, "stage=generator", "generator.max_steps=6",
                     f"ckpt_path={trained_run / 'checkpoints' / 'generator' / 'last.ckpt'}",
                     "callbacks.model_checkpoint.every_n_train_steps=2",
                     f"tokenizer_ckpt={trained_run / 'tokenizer.pt'}",
                     f"generator.data.shards_dir={trained_run / 'tokens'}", f"hydra.run.dir={run_dir}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_json(run_dir / "results.json")
    assert results["status"] == "ok" and results["train_steps"] == 6
    identity = torch.load(run_dir / "checkpoints" / "generator" / "last.ckpt", map_location="cpu",
                          weights_only=False)["barlab"]
    assert identity["stage"] == "generator" and identity["head"] == "mbm" and identity["tokenizer.bits"] == 16


# ----------------------------------------------------------------------------------- early knob checks
def test_bad_generator_knob_fails_before_the_tokenizer_trains(workdir):
    run_dir = workdir / "heads7"
    start = time.monotonic()
    proc = call_main("barlab.train", *FAST, "stage=all", "generator.backbone.heads=7", f"hydra.run.dir={run_dir}",
                     cwd=workdir)
    line = one_error(proc)
    assert line.startswith("error: generator.backbone.heads: must divide width 32, got 7"), line
    assert not (run_dir / "checkpoints").exists()
    assert read_json(run_dir / "results.json")["status"] == "failed"
    assert time.monotonic() - start < 60


# -------------------------------------------------------------------------------------- bad training data
def corrupt_one_png(shard: Path) -> str:
    """Overwrite the bytes of the first PNG member of ``shard`` in place (the tar stays readable)."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    with open(shard, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"x" * member.size)
    return member.name


def test_truncated_shard_and_bad_image_are_skipped_and_counted(workdir):
    shards = workdir / "bad_shards"
    proc = call_main("barlab.shard", "synthetic", "--out", str(shards), "--num-train", "256",
                     "--num-val", "64", "--image-size", "16", "--maxcount", "128", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    truncated = shards / "train-000000.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2 + 100])  # cut inside a member
    corrupt_one_png(shards / "train-000001.tar")

    run_dir = workdir / "bad_data"
    proc = call_main("barlab.train", *FAST, "stage=tokenizer", f"data.shards_dir={shards}", "tokenizer.max_steps=20",
                     f"hydra.run.dir={run_dir}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_json(run_dir / "results.json")
    assert results["status"] == "ok" and results["train_steps"] == 20
    assert results["skipped_samples"] >= 2
    log = proc.stdout + proc.stderr
    assert f"skipping rest of shard {shards / 'train-000000.tar'}" in log, log[-3000:]
    assert f"of {shards / 'train-000001.tar'}: UnidentifiedImageError" in log, log[-3000:]


def test_shard_cut_at_a_member_boundary_is_counted(tmp_path):
    from barlab.data.loader_stages import SkipCounter
    from barlab.data.shard_folder import SplitShards
    from barlab.data.tar_samples import TarSamples

    with SplitShards(str(tmp_path), "train", 100) as writer:
        for i in range(4):
            writer.add(f"s{i}", {"cls": b"0", "png": bytes(600)})       # 3 blocks each: header + 2 data (PNG)
        writer.close()
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: 2 * 5 * 512])              # the first two samples, then nothing
    counter = SkipCounter(shared=False)
    samples = list(TarSamples(counter)([{"url": str(shard)}]))
    # the cut shard counts as a skip; the sample being read when it ended may be incomplete and is dropped
    assert [s["__key__"] for s in samples] == ["s0"] and counter.total == 1


# ------------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only); skipped where it cannot be mounted."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_while_writing_shards(workdir, small_disk):
    out = small_disk / "shards"
    proc = call_main("barlab.shard", "synthetic", "--out", str(out), "--num-train", "20000",
                     "--image-size", "32", cwd=workdir)
    line = one_error(proc)
    assert line.startswith(f"error: disk full while writing {out} ("), line
    assert not out.exists()                                             # no folder that looks complete
    assert [p.name for p in small_disk.iterdir() if not p.name.endswith(".lock")] == []   # temp folder removed


def test_disk_full_while_writing_a_checkpoint(workdir, small_disk):
    run_dir = small_disk / "run"                                        # a 4 MB tokenizer checkpoint on 3 MiB
    proc = call_main("barlab.train", *FAST, "stage=tokenizer", "tokenizer.max_steps=4",
                     "callbacks.model_checkpoint.every_n_train_steps=2", f"hydra.run.dir={run_dir}", cwd=workdir)
    line = one_error(proc)
    assert line.startswith(f"error: disk full while writing {run_dir / 'checkpoints' / 'tokenizer'}/"), line
    ckpt_dir = run_dir / "checkpoints" / "tokenizer"
    assert not ckpt_dir.exists() or list(ckpt_dir.iterdir()) == []    # no partial checkpoint, no temp file
    assert read_json(run_dir / "results.json")["status"] == "failed"
