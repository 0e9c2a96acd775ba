"""The official BAR tokenizer's loss networks: LPIPS, ConvNeXt-S, the LPIPS+ConvNeXt perceptual loss, the Gram
loss and the DINO discriminator, checked against formulas written out here, with tiny random "pretrained"
files that use the real key names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from barlab.errors import ConfigError
from barlab.tokenizer import (
    LPIPS,
    BatchNormLocal,
    ConvNeXt,
    DinoDiscriminator,
    FrozenDinoViT,
    GramLoss,
    PaperPerceptualLoss,
    discriminator_fake_input,
    load_convnext,
)
from barlab.tokenizer.dino_discriminator import build_dino_heads
from barlab.tokenizer.discriminator import hinge_d_loss, hinge_g_loss
from barlab.tokenizer.gram import gram_matrix
from barlab.tokenizer.lpips import LPIPS_CHANNELS, lpips_heads
from barlab.tokenizer.perceptual import vgg16_features
from tests.helpers import run_if

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TINY_CNX = {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "key_depths": (1, 3)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- files with the real key names


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG16 saved as torchvision's vgg16-397923af.pth is laid out (features.N.*, classifier.*)."""
    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored, as torchvision's classifier
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    torch.manual_seed(2)
    state = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}
    path = tmp_path_factory.mktemp("lpips") / "vgg_lpips.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory):
    torch.manual_seed(3)
    model = ConvNeXt(**TINY_CNX)
    state = {k: v + 0.05 * torch.randn_like(v) if k.endswith("layer_scale") else v
             for k, v in model.state_dict().items()}  # layer scales that make the blocks count
    path = tmp_path_factory.mktemp("convnext") / "convnext_small-0c510722.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    torch.manual_seed(4)
    # scales that put the GELU inputs at O(1), where its tanh form and the exact one differ
    scale = {"cls_token": 0.5, "pos_embed": 0.5, "patch_embed.proj.weight": 0.1}
    state = {k: torch.randn_like(v) * scale.get(k, 0.3 if v.ndim == 2 else 0.1)
             for k, v in FrozenDinoViT(**TINY_VIT).state_dict().items()}
    for k in state:
        if "norm" in k:
            state[k] = torch.ones_like(state[k]) if k.endswith("weight") else torch.zeros_like(state[k])
    path = tmp_path_factory.mktemp("dino") / "dino_vit_small_patch8_224.pth"
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- full-size parameter counts


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        assert numel(vgg16_features()) == 14_714_688
        assert numel(ConvNeXt()) == 50_223_688
        assert numel(lpips_heads()) == 1_472
        assert numel(FrozenDinoViT()) == 21_670_272  # ViT-S/8 at 224: pos_embed (1, 785, 384)
        heads = build_dino_heads()
        assert numel(heads) == 7_386_245  # 5 x 1_477_249
    assert len(heads) == 5 and FrozenDinoViT().pos_embed.shape == (1, 785, 384)


# ---------------------------------------------------------------- LPIPS


def test_lpips_keys_zero_symmetry_and_freezing(vgg_file, lpips_file):
    lp = LPIPS(vgg_file, lpips_file)
    keys = list(lp.state_dict())
    assert keys == [f"features.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")] + [
        f"lin{k}.model.1.weight" for k in range(5)]
    assert len(lp.features) == 30  # up to relu5_3
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(lp(x, x), torch.zeros(2, 1, 1, 1))
    d = lp(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    assert torch.equal(d, lp(y, x))
    lp.train()
    assert not lp.training and not any(m.training for m in lp.modules())
    assert all(not p.requires_grad for p in lp.parameters())
    xg = x.clone().requires_grad_(True)
    lp(xg, y).sum().backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in lp.parameters())
    # gray = its three equal channels
    g = x[:, :1]
    torch.testing.assert_close(lp(g, y[:, :1]), lp(g.expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)))


