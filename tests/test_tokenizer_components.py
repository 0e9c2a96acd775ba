"""Tokenizer, encoder/decoder, reconstruction loss, discriminator and perceptual loss."""

from __future__ import annotations

import pytest
import torch

from barlab.errors import ConfigError
from barlab.tokenizer import (
    FSQ,
    BinaryFSQ,
    ConvDecoder,
    ConvEncoder,
    KLLatent,
    PatchDiscriminator,
    ReconstructionLoss,
    Tokenizer,
    VGGPerceptualLoss,
    hinge_d_loss,
    hinge_g_loss,
)
from barlab.tokenizer.perceptual import vgg16_features


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_tokenizer(quantizer=None, f=4, width=8, depth=1, channels=1, latent=16):
    quantizer = quantizer or BinaryFSQ(latent, bits=16)
    return Tokenizer(
        ConvEncoder(channels, width=width, depth=depth, downsample=f, out_channels=latent),
        quantizer,
        ConvDecoder(channels, width=width, depth=depth, upsample=f, in_channels=latent),
    )


# ---------------------------------------------------------------- encoder / decoder


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16])
def test_encoder_decoder_shapes(f):
    enc = ConvEncoder(3, width=8, depth=1, downsample=f, out_channels=12)
    dec = ConvDecoder(3, width=8, depth=1, upsample=f, in_channels=12)
    x = torch.randn(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, 12, 32 // f, 32 // f)
    y = dec(z)
    assert y.shape == (2, 3, 32, 32)
    assert z.is_contiguous() and y.is_contiguous()
    assert enc.downsample == f and dec.upsample == f


def test_encoder_non_square_and_odd_width():
    enc = ConvEncoder(1, width=12, depth=2, downsample=8, out_channels=5, max_mult=2)
    dec = ConvDecoder(1, width=12, depth=2, upsample=8, in_channels=5, max_mult=2)
    x = torch.randn(1, 1, 32, 64)
    z = enc(x)
    assert z.shape == (1, 5, 4, 8)
    assert dec(z).shape == (1, 1, 32, 64)
    widths = {m.num_channels: m.num_groups for m in enc.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert widths == {12: 12, 24: 24}  # group count divides the width; channels capped at 12 * 2


@pytest.mark.parametrize("bad", [3, 0, 6, -4, 4.0, True, "4"])
def test_bad_downsample_raises(bad):
    with pytest.raises(ConfigError) as err:
        ConvEncoder(1, downsample=bad)
    assert err.value.knob == "downsample" and err.value.fix == "downsample=4"
    with pytest.raises(ConfigError) as err:
        ConvDecoder(1, upsample=bad)
    assert err.value.knob == "upsample"


def test_bad_downsample_names_the_knob_through_the_config(compose_train):
    from barlab.tokenizer.checkpoint import build_tokenizer

    with pytest.raises(ConfigError) as err:
        build_tokenizer(compose_train(["experiment=smoke", "tokenizer.encoder.downsample=3"]).tokenizer)
    assert err.value.knob == "tokenizer.encoder.downsample" and err.value.fix == "tokenizer.encoder.downsample=4"
    with pytest.raises(ConfigError) as err:  # a decoder that does not undo the encoder: the Tokenizer refuses it
        build_tokenizer(compose_train(["experiment=smoke", "tokenizer.decoder.upsample=2"]).tokenizer)
    assert str(err.value) == ("tokenizer.decoder.upsample: is 2 but the encoder's downsample is 4 "
                              "(fix: tokenizer.decoder.upsample=4)")
    with pytest.raises(ConfigError) as err:
        build_tokenizer(compose_train(["experiment=smoke", "tokenizer.decoder.in_channels=8"]).tokenizer)
    assert err.value.knob == "tokenizer.latent_channels" and "widths differ" in str(err.value)


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_forward_grid_and_budget():
    tok = make_tokenizer(f=4)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    recon, out = tok(x)
    assert recon.shape == x.shape
    assert out.latent.shape == (2, 16, 8, 8) and out.bits.shape == (2, 8, 8, 16)
    assert tok.grid_size(32) == (8, 8)
    assert tok.grid_size((32, 64)) == (8, 16)
    assert tok.bits_per_image(32) == 8 * 8 * 16
    assert make_tokenizer(f=16).bits_per_image(256) == 4096  # the released BAR-FSQ budget
    with pytest.raises(ConfigError) as err:
        tok.grid_size(30)
    assert err.value.knob == "image_size"
    with pytest.raises(ConfigError):
        tok(torch.zeros(1, 1, 30, 30))


@pytest.mark.parametrize("quantizer", [lambda: BinaryFSQ(16, 12), lambda: FSQ(16, [8, 5, 5, 3])])
def test_tokenizer_bits_round_trip_reproduces_forward(quantizer):
    tok = make_tokenizer(quantizer()).eval()
    x = torch.rand(3, 1, 16, 32) * 2 - 1
    with torch.no_grad():
        recon, _ = tok(x)
        bits = tok.encode_bits(x)
        k = tok.bits_per_token
        assert bits.shape == (3, 4 * 8, k)
        assert set(bits.unique().tolist()) <= {0.0, 1.0}
        again = tok.decode_bits(bits, tok.grid_size((16, 32)))
    assert torch.equal(again, recon)
    # raster order: token (row r, col c) is element r * w + c
    with torch.no_grad():
        grid_bits = tok.quantizer.encode_bits(tok.encoder(x))
    assert torch.equal(bits[:, 1 * 8 + 5], grid_bits[:, 1, 5])


def test_tokenizer_bits_rejected_for_continuous_latent():
    tok = make_tokenizer(KLLatent(16, channels=4))
    assert not tok.is_discrete
    assert tok.bits_per_image(32) == 8 * 8 * 4 * 16
    with pytest.raises(ConfigError) as err:
        tok.encode_bits(torch.zeros(1, 1, 32, 32))
    assert err.value.knob == "quantizer"
    with pytest.raises(ConfigError):
        tok.decode_bits(torch.zeros(1, 64, 16), (8, 8))


def test_tokenizer_decode_bits_checks_length():
    tok = make_tokenizer()
    with pytest.raises(ConfigError) as err:
        tok.decode_bits(torch.zeros(1, 10, 16), (4, 4))
    assert err.value.knob == "grid"


def test_tokenizer_rejects_mismatched_widths():
    with pytest.raises(ConfigError) as err:
        Tokenizer(ConvEncoder(1, out_channels=16), BinaryFSQ(8, 4), ConvDecoder(1, in_channels=16))
    assert err.value.knob == "latent_channels"


def _synthetic_batch() -> torch.Tensor:
    """8 smooth 16x16 gray images in [-1, 1]: shifted gradients and blobs."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    imgs = []
    for i in range(8):
        a = i * 0.7
        img = 0.8 * torch.sin(2.0 * (xs * torch.cos(torch.tensor(a)) + ys * torch.sin(torch.tensor(a))) + i)
        img = img + 0.5 * torch.exp(-((xs - 0.3 * (i % 3 - 1)) ** 2 + (ys + 0.2 * (i % 2)) ** 2) / 0.1)
        imgs.append(img.clamp(-1, 1))
    return torch.stack(imgs).unsqueeze(1)


@pytest.mark.parametrize("quantizer", ["binary_fsq", "kl"])
def test_few_adam_steps_reduce_reconstruction_loss(quantizer):
    q = BinaryFSQ(16, bits=16) if quantizer == "binary_fsq" else KLLatent(16, channels=4, kl_weight=1e-6)
    tok = make_tokenizer(q, f=4, width=16, depth=1)
    loss_fn = ReconstructionLoss(l1_weight=0.1, l2_weight=1.0)
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    x = _synthetic_batch()
    losses = []
    for _ in range(30):
        recon, out = tok(x)
        loss = loss_fn(recon, x)["loss"] + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------- reconstruction loss


def test_reconstruction_loss_hand_values():
    recon = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])
    target = torch.zeros_like(recon)
    out = ReconstructionLoss(l1_weight=0.1, l2_weight=1.0)(recon, target)
    assert out["l1"].item() == pytest.approx(1.0)  # (0 + 1 + 2 + 1) / 4
    assert out["l2"].item() == pytest.approx(1.5)  # (0 + 1 + 4 + 1) / 4
    assert out["loss"].item() == pytest.approx(0.1 * 1.0 + 1.5)
    assert ReconstructionLoss()(target, target)["loss"].item() == 0.0
    with pytest.raises(ConfigError) as err:
        ReconstructionLoss(l1_weight=-1)
    assert err.value.knob == "l1_weight" and err.value.fix == "l1_weight=0.1"


# ---------------------------------------------------------------- discriminator


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_patch_discriminator_shapes(spectral_norm):
    d = PatchDiscriminator(1, width=8, n_layers=3, spectral_norm=spectral_norm)
    assert d(torch.randn(2, 1, 32, 32)).shape == (2, 1, 2, 2)
    d3 = PatchDiscriminator(3, width=8, n_layers=2, spectral_norm=spectral_norm)
    assert d3(torch.randn(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    logits = d(torch.randn(2, 1, 32, 32))
    logits.mean().backward()
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)


def test_hinge_losses_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2] -> mean 0.8333
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = [0, 1, 2]   -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0 / 3)
    assert hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -1.5)).item() == 0.0


# ---------------------------------------------------------------- perceptual loss


@pytest.fixture
def vgg_full_path(tmp_path):
    """A randomly initialised VGG16 saved with torchvision's full-model key layout."""
    features = vgg16_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # must be ignored
    path = tmp_path / "vgg16_random.pth"
    torch.save(state, path)
    return path


def test_vgg_state_dict_keys_match_torchvision_layout():
    keys = list(vgg16_features().state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert keys == [f"{i}.{p}" for i in convs for p in ("weight", "bias")]


def test_vgg_perceptual_loss_zero_for_identical_positive_for_different(vgg_full_path):
    loss = VGGPerceptualLoss(str(vgg_full_path))
    assert not loss.training and all(not p.requires_grad for p in loss.parameters())
    assert next(iter(loss.state_dict())).startswith("features.0.")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0
    d = loss(x, y)
    assert d.item() > 0 and d.shape == ()
    assert loss(x, y, reduction="none").shape == (2,)
    loss.train()
    assert not loss.training
    x3 = x.expand(-1, 3, -1, -1).clone().requires_grad_(True)
    loss(x3, y).backward()  # gradients reach the input, not the frozen weights
    assert x3.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    # a grey image is its three equal channels: the same distance, and its gradient is the channels' sum
    x1 = x.clone().requires_grad_(True)
    d1 = loss(x1, y)
    d1.backward()
    assert d1.item() == pytest.approx(d.item(), rel=1e-6)
    torch.testing.assert_close(x1.grad, x3.grad.sum(dim=1, keepdim=True), rtol=1e-5, atol=1e-9)
    # features-only layout loads too, and gives the same numbers
    features_only = vgg_full_path.parent / "features_only.pth"
    full = torch.load(vgg_full_path)
    torch.save({k[len("features."):]: v for k, v in full.items() if k.startswith("features.")}, features_only)
    assert VGGPerceptualLoss(str(features_only))(x, y).item() == pytest.approx(d.item())


def test_vgg_perceptual_loss_subset_of_layers(vgg_full_path):
    loss = VGGPerceptualLoss(str(vgg_full_path), layers=("relu1_2", "relu2_2"))
    assert len(loss.features) == 9
    assert loss(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)).item() > 0
    with pytest.raises(ConfigError) as err:
        VGGPerceptualLoss(str(vgg_full_path), layers=("relu9_9",))
    assert err.value.knob == "layers"


@pytest.mark.parametrize("path", [None, "/nonexistent/vgg16.pth"])
def test_vgg_perceptual_loss_missing_weights(path):
    with pytest.raises(ConfigError) as err:
        VGGPerceptualLoss(path)
    assert err.value.knob == "weights_path"
    assert "not found" in str(err.value) and "nothing is downloaded" in str(err.value)
    assert err.value.fix == "weight=0 or a path"


def test_tokenizer_module_errors_name_the_knobs(compose_train):
    from barlab.pipeline.tokenizer_stage import build_tokenizer_module

    cfg = compose_train(["experiment=smoke", "tokenizer.loss.perceptual.weight=1",
                         "tokenizer.loss.perceptual.weights_path=/nonexistent/vgg16.pth"])
    with pytest.raises(ConfigError) as err:
        build_tokenizer_module(cfg)
    assert err.value.knob == "tokenizer.loss.perceptual.weights_path" and "not found" in str(err.value)
    assert err.value.fix == "tokenizer.loss.perceptual.weight=0 or a path"
    with pytest.raises(ConfigError) as err:
        build_tokenizer_module(compose_train(["experiment=smoke", "tokenizer.loss.l1_weight=-1"]))
    assert str(err.value) == ("tokenizer.loss.l1_weight: must be a non-negative number, got -1 "
                              "(fix: tokenizer.loss.l1_weight=0.1)")
    with pytest.raises(ConfigError) as err:
        build_tokenizer_module(compose_train(["experiment=smoke", "data.image_size=18"]))
    assert err.value.knob == "data.image_size" and err.value.fix.startswith("data.image_size=16 ")


def test_vgg_perceptual_loss_wrong_file(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"0.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError) as err:
        VGGPerceptualLoss(str(path))
    assert err.value.knob == "weights_path"


def test_vgg_perceptual_loss_exact_value_with_hand_built_weights(tmp_path):
    """A VGG16 state dict that is zero except: conv 0 maps RGB channel c to output c with centre weight
    a_c and bias b_c; convs 2, 5 and 7 pass channels 0..2 through (centre weight 1). Then, with
    n(x) = ((x + 1) / 2 - mean) / std, relu1_2 = relu(a n(x) + b) on channels 0..2 (zero elsewhere) and
    relu2_2 = maxpool2(relu1_2). The LPIPS-style distance is computed here from that formula alone."""
    features = vgg16_features()
    state = {k: torch.zeros_like(v) for k, v in features.state_dict().items()}
    a, b = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.1, 0.0, -0.2])
    for c in range(3):
        state["0.weight"][c, c, 1, 1] = a[c]
        for conv in ("2", "5", "7"):
            state[f"{conv}.weight"][c, c, 1, 1] = 1.0
    state["0.bias"][:3] = b
    path = tmp_path / "hand_vgg.pth"
    torch.save(state, path)
    loss = VGGPerceptualLoss(str(path), layers=("relu1_2", "relu2_2"))

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    y = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def layers(img):
        r12 = torch.relu(a.view(1, 3, 1, 1) * (((img + 1) / 2 - mean) / std) + b.view(1, 3, 1, 1))
        r22 = torch.nn.functional.max_pool2d(r12, 2)
        return [r12, r22]   # the 61 / 125 zero channels add nothing to norms or differences

    def unit(f):
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    per_image = sum(((unit(p) - unit(q)) ** 2).sum(1).mean((1, 2)) for p, q in zip(layers(x), layers(y)))
    torch.testing.assert_close(loss(x, y, reduction="none"), per_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(x, y), per_image.mean(), rtol=1e-5, atol=1e-6)
    # a gray image is its RGB repeat
    gray_x, gray_y = x[:, :1], y[:, :1]
    torch.testing.assert_close(loss(gray_x, gray_y), loss(gray_x.expand(-1, 3, -1, -1), gray_y.expand(-1, 3, -1, -1)))
