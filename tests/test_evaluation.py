"""End to end: a smoke run scores itself; barlab.sample, barlab.export and barlab.evaluate
work from its files; bad inputs exit 2 with one line.

The smoke run is the session's shared one (``smoke_run`` in conftest.py). Each tool runs once as a
real process here; its other runs call the tool's ``main()`` in-process (``helpers.call_main``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers import SMOKE_DATA, SMOKE_METRICS, call_main, error_lines, read_json, run_module, run_modules


@pytest.mark.quick
def test_a_run_reports_rfid_gfid_and_class_accuracy_with_their_backend(smoke_run):
    run = smoke_run.run
    body = read_json(run / "results.json")
    for key in ("rfid", "gfid", "class_accuracy", "inception_score", "precision", "recall"):
        assert isinstance(body[key], float), key
    assert body["metrics_backend"] == "classifier"
    assert "not comparable to Inception FID" in body["metrics_label"]
    scores = body["generator"]["gfid_eval"]
    assert scores["num_samples"] == 4 * 4 and scores["reference"].endswith("/train")  # per_class 4, 4 classes
    # the headline numbers are the generator's scores, and the class accuracy is the mean over the 4 balanced classes
    assert [body[k] for k in ("gfid", "class_accuracy", "precision", "recall")] == \
        [scores[k] for k in ("fid", "class_accuracy", "precision", "recall")]
    assert body["class_accuracy"] == pytest.approx(np.mean(list(scores["class_accuracy_per_class"].values())))
    assert sorted(scores["class_accuracy_per_class"]) == ["0", "1", "2", "3"]
    rfid = body["tokenizer"]["rfid_eval"]       # the tokenizer's reconstructions of the val split against it
    assert body["rfid"] == rfid["fid"] > 0 and rfid["split"] == "val" and rfid["feature_net"] == scores["feature_net"]
    with np.load(run / "samples.npz") as data:
        assert data["arr_0"].shape == (16, 16, 16, 3) and data["arr_0"].dtype == np.uint8
        assert data["arr_1"].tolist() == [c for c in range(4) for _ in range(4)]
    assert (run / "generator.pt").is_file()


@pytest.mark.quick
def test_evaluate_on_the_runs_samples_gives_the_runs_scores(smoke_run):
    """``barlab.evaluate`` on samples.npz (the cached classifier, the same reference settings) reproduces the
    run's own gFID, precision/recall, class accuracy per class and the classifier's validation accuracy."""
    root, run = smoke_run.root, smoke_run.run
    out = root / "rescored" / "metrics.json"
    proc = call_main("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, f"samples={run / 'samples.npz'}", f"out={out}",
                     cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again, scores = read_json(out), read_json(run / "results.json")["generator"]["gfid_eval"]
    assert again["feature_net"] == scores["feature_net"] and again["num_reference"] == scores["num_reference"] == 256
    assert again["fid"] == pytest.approx(scores["fid"], rel=1e-5, abs=1e-9)
    for key in ("precision", "recall", "class_accuracy", "class_accuracy_per_class", "classifier_val_accuracy"):
        assert again[key] == scores[key], key


@pytest.mark.quick
def test_evaluate_scores_a_tokenizer_file_as_its_run_did(smoke_run):
    """``barlab.evaluate tokenizer_ckpt=...``: the rFID of the run's tokenizer.pt on the same validation
    images, with the same classifier, is the run's own; samples and a tokenizer together are refused."""
    root, run = smoke_run.root, smoke_run.run
    rfid = ("metrics.rfid.max_samples=64", "metrics.max_pr_samples=256")
    proc = call_main("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, *rfid, f"tokenizer_ckpt={run / 'tokenizer.pt'}",
                     f"out={root / 'rfid.json'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again, scores = read_json(root / "rfid.json"), read_json(run / "results.json")["tokenizer"]["rfid_eval"]
    assert again["tokenizer"] == str(run / "tokenizer.pt") and again["split"] == "val"
    assert again["num_samples"] == scores["num_samples"] == 64
    assert again["fid"] == pytest.approx(scores["fid"], rel=1e-4)
    both = call_main("barlab.evaluate", *SMOKE_DATA, f"tokenizer_ckpt={run / 'tokenizer.pt'}",
                     f"samples={run / 'samples.npz'}", cwd=root)
    assert both.returncode == 2 and error_lines(both.stderr)[0].startswith("error: samples: give samples=")
    size = call_main("barlab.evaluate", "data=synthetic", "data.image_size=32",
                     f"tokenizer_ckpt={run / 'tokenizer.pt'}", cwd=root)
    assert size.returncode == 2 and error_lines(size.stderr)[0].startswith("error: data.image_size: is 32")


@pytest.mark.slow
def test_sample_writes_adm_npz_and_pngs_reproducibly(smoke_run):
    root, run = smoke_run.root, smoke_run.run
    proc = run_module("barlab.sample", f"ckpt={run}", "per_class=3", f"out_dir={root / 'a'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = call_main("barlab.sample", f"ckpt={run}", "per_class=3", f"out_dir={root / 'b'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs = [np.load(root / name / "samples.npz") for name in ("a", "b")]
    assert outs[0]["arr_0"].shape == (12, 16, 16, 3)
    assert np.array_equal(outs[0]["arr_0"], outs[1]["arr_0"])  # seeded: a process and an in-process run agree
    assert outs[0]["arr_1"].tolist() == [c for c in range(4) for _ in range(3)]
    pngs = sorted(p.name for p in (root / "a" / "images").iterdir())
    assert len(pngs) == 12 and pngs[0] == "000000_class0.png" and pngs[-1] == "000011_class3.png"
    info = read_json(root / "a" / "sample_info.json")
    assert info["num_samples"] == 12 and info["sampling"]["guidance"] == 3.0
    guided = call_main("barlab.sample", f"ckpt={run / 'generator.pt'}", "per_class=3", "png=false",
                       "sampling.guidance=1.0", f"out_dir={root / 'g1'}", cwd=root)
    assert guided.returncode == 0 and read_json(root / "g1" / "sample_info.json")["sampling"]["guidance"] == 1.0
    assert not (root / "g1" / "images").exists()


@pytest.mark.slow
def test_real_images_score_near_zero_and_samples_do_not(smoke_run):
    root, run = smoke_run.root, smoke_run.run
    proc = call_main("barlab.export", *SMOKE_DATA, "split=val", f"out_dir={root / 'real'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\"num_images\": 128" in proc.stdout          # the summary it prints
    pngs = list((root / "real" / "images").glob("*_class*.png"))
    assert len(pngs) == 128  # the synthetic val split
    results = {}
    for name, samples, runner in (("real", root / "real" / "images", run_module),
                                  ("fake", run / "samples.npz", call_main)):
        out = root / f"{name}.json"
        proc = runner("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, "metrics.backend=random",
                      f"samples={samples}", f"out={out}", cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = read_json(out)
    real, fake = results["real"], results["fake"]
    assert real["backend"] == "random" and "tests only" in real["feature_label"]
    assert real["num_samples"] == 128 and real["reference"].endswith("synthetic_16px/train")
    assert fake["num_samples"] == 16 and fake["pr_num_samples"] == [256, 16]
    assert real["fid"] < 0.2 * fake["fid"], (real["fid"], fake["fid"])
    # held-out real images lie on the train manifold and cover it; 10 steps of generator training do neither
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert fake["precision"] < real["precision"] and fake["recall"] < real["recall"]
    # the class accuracy is the per-class accuracies weighted by the class counts of the set
    counts = np.bincount([int(re.search(r"_class(\d+)", p.name).group(1)) for p in pngs], minlength=4)
    per_class = real["class_accuracy_per_class"]
    assert real["class_accuracy"] == pytest.approx(sum(per_class[str(c)] * counts[c] for c in range(4)) / 128)
    # a reference given as an image npz: the real set against itself
    proc = call_main("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, "metrics.backend=random",
                     f"samples={root / 'real' / 'images.npz'}", f"ref={root / 'real' / 'images.npz'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    self_score = read_json(root / "real" / "images.metrics.json")
    assert abs(self_score["fid"]) < 1e-6 and self_score["precision"] == 1.0 and self_score["recall"] == 1.0


@pytest.mark.quick
def test_evaluate_and_sample_refuse_bad_input_in_one_line(smoke_run, tmp_path):
    root, run = smoke_run.root, smoke_run.run
    proc = call_main("barlab.evaluate", *SMOKE_DATA, f"samples={tmp_path / 'none.npz'}", cwd=root)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith("error: samples:")
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(adm, arr_0=np.zeros((4, 16, 16, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    proc = call_main("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, f"samples={run / 'samples.npz'}",
                     f"ref={adm}", cwd=root)
    assert proc.returncode == 2
    assert "fix: metrics.backend=inception" in error_lines(proc.stderr)[0]
    proc = call_main("barlab.evaluate", *SMOKE_DATA, f"samples={run / 'samples.npz'}", "metrics.backend=clip",
                     cwd=root)
    assert proc.returncode == 2 and "metrics.backend" in error_lines(proc.stderr)[0]
    proc = call_main("barlab.sample", f"ckpt={tmp_path}", cwd=root)
    assert proc.returncode == 2 and "generator.pt" in error_lines(proc.stderr)[0]
    proc = call_main("barlab.sample", cwd=root)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith("error: ckpt: is required")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    proc = call_main("barlab.sample", f"ckpt={tmp_path / 'bad.pt'}", cwd=root)
    assert proc.returncode == 2 and "cannot read generator file" in error_lines(proc.stderr)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VIRTUAL_ref.npz", "bad.pt"]   # nothing written


@pytest.mark.quick
def test_sample_evaluate_and_export_refuse_bad_input_as_real_processes(tmp_path):
    """The command lines themselves, one refusal per tool: exit 2, one ``error:`` line, no traceback."""
    procs = dict(zip(("sample", "evaluate", "export"), run_modules(
        ("barlab.sample",),
        ("barlab.evaluate", *SMOKE_DATA, f"samples={tmp_path / 'none.npz'}"),
        ("barlab.export", "data=fashion_mnist", "data.source.idx_dir=/nonexistent/fm", f"out_dir={tmp_path / 'real'}"),
        cwd=tmp_path, timeout=120)))
    for tool, proc in procs.items():
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (tool, proc.stderr[-2000:])
        assert len(error_lines(proc.stderr)) == 1, (tool, proc.stderr[-2000:])
    assert error_lines(procs["sample"].stderr)[0].startswith("error: ckpt: is required (fix: ckpt=")
    assert error_lines(procs["evaluate"].stderr)[0] == (
        f"error: samples: {tmp_path / 'none.npz'} does not exist (fix: samples=/path/to/samples.npz or a folder)")
    assert error_lines(procs["export"].stderr)[0].startswith(
        "error: data.source.idx_dir: '/nonexistent/fm' does not hold the 4 Fashion-MNIST IDX files")
    assert sorted(p.name for p in tmp_path.iterdir()) == []                    # nothing written