def test_lpips_exact_value_with_hand_built_weights(tmp_path):
    """VGG16 zero except: conv 0 maps RGB channel c to output c (centre weight a_c, bias b_c), every later conv
    passes channels 0..2 through. Then relu1_2 = relu(a s(x) + b) with the LPIPS scaling s(x) = (x - shift) /
    scale, and relu{2,3,4,5}_* are its 1, 2, 3, 4-fold 2x2 max-pools. LPIPS is computed from that alone."""
    state = {k: torch.zeros_like(v) for k, v in vgg16_features().state_dict().items()}
    a, b = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.1, 0.05, -0.2])
    for c in range(3):
        state["0.weight"][c, c, 1, 1] = a[c]
        for conv in VGG_CONVS[1:]:
            state[f"{conv}.weight"][c, c, 1, 1] = 1.0
    state["0.bias"][:3] = b
    torch.save(state, tmp_path / "vgg.pth")  # features-only layout loads too
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(lins, tmp_path / "lin.pth")
    lp = LPIPS(tmp_path / "vgg.pth", tmp_path / "lin.pth")

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def layers(img):
        f = torch.relu(a.view(1, 3, 1, 1) * (img - shift) / scale + b.view(1, 3, 1, 1))
        out = [f]
        for _ in range(4):
            f = F.max_pool2d(f, 2)
            out.append(f)
        return out

    expected = 0
    for k, (fx, fy) in enumerate(zip(layers(x), layers(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lins[f"lin{k}.model.1.weight"][0, :3, 0, 0].view(1, 3, 1, 1)  # the zero channels add nothing
        expected = expected + (w * (nx - ny) ** 2).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(lp(x, y).view(2), expected, rtol=1e-5, atol=1e-7)


def test_lpips_refuses_missing_and_wrong_files(vgg_file, lpips_file, tmp_path):
    with pytest.raises(ConfigError) as err:
        LPIPS(vgg_file, tmp_path / "nowhere.pth")
    text = one_line(err)
    assert err.value.knob == "lpips_path" and "nowhere.pth" in text and "vgg_lpips.pth" in text
    assert "nothing is downloaded" in text
    with pytest.raises(ConfigError) as err:
        LPIPS(tmp_path / "novgg.pth", lpips_file)
    assert err.value.knob == "vgg_path" and "vgg16-397923af.pth" in one_line(err)
    state = torch.load(lpips_file)
    state["net.slice1.0.weight"] = torch.zeros(1)  # an extra key is not ignored
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError) as err:
        LPIPS(vgg_file, tmp_path / "extra.pth")
    text = one_line(err)
    assert err.value.knob == "lpips_path" and "unexpected keys [net.slice1.0.weight]" in text and "extra.pth" in text
    del state["net.slice1.0.weight"]
    state["lin4.model.1.weight"] = torch.zeros(1, 256, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ConfigError) as err:
        LPIPS(vgg_file, tmp_path / "shape.pth")
    assert "wrong shapes [lin4.model.1.weight (1, 256, 1, 1) != (1, 512, 1, 1)]" in one_line(err)
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "badvgg.pth")
    with pytest.raises(ConfigError) as err:
        LPIPS(tmp_path / "badvgg.pth", lpips_file)
    assert err.value.knob == "vgg_path" and "missing keys [0.bias, 2.weight, 2.bias, ... " in one_line(err)


# ---------------------------------------------------------------- ConvNeXt


def test_convnext_key_layout_is_torchvisions():
    keys = list(ConvNeXt(**TINY_CNX, num_classes=10).state_dict())
    block = ["layer_scale", "block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias",
             "block.3.weight", "block.3.bias", "block.5.weight", "block.5.bias"]
    expected = ["features.0.0.weight", "features.0.0.bias", "features.0.1.weight", "features.0.1.bias"]
    for s in range(4):
        expected += [f"features.{2 * s + 1}.0.{k}" for k in block]
        if s < 3:
            expected += [f"features.{2 * s + 2}.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    expected += ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]
    assert keys == expected
    small = ConvNeXt(**TINY_CNX, num_classes=10).state_dict()
    assert small["features.1.0.layer_scale"].shape == (8, 1, 1) and small["features.2.1.weight"].shape == (16, 8, 2, 2)
    assert small["features.3.0.block.0.weight"].shape == (16, 1, 7, 7)
    assert small["features.3.0.block.3.weight"].shape == (64, 16)
    with torch.device("meta"):
        full = ConvNeXt()
    assert len(full.features[5]) == 27 and full.classifier[2].out_features == 1000


def reference_convnext(state: dict, x: torch.Tensor, depths) -> torch.Tensor:
    """torchvision's ConvNeXt forward written out from the state dict."""
    def ln2d(t, prefix):
        c = t.shape[1]
        return F.layer_norm(t.permute(0, 2, 3, 1), (c,), state[prefix + ".weight"], state[prefix + ".bias"],
                            1e-6).permute(0, 3, 1, 2)

    t = F.conv2d(x, state["features.0.0.weight"], state["features.0.0.bias"], stride=4)
    t = ln2d(t, "features.0.1")
    for s, depth in enumerate(depths):
        for j in range(depth):
            p = f"features.{2 * s + 1}.{j}."
            c = t.shape[1]
            h = F.conv2d(t, state[p + "block.0.weight"], state[p + "block.0.bias"], padding=3, groups=c)
            h = h.permute(0, 2, 3, 1)
            h = F.layer_norm(h, (c,), state[p + "block.2.weight"], state[p + "block.2.bias"], 1e-6)
            h = F.linear(h, state[p + "block.3.weight"], state[p + "block.3.bias"])
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
            h = F.linear(h, state[p + "block.5.weight"], state[p + "block.5.bias"]).permute(0, 3, 1, 2)
            t = t + state[p + "layer_scale"] * h
        if s + 1 < len(depths):
            t = ln2d(t, f"features.{2 * s + 2}.0")
            t = F.conv2d(t, state[f"features.{2 * s + 2}.1.weight"], state[f"features.{2 * s + 2}.1.bias"], stride=2)
    t = ln2d(t.mean(dim=(2, 3), keepdim=True), "classifier.0").flatten(1)
    return F.linear(t, state["classifier.2.weight"], state["classifier.2.bias"])


def test_convnext_loads_strictly_and_matches_reference(convnext_file, tmp_path):
    model = load_convnext(convnext_file, **TINY_CNX)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, reference_convnext(torch.load(convnext_file), x, TINY_CNX["depths"]),
                               rtol=1e-4, atol=1e-5)
    state = torch.load(convnext_file)
    state["features.1.0.block.1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError) as err:
        load_convnext(tmp_path / "extra.pth", "convnext_path", **TINY_CNX)
    text = one_line(err)
    assert err.value.knob == "convnext_path" and "extra.pth" in text and "convnext_small-0c510722.pth" in text
    assert "unexpected keys [features.1.0.block.1.weight]" in text
    with pytest.raises(ConfigError) as err:
        load_convnext(convnext_file, "convnext_path")  # a tiny file is not ConvNeXt-S
    assert "wrong shapes [features.0.0.weight (8, 3, 4, 4) != (96, 3, 4, 4)" in one_line(err)
    with pytest.raises(ConfigError) as err:
        load_convnext(None, "convnext_path")
    assert "None not found" in one_line(err) and "convnext_small-0c510722.pth" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ConvNeXt(dims=(8, 16), depths=(1,))
    assert err.value.knob == "depths"


# ---------------------------------------------------------------- LPIPS + ConvNeXt perceptual loss


def test_paper_perceptual_loss_is_the_weighted_mean(vgg_file, lpips_file, convnext_file):
    loss = PaperPerceptualLoss(vgg_file, lpips_file, convnext_file, convnext_dims=TINY_CNX["dims"],
                               convnext_depths=TINY_CNX["depths"], resize=64)
    assert loss.lpips_weight == 1.0 and loss.convnext_weight == 0.1
    assert {k.split(".")[0] for k in loss.state_dict()} == {"lpips", "convnext"}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1

    def prep(img):
        img = F.interpolate(img, size=64, mode="bicubic", align_corners=False, antialias=True)
        return ((img + 1) / 2 - MEAN) / STD

    lp = loss.lpips(x, y).mean()
    mse = F.mse_loss(loss.convnext(prep(x)), loss.convnext(prep(y)))
    assert lp > 0 and mse > 0
    value = loss(x, y)
    assert value.shape == ()
    torch.testing.assert_close(value, (1.0 * lp + 0.1 * mse) / 1.1)
    assert loss(x, x).item() == 0.0
    # frozen, in eval, gradients reach the inputs
    loss.train()
    assert not any(m.training for m in loss.modules()) and all(not p.requires_grad for p in loss.parameters())
    xg = x.clone().requires_grad_(True)
    loss(xg, y).backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    # gray input = its channels repeated
    torch.testing.assert_close(loss(x[:, :1], y[:, :1]), loss(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1)))
    assert PaperPerceptualLoss(vgg_file, lpips_file, convnext_file, lpips_weight=2.0, convnext_weight=1.0,
                               convnext_dims=TINY_CNX["dims"], convnext_depths=TINY_CNX["depths"],
                               resize=64)(x, y).item() == pytest.approx(((2 * lp + mse) / 3).item(), rel=1e-5)


def test_paper_perceptual_loss_parts_can_be_off(vgg_file, lpips_file, convnext_file, tmp_path):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    only_lpips = PaperPerceptualLoss(vgg_file, lpips_file, None, convnext_weight=0)
    assert only_lpips.convnext is None
    torch.testing.assert_close(only_lpips(x, y), only_lpips.lpips(x, y).mean())
    only_cnx = PaperPerceptualLoss(None, None, convnext_file, lpips_weight=0.0, convnext_dims=TINY_CNX["dims"],
                                   convnext_depths=TINY_CNX["depths"], resize=64)
    assert only_cnx.lpips is None and only_cnx(x, y) > 0
    with pytest.raises(ConfigError) as err:
        PaperPerceptualLoss(None, None, None, lpips_weight=0, convnext_weight=0)
    assert err.value.knob == "lpips_weight"
    with pytest.raises(ConfigError) as err:
        PaperPerceptualLoss(vgg_file, lpips_file, None)
    assert err.value.knob == "convnext_path" and "convnext_small-0c510722.pth" in one_line(err)
    with pytest.raises(ConfigError) as err:
        PaperPerceptualLoss(vgg_file, lpips_file, None, convnext_weight=-1)
    assert str(err.value) == "convnext_weight: must be a non-negative number, got -1 (fix: convnext_weight=0.1)"


# ---------------------------------------------------------------- Gram loss


def test_gram_matrix_hand_case():
    f = torch.tensor([[1.0, 2.0], [0.0, 3.0]]).view(1, 2, 1, 2)  # C=2, H=1, W=2
    expected = torch.tensor([[5.0, 6.0], [6.0, 9.0]]) / 4
    torch.testing.assert_close(gram_matrix(f), expected.view(1, 2, 2))


def test_gram_loss_counts_relu_twice_pool_once_and_no_preactivation(vgg_file):
    gram = GramLoss(vgg_file, resize=32)
    assert len(gram.features) == 31 and GramLoss.__init__.__defaults__ == (224,)
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    y = torch.rand(2, 3, 24, 24) * 2 - 1

    def prep(img):
        img = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
        return ((img + 1) / 2 - MEAN) / STD

    def entries(img):
        """The output of every module, ReLUs out of place: (kind, tensor)."""
        out, h = [], prep(img)
        for layer in gram.features:
            h = F.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
            out.append((type(layer).__name__, h))
        return out

    ex, ey = entries(x), entries(y)
    terms = [((gram_matrix(a) - gram_matrix(b)) ** 2).mean() for (_, a), (_, b) in zip(ex, ey)]
    kinds = [kind for kind, _ in ex]
    assert kinds.count("Conv2d") == 13 and kinds.count("ReLU") == 13 and kinds.count("MaxPool2d") == 5
    # official: each conv entry is the following ReLU's output (in-place ReLU)
    official = sum(terms[i + 1] if kind == "Conv2d" else terms[i] for i, kind in enumerate(kinds))
    relu_twice = sum({"Conv2d": 0, "ReLU": 2, "MaxPool2d": 1}[kind] * t for kind, t in zip(kinds, terms))
    naive = sum(terms)  # with the pre-activations: what the official does NOT compute
    value = gram(x, y)
    torch.testing.assert_close(value, official, rtol=1e-5, atol=0)
    torch.testing.assert_close(value, relu_twice, rtol=1e-5, atol=0)
    assert abs(value - naive) > 1e-3 * naive
    # the literal official loop, run with torchvision's in-place ReLUs, gives the same
    hx, hy, lx, ly = prep(x), prep(y), [], []
    assert all(m.inplace for m in gram.features if isinstance(m, nn.ReLU))
    for layer in gram.features:
        hx, hy = layer(hx), layer(hy)
        lx.append(hx)
        ly.append(hy)
    torch.testing.assert_close(value, sum(((gram_matrix(a) - gram_matrix(b)) ** 2).mean() for a, b in zip(lx, ly)),
                               rtol=1e-5, atol=0)
    assert gram(x, x).item() == 0.0
    gram.train()
    assert not any(m.training for m in gram.modules()) and all(not p.requires_grad for p in gram.parameters())
    xg = x.clone().requires_grad_(True)
    gram(xg, y).backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in gram.parameters())
    torch.testing.assert_close(gram(x[:, :1], y[:, :1]), gram(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1)))


