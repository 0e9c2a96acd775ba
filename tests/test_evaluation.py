"""End to end: a smoke run scores itself; barlab.sample, barlab.export and barlab.evaluate
work from its files; bad inputs exit 2 with one line."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import error_lines, read_json, run_module

SMOKE_DATA = ["data=synthetic", "data.image_size=16"]
SMOKE_METRICS = ["metrics.classifier.width=8", "metrics.classifier.max_steps=20", "metrics.classifier.batch_size=32",
                 "metrics.reference.max_samples=256", "metrics.batch_size=64", "metrics.kid_subset_size=32",
                 "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One whole smoke pipeline (tokenizer, generator, samples, scores) shared by the tests below."""
    root = tmp_path_factory.mktemp("eval")
    proc = run_module("barlab.train", "experiment=smoke", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, root / "run"


def test_a_run_reports_rfid_gfid_and_class_accuracy_with_their_backend(smoke_run):
    _, run = smoke_run
    body = read_json(run / "results.json")
    for key in ("rfid", "gfid", "class_accuracy", "inception_score", "precision", "recall"):
        assert isinstance(body[key], float), key
    assert 0.0 <= body["class_accuracy"] <= 1.0 and body["rfid"] >= 0 and body["gfid"] >= 0
    assert body["metrics_backend"] == "classifier"
    assert "not comparable to Inception FID" in body["metrics_label"]
    scores = body["generator"]["gfid_eval"]
    assert scores["num_samples"] == 4 * 4 and scores["reference"].endswith("/train")  # per_class 4, 4 classes
    assert 0.0 <= scores["classifier_val_accuracy"] <= 1.0
    with np.load(run / "samples.npz") as data:
        assert data["arr_0"].shape == (16, 16, 16, 3) and data["arr_0"].dtype == np.uint8
        assert data["arr_1"].tolist() == [c for c in range(4) for _ in range(4)]
    assert (run / "generator.pt").is_file()


@pytest.mark.slow
def test_sample_writes_adm_npz_and_pngs_reproducibly(smoke_run):
    root, run = smoke_run
    outs = []
    for name in ("a", "b"):
        proc = run_module("barlab.sample", f"ckpt={run}", "per_class=3", f"out_dir={root / name}", cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(np.load(root / name / "samples.npz"))
    assert outs[0]["arr_0"].shape == (12, 16, 16, 3)
    assert np.array_equal(outs[0]["arr_0"], outs[1]["arr_0"])  # seeded
    pngs = sorted(p.name for p in (root / "a" / "images").iterdir())
    assert len(pngs) == 12 and pngs[0] == "000000_class0.png" and pngs[-1] == "000011_class3.png"
    info = read_json(root / "a" / "sample_info.json")
    assert info["num_samples"] == 12 and info["sampling"]["guidance"] == 3.0
    guided = run_module("barlab.sample", f"ckpt={run / 'generator.pt'}", "per_class=3", "png=false",
                        "sampling.guidance=1.0", f"out_dir={root / 'g1'}", cwd=root)
    assert guided.returncode == 0 and read_json(root / "g1" / "sample_info.json")["sampling"]["guidance"] == 1.0
    assert not (root / "g1" / "images").exists()


@pytest.mark.slow
def test_real_images_score_near_zero_and_samples_do_not(smoke_run):
    root, run = smoke_run
    proc = run_module("barlab.export", *SMOKE_DATA, "split=val", f"out_dir={root / 'real'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((root / "real" / "images").glob("*_class*.png"))) == 128  # the synthetic val split
    results = {}
    for name, samples in (("real", root / "real" / "images"), ("fake", run / "samples.npz")):
        out = root / f"{name}.json"
        proc = run_module("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, "metrics.backend=random",
                          f"samples={samples}", f"out={out}", cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = read_json(out)
    real, fake = results["real"], results["fake"]
    assert real["backend"] == "random" and "tests only" in real["feature_label"]
    assert real["num_samples"] == 128 and real["reference"].endswith("synthetic_16px/train")
    assert real["fid"] < 0.2 * fake["fid"], (real["fid"], fake["fid"])
    for key in ("fid", "kid", "precision", "recall", "inception_score", "class_accuracy"):
        assert key in real and key in fake
    # a reference given as an image npz: the real set against itself
    proc = run_module("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, "metrics.backend=random",
                      f"samples={root / 'real' / 'images.npz'}", f"ref={root / 'real' / 'images.npz'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    self_score = read_json(root / "real" / "images.metrics.json")
    assert abs(self_score["fid"]) < 1e-6 and self_score["precision"] == 1.0


@pytest.mark.slow
def test_evaluate_and_sample_refuse_bad_input_in_one_line(smoke_run, tmp_path):
    root, run = smoke_run
    proc = run_module("barlab.evaluate", *SMOKE_DATA, f"samples={tmp_path / 'none.npz'}", cwd=root)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith("error: samples:")
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(adm, arr_0=np.zeros((4, 16, 16, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    proc = run_module("barlab.evaluate", *SMOKE_DATA, *SMOKE_METRICS, f"samples={run / 'samples.npz'}",
                      f"ref={adm}", cwd=root)
    assert proc.returncode == 2
    assert "fix: metrics.backend=inception" in error_lines(proc.stderr)[0]
    proc = run_module("barlab.evaluate", *SMOKE_DATA, f"samples={run / 'samples.npz'}", "metrics.backend=clip",
                      cwd=root)
    assert proc.returncode == 2 and "metrics.backend" in error_lines(proc.stderr)[0]
    proc = run_module("barlab.sample", f"ckpt={tmp_path}", cwd=root)
    assert proc.returncode == 2 and "generator.pt" in error_lines(proc.stderr)[0]
    proc = run_module("barlab.sample", cwd=root)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith("error: ckpt: is required")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    proc = run_module("barlab.sample", f"ckpt={tmp_path / 'bad.pt'}", cwd=root)
    assert proc.returncode == 2 and "cannot read generator file" in error_lines(proc.stderr)[0]