def test_gram_loss_refuses_a_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        GramLoss(tmp_path / "vgg16.pth")
    text = one_line(err)
    assert err.value.knob == "vgg_path" and "vgg16.pth" in text and "vgg16-397923af.pth" in text


# ---------------------------------------------------------------- DINO discriminator


def test_dino_vit_keys_and_strict_loading(dino_file, tmp_path):
    keys = set(FrozenDinoViT(**TINY_VIT).state_dict())
    block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    assert keys == {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                    "norm.bias"} | {f"blocks.{i}.{m}.{p}" for i in range(4) for m in block for p in ("weight", "bias")}
    disc = DinoDiscriminator(dino_file, **TINY_VIT)
    raw = torch.load(dino_file)
    for i in range(4):
        bias, loaded = raw[f"blocks.{i}.attn.qkv.bias"], disc.dino.blocks[i].attn.qkv.bias
        assert torch.equal(loaded[:32], bias[:32]) and torch.equal(loaded[64:], bias[64:])
        assert torch.equal(loaded[32:64], torch.zeros(32)) and bias[32:64].abs().sum() > 0  # k bias zeroed
    raw["head.weight"] = torch.zeros(1)
    torch.save(raw, tmp_path / "extra.pth")
    with pytest.raises(ConfigError) as err:
        DinoDiscriminator(tmp_path / "extra.pth", **TINY_VIT)
    text = one_line(err)
    assert err.value.knob == "dino_path" and "extra.pth" in text and "unexpected keys [head.weight]" in text
    assert "dino_vit_small_patch8_224.pth" in text
    with pytest.raises(ConfigError) as err:
        DinoDiscriminator(dino_file, **{**TINY_VIT, "patch_size": 16})  # a patch-16 ViT has another pos_embed
    assert "wrong shapes [pos_embed (1, 17, 32) != (1, 5, 32)" in one_line(err)
    with pytest.raises(ConfigError) as err:
        DinoDiscriminator(tmp_path / "missing.pth")
    text = one_line(err)
    assert "missing.pth" in text and "not found" in text and "RAE-collections" in text


def reference_dino(state: dict, x: torch.Tensor, depth: int, key_depths, heads: int) -> list[torch.Tensor]:
    """The official FrozenDINOSmallNoDrop forward on an already normalised img_size image, from the state dict."""
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=8)
    t = t.flatten(2).transpose(1, 2)
    b, _, d = t.shape
    t = torch.cat([state["cls_token"].expand(b, -1, -1), t], dim=1) + state["pos_embed"]
    acts = [(t[:, 1:] + t[:, :1]).transpose(1, 2)]
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), state[p + "norm1.weight"], state[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]).view(
            b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        t = t + F.linear(att.transpose(1, 2).reshape(b, -1, d), state[p + "attn.proj.weight"],
                         state[p + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), state[p + "norm2.weight"], state[p + "norm2.bias"], 1e-6)
        h = F.gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]), approximate="tanh")
        t = t + F.linear(h, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        if i in key_depths:
            acts.append((t[:, 1:] + t[:, :1]).transpose(1, 2))
    return acts


def test_dino_vit_forward_matches_reference(dino_file):
    vit = DinoDiscriminator(dino_file, **TINY_VIT).dino
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    normed = ((x + 1) / 2 - MEAN) / STD
    torch.testing.assert_close(vit.to_input_size(x), normed, rtol=1e-5, atol=1e-6)  # 32 -> 32 bicubic: itself
    acts = vit(x)
    ref = reference_dino(torch.load(dino_file), normed, 4, (1, 3), 2)  # k bias not zeroed: softmax ignores it
    assert len(acts) == 3 and all(a.shape == (2, 32, 16) and a.dtype == torch.float32 for a in acts)
    for a, r in zip(acts, ref):  # fp32 rounding: fused attention against the written-out softmax (AVX2 / AVX-512)
        torch.testing.assert_close(a, r, rtol=1e-4, atol=5e-5)


def test_dino_input_crop_and_resize_branches():
    vit = FrozenDinoViT(**TINY_VIT)
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    normed = ((x + 1) / 2 - MEAN) / STD
    gen = torch.Generator().manual_seed(7)
    out = vit.to_input_size(x, crop=True, generator=gen)
    ref = torch.Generator().manual_seed(7)
    top = int(torch.randint(0, 48 - 32 + 1, (1,), generator=ref))
    left = int(torch.randint(0, 40 - 32 + 1, (1,), generator=ref))
    torch.testing.assert_close(out, normed[..., top:top + 32, left:left + 32])
    torch.testing.assert_close(vit.to_input_size(x, crop=False), F.interpolate(normed, size=(32, 32), mode="area"))
    # the coin: crop when torch.rand() <= 0.5, from the passed generator (else the global torch RNG)
    seen = set()
    for seed in range(8):
        coin_gen = torch.Generator().manual_seed(seed)
        coin = float(torch.rand((), generator=coin_gen))
        expected = (vit.to_input_size(x, crop=True, generator=coin_gen) if coin <= 0.5
                    else vit.to_input_size(x, crop=False))
        torch.testing.assert_close(vit.to_input_size(x, generator=torch.Generator().manual_seed(seed)), expected)
        torch.manual_seed(seed)
        torch.testing.assert_close(vit.to_input_size(x), expected)
        seen.add(coin <= 0.5)
    assert seen == {True, False}
    # not larger in both sides: no crop; the mode looks at H only (area if H > size, else bicubic)
    tall = torch.rand(1, 3, 40, 24) * 2 - 1
    torch.testing.assert_close(vit.to_input_size(tall), F.interpolate(((tall + 1) / 2 - MEAN) / STD, size=(32, 32),
                                                                      mode="area"))
    small = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(vit.to_input_size(small), F.interpolate(((small + 1) / 2 - MEAN) / STD,
                                                                       size=(32, 32), mode="bicubic"))
    with pytest.raises(ValueError):
        vit.to_input_size(small, crop=True)


def test_batchnorm_local_hand_case():
    bn = BatchNormLocal(2, eps=0.0)
    x = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[5.0, 7.0], [2.0, 2.0]]])  # (B=2, C=2, L=2)
    # channel 0: mean 4, var (9 + 1 + 1 + 9) / 4 = 5; channel 1: mean 1, var 1
    expected = torch.tensor([[[-3.0, -1.0], [-1.0, -1.0]], [[1.0, 3.0], [1.0, 1.0]]])
    expected[:, 0] /= math.sqrt(5.0)
    torch.testing.assert_close(bn(x), expected)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(bn(x), expected * torch.tensor([2.0, 3.0]).view(1, 2, 1) + torch.tensor(
        [0.5, -1.0]).view(1, 2, 1))
    # virtual batches: 16 -> two groups of 8 normalised separately; 10 -> ceil(10 / 8) = 2 groups of 5
    bn = BatchNormLocal(3, virtual_bs=8, eps=1e-6)
    for b, size in ((16, 8), (10, 5)):
        x = torch.randn(b, 3, 4) * 3 + torch.arange(b).view(b, 1, 1)
        parts = []
        for g in x.split(size):
            mean = g.mean(dim=(0, 2), keepdim=True)
            parts.append((g - mean) / torch.sqrt(g.var(dim=(0, 2), keepdim=True, unbiased=False) + 1e-6))
        torch.testing.assert_close(bn(x), torch.cat(parts))
    with pytest.raises(ValueError):
        bn(torch.randn(9, 3, 4))


def test_dino_heads_key_layout_and_spectral_norm():
    heads = build_dino_heads(channels=16, count=2, kernel_size=9)
    sn = ["weight_orig", "weight_u", "weight_v", "bias"]
    expected = set()
    for i in range(2):
        expected |= {f"heads.{i}.0.0.{k}" for k in sn} | {f"heads.{i}.0.1.weight", f"heads.{i}.0.1.bias"}
        expected |= {f"heads.{i}.1.fn.0.{k}" for k in sn} | {f"heads.{i}.1.fn.1.weight", f"heads.{i}.1.fn.1.bias"}
        expected |= {f"heads.{i}.2.{k}" for k in sn}
    assert set(nn.ModuleDict({"heads": heads}).state_dict()) == expected
    conv = heads[0][1].fn[0]
    assert conv.kernel_size == (9,) and conv.padding == (4,) and conv.padding_mode == "circular"
    assert heads[0][0][2].negative_slope == 0.2 and heads[0][2].out_channels == 1
    # the head, written out (eval: the stored u, v give sigma = u^T W v)
    heads.eval()
    x = torch.randn(8, 16, 12)

    def snw(m):
        w = m.weight_orig
        sigma = m.weight_u @ w.flatten(1) @ m.weight_v
        return w / sigma

    def bn(t, m):
        mean, var = t.mean(dim=(0, 2), keepdim=True), t.var(dim=(0, 2), keepdim=True, unbiased=False)
        return (t - mean) / torch.sqrt(var + 1e-6) * m.weight.view(1, -1, 1) + m.bias.view(1, -1, 1)

    h = heads[0]
    a = F.leaky_relu(bn(F.conv1d(x, snw(h[0][0]), h[0][0].bias), h[0][1]), 0.2)
    r = F.conv1d(F.pad(a, (4, 4), mode="circular"), snw(h[1].fn[0]), h[1].fn[0].bias)
    r = (F.leaky_relu(bn(r, h[1].fn[1]), 0.2) + a) / math.sqrt(2)
    torch.testing.assert_close(h(x), F.conv1d(r, snw(h[2]), h[2].bias), rtol=1e-4, atol=1e-5)


def test_dino_discriminator_output_state_dict_freezing(dino_file, monkeypatch):
    disc = DinoDiscriminator(dino_file, **TINY_VIT)
    # the frozen ViT is neither in the state dict nor in the parameters
    assert all(k.startswith("heads.") for k in disc.state_dict()) and len(disc.heads) == 3
    assert numel(disc) == numel(build_dino_heads(32, 3)) and not any(p is q for p in disc.parameters()
                                                                      for q in disc.dino.parameters())
    disc.train()
    assert disc.training and not disc.dino.training and all(not p.requires_grad for p in disc.dino.parameters())
    x = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_(True)
    logits = disc(x)
    assert logits.shape == (8, 3 * 16) and logits.dtype == torch.float32
    # = each head on its activation, flattened and concatenated
    disc.eval()
    with torch.no_grad():
        acts = disc.dino(x)
        expected = torch.cat([h(a).flatten(1) for h, a in zip(disc.heads, acts)], dim=1)
        torch.testing.assert_close(disc(x), expected)
    disc.train()
    hinge = hinge_d_loss(disc(x.detach()), disc(discriminator_fake_input(x)))
    hinge.backward()
    assert all(p.grad is not None for p in disc.parameters()) and all(p.grad is None for p in disc.dino.parameters())
    assert x.grad is None  # the discriminator step detaches its inputs
    disc.zero_grad()
    disc.requires_grad_(False)
    hinge_g_loss(disc(x)).backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in disc.parameters())
    # .to(device) moves the hidden ViT too; a dtype cast leaves it float32
    moves = []
    monkeypatch.setattr(disc.dino, "to", lambda *a, **k: moves.append(k))
    disc.to("cpu")
    assert moves == [{"device": torch.device("cpu")}]
    monkeypatch.undo()
    disc.double()
    assert disc.heads[0][2].bias.dtype == torch.float64 and disc.dino.pos_embed.dtype == torch.float32


def test_discriminator_fake_input_is_detached_8_bit():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.003, 0.5, 1.0, 2.0], requires_grad=True)
    out = discriminator_fake_input(x)
    assert not out.requires_grad
    expected = torch.tensor([0.0, 0.0, 128.0, 128.0, 191.0, 255.0, 255.0]) / 127.5 - 1  # round half to even
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grid = (out + 1) * 127.5
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-4)


def test_official_discriminator_step_hand_case():
    """TokenizerModule.discriminator_loss with gan_quantize_fake (the official step): hinge on D(real) and
    D(fake clamped and rounded to 8 bits), with a discriminator whose logits are each image's mean."""
    from functools import partial

    from barlab.lightning.tokenizer_module import TokenizerModule
    from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, Tokenizer

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []
            self.bias = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            self.seen.append(x)
            return x.flatten(1).mean(1, keepdim=True) + self.bias

    d = Fixed()
    tokenizer = Tokenizer(ConvEncoder(1, width=4, depth=0, downsample=1, out_channels=4), BinaryFSQ(4, bits=2),
                          ConvDecoder(1, width=4, depth=0, upsample=1, in_channels=4))
    module = TokenizerModule(tokenizer, image_size=1, optimizer=partial(torch.optim.AdamW), scheduler=None,
                             discriminator=d, gan_weight=0.05, gan_quantize_fake=True)
    real = torch.tensor([2.0, 0.5, -1.0]).view(3, 1, 1, 1)   # relu(1 - r) = [0, 0.5, 2]
    fake = torch.tensor([-0.998, 0.0, 0.9]).view(3, 1, 1, 1)  # (x + 1) * 127.5 rounds to 0, 128, 242
    loss = module.discriminator_loss(real, fake.requires_grad_(True))
    q = torch.tensor([0.0, 128.0, 242.0]) / 127.5 - 1
    assert torch.equal(d.seen[1].view(3), q) and not d.seen[1].requires_grad
    assert loss.item() == pytest.approx(0.5 * (2.5 / 3 + F.relu(1 + q).mean().item()))
    assert hinge_g_loss(d(fake)).item() == pytest.approx(-fake.mean().item())


@pytest.mark.gpu
@run_if(min_gpus=1)
def test_dino_discriminator_follows_cuda(dino_file):
    disc = DinoDiscriminator(dino_file, **TINY_VIT).cuda()
    assert disc.dino.pos_embed.is_cuda and disc.dino.x_scale.is_cuda
    x = torch.rand(8, 3, 64, 64, device="cuda") * 2 - 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = disc(x)
    assert logits.is_cuda and logits.dtype == torch.float32 and logits.shape == (8, 48)
    disc.cpu()
    assert not disc.dino.pos_embed.is_cuda
