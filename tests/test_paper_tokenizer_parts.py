"""The paper's BAR-FSQ tokenizer parts: SigLIP2 encoder / teacher, ViT decoder, binary FSQ with two widths."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from barlab.errors import ConfigError
from barlab.tokenizer import BinaryFSQ, SigLIP2Encoder, SigLIP2Teacher, SigLIP2Tower, Tokenizer, ViTDecoder
from barlab.tokenizer.siglip2 import resize_positions
from barlab.tokenizer.vit_decoder import map_official_decoder_keys

# a tiny tower: 16 x 16 images, patch 4 -> a 4 x 4 grid, the size of the stored position table
TINY = dict(in_channels=3, patch_size=4, width=16, depth=2, heads=2, mlp_dim=24, num_patches=16)
TINY_HF = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
           "patch_size": 4, "num_patches": 16}  # num_channels, layer_norm_eps, hidden_act: HF defaults (omitted)
TINY_DEC = dict(grid=4, width=12, depth=3, heads=2, mlp_ratio=2.0, patch_size=4, out_channels=3, distill_dim=16,
                distill_layer=1, distill_hidden=20)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_full_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A full SigLIP2 checkpoint of the tiny sizes with the real key names: vision_model.* (head included),
    text_model.*, logit_scale, logit_bias; every tensor random (LayerNorms too)."""
    gen = torch.Generator().manual_seed(seed)
    tower = SigLIP2Tower(**TINY)
    state = {f"vision_model.{k}": 0.3 * torch.randn(v.shape, generator=gen) for k, v in tower.state_dict().items()}
    d, m = TINY["width"], TINY["mlp_dim"]
    head = {"probe": (1, 1, d), "attention.in_proj_weight": (3 * d, d), "attention.in_proj_bias": (3 * d,),
            "attention.out_proj.weight": (d, d), "attention.out_proj.bias": (d,), "layernorm.weight": (d,),
            "layernorm.bias": (d,), "mlp.fc1.weight": (m, d), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (d, m),
            "mlp.fc2.bias": (d,)}
    state.update({f"vision_model.head.{k}": torch.randn(s, generator=gen) for k, s in head.items()})
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, d, generator=gen)
    state["text_model.final_layer_norm.weight"] = torch.randn(d, generator=gen)
    state["logit_scale"] = torch.randn(1, generator=gen)
    state["logit_bias"] = torch.randn(1, generator=gen)
    return state


def write_hf_folder(folder, state, vision_config=None, wrap=True):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    vision = dict(TINY_HF if vision_config is None else vision_config)
    config = {"model_type": "siglip2", "vision_config": vision, "text_config": {"hidden_size": 16}} if wrap else vision
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def hf_folder(tmp_path):
    return write_hf_folder(tmp_path / "siglip2", random_full_state())


def images(batch=2, size=16, seed=3):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_tower(state, x, heads, p, eps=1e-6):
    """HF's Siglip2 vision transformer in explicit math (eager attention, tanh GELU), for a token grid equal to
    the stored position grid; ``state`` has tower keys without the vision_model. prefix."""
    b, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)

    def lin(t, name):
        return t @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def gelu_tanh(t):
        return 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)))

    t = lin(patches, "embeddings.patch_embedding") + state["embeddings.position_embedding.weight"]
    n = 0
    while f"encoder.layers.{n}.layer_norm1.weight" in state:
        pre = f"encoder.layers.{n}."
        y = ln(t, pre + "layer_norm1")
        q, k, v = (lin(y, pre + f"self_attn.{s}_proj").reshape(b, h * w, heads, -1).transpose(1, 2) for s in "qkv")
        attn = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
        t = t + lin(attn.transpose(1, 2).reshape(b, h * w, -1), pre + "self_attn.out_proj")
        t = t + lin(gelu_tanh(lin(ln(t, pre + "layer_norm2"), pre + "mlp.fc1")), pre + "mlp.fc2")
        n += 1
    return ln(t, "post_layernorm")


def vision_part(state):
    return {k[len("vision_model."):]: v for k, v in state.items()
            if k.startswith("vision_model.") and not k.startswith("vision_model.head.")}


# ---------------------------------------------------------------- SigLIP2 tower: loading


def test_tower_key_layout_is_hf_vision_model_without_head():
    keys = list(SigLIP2Tower(**TINY).state_dict())
    layer = ["layer_norm1.weight", "layer_norm1.bias"]
    layer += [f"self_attn.{p}_proj.{s}" for p in ("k", "v", "q", "out") for s in ("weight", "bias")]
    layer += ["layer_norm2.weight", "layer_norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias"]
    expected = ["embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
                "embeddings.position_embedding.weight"]
    expected += [f"encoder.layers.{n}.{k}" for n in range(2) for k in layer]
    expected += ["post_layernorm.weight", "post_layernorm.bias"]
    assert sorted(keys) == sorted(expected)


def test_tower_loads_hf_folder_strictly_and_matches_hf_math(hf_folder):
    full = random_full_state()
    tower = SigLIP2Tower(**TINY).load_pretrained(hf_folder)
    vision = vision_part(full)
    own = tower.state_dict()
    assert set(own) == set(vision)  # head, text tower and logits are not loaded
    for key, value in vision.items():
        assert torch.equal(own[key], value), key
    x = images()
    out = tower(x)
    assert out.shape == (2, 16, 16)
    torch.testing.assert_close(out, reference_tower(vision, x, heads=2, p=4), rtol=1e-5, atol=1e-5)


def test_tower_loads_plain_config_sharded_index_and_torch_file(tmp_path, hf_folder):
    full = random_full_state()
    reference = SigLIP2Tower(**TINY).load_pretrained(hf_folder)
    x = images()
    want = reference(x)
    # a plain vision config.json (no vision_config wrapper)
    plain = write_hf_folder(tmp_path / "plain", full, wrap=False)
    assert torch.equal(SigLIP2Tower(**TINY).load_pretrained(plain)(x), want)
    # a sharded folder: model.safetensors.index.json names a shard per key, the text tower in its own shard
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in full.items() if k.startswith("vision_model.")},
              "model-00002-of-00002.safetensors": {k: v for k, v in full.items()
                                                   if not k.startswith("vision_model.")}}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: v.contiguous() for k, v in part.items()}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps({"vision_config": TINY_HF}))
    (sharded / "model-00002-of-00002.safetensors").unlink()  # the text shard is never opened
    assert torch.equal(SigLIP2Tower(**TINY).load_pretrained(sharded)(x), want)
    # a torch file with the tower's own keys, and one with the full model's keys
    own = tmp_path / "tower.pt"
    head = {k[len("vision_model."):]: v for k, v in full.items() if k.startswith("vision_model.head.")}
    torch.save({**vision_part(full), **head}, own)  # head.* of a plain state dict is dropped too
    assert torch.equal(SigLIP2Tower(**TINY).load_pretrained(own)(x), want)
    whole = tmp_path / "full.pth"
    torch.save(full, whole)
    assert torch.equal(SigLIP2Tower(**TINY).load_pretrained(str(whole))(x), want)


@pytest.mark.parametrize("case", ["missing", "shape", "unexpected"])
def test_tower_refuses_a_bad_key_naming_path_and_key(tmp_path, case):
    full = random_full_state()
    key = "vision_model.encoder.layers.1.mlp.fc2.bias"
    if case == "missing":
        del full[key]
    elif case == "shape":
        full[key] = torch.zeros(17)
    else:
        key = "vision_model.encoder.layers.2.mlp.fc2.bias"  # a third layer in a two-layer tower
        full[key] = torch.zeros(16)
    folder = write_hf_folder(tmp_path / "bad", full)
    with pytest.raises(ConfigError) as err:
        SigLIP2Tower(**TINY).load_pretrained(folder)
    assert err.value.knob == "weights_path"
    message = str(err.value)
    assert str(folder) in message and key[len("vision_model."):] in message and "\n" not in message
    assert err.value.fix == "weights_path=<local folder of google/siglip2-so400m-patch16-naflex>"


def test_tower_refuses_missing_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (None, tmp_path / "nowhere", empty):
        with pytest.raises(ConfigError) as err:
            SigLIP2Tower(**TINY).load_pretrained(path)
        assert err.value.knob == "weights_path" and "nothing is downloaded" in str(err.value)
        assert "google/siglip2-so400m-patch16-naflex" in str(err.value)
        assert (str(path) if path is not None else "None") in str(err.value)
    with pytest.raises(ConfigError) as err:
        SigLIP2Teacher(tmp_path / "nowhere", **TINY)
    assert err.value.knob == "weights_path" and "not found" in str(err.value)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError) as err:
        SigLIP2Tower(**TINY).load_pretrained(broken)
    assert err.value.knob == "weights_path" and str(broken) in str(err.value)


@pytest.mark.parametrize("field, value, arg", [("num_attention_heads", 4, "heads"), ("hidden_size", 32, "width"),
                                               ("layer_norm_eps", 1e-5, "eps"), ("num_patches", 64, "num_patches")])
def test_tower_refuses_a_config_of_other_sizes(tmp_path, field, value, arg):
    folder = write_hf_folder(tmp_path / "other", random_full_state(), {**TINY_HF, field: value})
    with pytest.raises(ConfigError) as err:
        SigLIP2Tower(**TINY).load_pretrained(folder)
    assert err.value.knob == "weights_path"
    assert f"{field}={value!r}" in str(err.value) and f"{arg}=" in str(err.value) and str(folder) in str(err.value)


def test_tower_refuses_an_omitted_field_whose_hf_default_differs(tmp_path):
    # config.json omits HF defaults: no num_hidden_layers means 12, not this tower's 2
    vision = {k: v for k, v in TINY_HF.items() if k != "num_hidden_layers"}
    folder = write_hf_folder(tmp_path / "defaults", random_full_state(), vision)
    with pytest.raises(ConfigError, match="num_hidden_layers=12"):
        SigLIP2Tower(**TINY).load_pretrained(folder)


# ---------------------------------------------------------------- positions


def reference_resize(table, h, w):
    """HF's resize written as separable triangle-filter weights (antialiased bilinear, align_corners False)."""
    side = math.isqrt(table.shape[0])

    def axis(n):
        scale = side / n
        center = (torch.arange(n, dtype=torch.float64) + 0.5) * scale - 0.5
        weights = (1 - (torch.arange(side)[None] - center[:, None]).abs() / max(scale, 1.0)).clamp(min=0)
        return weights / weights.sum(-1, keepdim=True)

    grid = table.double().reshape(side, side, -1)
    return torch.einsum("ia,jb,abd->ijd", axis(h), axis(w), grid).reshape(h * w, -1).float()


def test_position_resize_identity_on_the_stored_grid_and_hf_weights_elsewhere():
    table = torch.randn(16, 8)
    assert torch.equal(resize_positions(table, (4, 4)), table)  # exact, not merely close
    for grid in [(3, 5), (2, 2), (8, 6), (4, 7)]:
        torch.testing.assert_close(resize_positions(table, grid), reference_resize(table, *grid), rtol=0, atol=1e-6)
    # bf16 tables are resized in float32 and cast back
    assert resize_positions(table.bfloat16(), (3, 5)).dtype == torch.bfloat16


def test_tower_on_another_grid_uses_resized_positions(hf_folder):
    tower = SigLIP2Tower(**TINY).load_pretrained(hf_folder)
    x = torch.rand(1, 3, 12, 20) * 2 - 1
    emb = tower.embeddings(x)
    patches = x.reshape(1, 3, 3, 4, 5, 4).permute(0, 2, 4, 3, 5, 1).reshape(1, 15, 48)
    want = tower.embeddings.patch_embedding(patches) + reference_resize(tower.embeddings.position_embedding.weight,
                                                                         3, 5)
    torch.testing.assert_close(emb, want, rtol=1e-5, atol=1e-5)
    assert tower(x).shape == (1, 15, 16)
    with pytest.raises(ConfigError) as err:
        tower(torch.zeros(1, 3, 14, 16))
    assert err.value.knob == "image_size"


# ---------------------------------------------------------------- encoder and teacher


def test_encoder_frozen_embeddings_trainable_layers(hf_folder):
    enc = SigLIP2Encoder(**TINY).load_pretrained(hf_folder)
    assert enc.downsample == 4 and enc.out_channels == 16
    frozen = {k for k, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == {"embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
                      "embeddings.position_embedding.weight"}
    assert frozen <= set(enc.state_dict())  # saved: encoding needs them
    enc.train()
    assert enc.training and not enc.embeddings.training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = images()
    z = enc(x)
    assert z.shape == (2, 16, 4, 4) and z.is_contiguous()
    # the grid is the tower's raster token order
    torch.testing.assert_close(z.flatten(2).transpose(1, 2), SigLIP2Tower.forward(enc, x))
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-2, weight_decay=0.1)  # all parameters handed to the optimiser
    z.square().mean().backward()
    opt.step()
    after = enc.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == (key not in frozen), key
    assert all(p.grad is None for p in enc.embeddings.parameters())


def test_teacher_agrees_with_encoder_at_init_and_not_after_a_step(hf_folder):
    enc = SigLIP2Encoder(**TINY).load_pretrained(hf_folder)
    teacher = SigLIP2Teacher(hf_folder, **TINY)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    teacher.train()
    assert not teacher.training
    x = images()
    target = teacher(x)
    assert target.shape == (2, 16, 16)
    assert torch.equal(enc(x).flatten(2).transpose(1, 2), target)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-2)
    enc(x).square().mean().backward()
    opt.step()
    assert not torch.allclose(enc(x).flatten(2).transpose(1, 2), target, atol=1e-3)
    assert torch.equal(teacher(x), target)
    # gradients still flow through the frozen teacher to its input
    xg = x.clone().requires_grad_(True)
    teacher(xg).sum().backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------- decoder


def reference_decoder(dec, latent):
    """The official SigLIP2Decoder forward in explicit math on ``dec``'s weights: (image, distillation prediction)."""
    b, d, h, w = latent.shape
    x = latent.reshape(b, d, h * w).transpose(1, 2)
    x = torch.cat([dec.class_embedding.expand(b, 1, d), x], 1) + dec.positional_embedding
    x = F.layer_norm(x, (d,), dec.ln_pre.weight, dec.ln_pre.bias, 1e-5)
    pred = None
    for i, blk in enumerate(dec.transformer):
        y = F.layer_norm(x, (d,), blk.norm1.weight, blk.norm1.bias, 1e-5)
        qkv = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(b, -1, 3, dec.heads, d // dec.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // dec.heads), -1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(b, -1, d), blk.attn.proj.weight, blk.attn.proj.bias)
        y = F.layer_norm(x, (d,), blk.norm2.weight, blk.norm2.bias, 1e-5)
        x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(y)))
        if i == dec.distill_layer:
            pred = dec.distill_projector(x)[:, 1:]
    x = F.layer_norm(x[:, 1:], (d,), dec.ln_post.weight, dec.ln_post.bias, 1e-5)
    y = dec.ffn[0](x.transpose(1, 2).reshape(b, d, h, w))
    p, c = dec.patch_size, dec.out_channels
    y = y.reshape(b, p, p, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * p, w * p)
    return dec.conv_out(y), pred


def test_decoder_shapes_and_official_math():
    dec = ViTDecoder(**TINY_DEC)
    assert (dec.in_channels, dec.upsample, dec.out_channels) == (12, 4, 3)
    for p in dec.parameters():  # away from the init, so every weight shows in the output
        p.data.normal_(0, 0.3)
    latent = torch.randn(2, 12, 4, 4)
    image, pred = dec.forward_with_distillation(latent)
    assert image.shape == (2, 3, 16, 16) and pred.shape == (2, 16, 16)
    assert torch.equal(dec(latent), image)
    want_image, want_pred = reference_decoder(dec, latent)
    torch.testing.assert_close(image, want_image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred, want_pred, rtol=1e-4, atol=1e-4)
    wide = ViTDecoder(**{**TINY_DEC, "grid": (2, 3)})
    assert wide(torch.randn(1, 12, 2, 3)).shape == (1, 3, 8, 12)
    with pytest.raises(ConfigError) as err:
        dec(torch.randn(1, 12, 2, 3))
    assert err.value.knob == "grid"


def test_decoder_distill_layer_is_honoured():
    dec = ViTDecoder(**TINY_DEC)
    latent = torch.randn(2, 12, 4, 4)
    preds = []
    for layer in range(3):
        other = ViTDecoder(**{**TINY_DEC, "distill_layer": layer})
        other.load_state_dict(dec.state_dict())
        image, pred = other.forward_with_distillation(latent)
        assert torch.equal(image, dec(latent))  # the projector does not touch the image path
        torch.testing.assert_close(pred, reference_decoder(other, latent)[1], rtol=1e-4, atol=1e-4)
        preds.append(pred)
    assert not torch.allclose(preds[0], preds[1]) and not torch.allclose(preds[1], preds[2])


def test_decoder_without_projector_and_bad_arguments():
    dec = ViTDecoder(**{**TINY_DEC, "distill_dim": None, "distill_layer": 7})
    assert dec.distill_projector is None and not any(k.startswith("distill") for k in dec.state_dict())
    with pytest.raises(ConfigError) as err:
        dec.forward_with_distillation(torch.randn(1, 12, 4, 4))
    assert err.value.knob == "distill_dim"
    assert ViTDecoder(**{**TINY_DEC, "distill_dim": 0}).distill_projector is None
    with pytest.raises(ConfigError) as err:
        ViTDecoder(**{**TINY_DEC, "distill_layer": 3})
    assert err.value.knob == "distill_layer" and err.value.fix == "distill_layer=2"
    with pytest.raises(ConfigError) as err:
        ViTDecoder(**{**TINY_DEC, "heads": 5})
    assert err.value.knob == "heads"


def test_decoder_official_init_and_key_layout():
    dec = ViTDecoder(grid=4, width=64, depth=2, heads=4, patch_size=4, distill_dim=8, distill_layer=1,
                     distill_hidden=32)
    for name, module in dec.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            assert module.weight.abs().max() < 0.02 * 6, name
        if isinstance(module, torch.nn.LayerNorm):
            assert module.eps == 1e-5 and torch.equal(module.weight, torch.ones(64)), name
            assert torch.equal(module.bias, torch.zeros(64)), name
    fc1 = dec.transformer[0].mlp.fc1.weight
    assert fc1.shape == (256, 64) and 0.018 < fc1.std().item() < 0.022
    assert 0.9 / 8 < dec.positional_embedding.std().item() < 1.1 / 8  # width^-0.5 * randn
    assert 0.6 / 8 < dec.class_embedding.std().item() < 1.4 / 8  # likewise, 64 values only
    assert dec.positional_embedding.shape == (17, 64)
    keys = set(dec.state_dict())
    assert {"class_embedding", "positional_embedding", "ln_pre.weight", "transformer.1.attn.qkv.weight",
            "transformer.1.attn.proj.bias", "transformer.0.norm1.weight", "transformer.0.mlp.fc1.weight",
            "transformer.0.mlp.fc2.bias", "ln_post.bias", "ffn.0.weight", "conv_out.weight",
            "distill_projector.0.weight", "distill_projector.2.weight", "distill_projector.4.bias"} <= keys
    official = {("clip_projector." + k[len("distill_projector."):] if k.startswith("distill_projector.") else k): v
                for k, v in dec.state_dict().items()}
    assert map_official_decoder_keys(official).keys() == keys
    ViTDecoder(grid=4, width=64, depth=2, heads=4, patch_size=4, distill_dim=8, distill_layer=1,
               distill_hidden=32).load_state_dict(map_official_decoder_keys(official), strict=True)


# ---------------------------------------------------------------- quantizer widths and the whole tokenizer


def test_binary_fsq_out_channels_and_official_linear_mapping():
    q = BinaryFSQ(16, bits=6, bound="official", out_channels=12)
    assert (q.latent_channels, q.out_channels) == (16, 12)
    z = torch.randn(2, 16, 4, 4)
    out = q(z)
    assert out.latent.shape == (2, 12, 4, 4) and out.bits.shape == (2, 4, 4, 6)
    torch.testing.assert_close(q.decode_bits(q.encode_bits(z)), out.latent)
    # the official in_proj / out_proj Linears load by a reshape (k, D) -> (k, D, 1, 1)
    in_proj, out_proj = torch.nn.Linear(16, 6), torch.nn.Linear(6, 12)
    q.proj_in.weight.data.copy_(in_proj.weight.reshape(6, 16, 1, 1))
    q.proj_in.bias.data.copy_(in_proj.bias)
    q.proj_out.weight.data.copy_(out_proj.weight.reshape(12, 6, 1, 1))
    q.proj_out.bias.data.copy_(out_proj.bias)
    tokens = z.flatten(2).transpose(1, 2)  # (B, L, D), the official layout
    torch.testing.assert_close(q.project_in(z).flatten(2).transpose(1, 2), in_proj(tokens))
    signs = q.quantize(q.project_in(z))
    torch.testing.assert_close(q(z).latent.flatten(2).transpose(1, 2), out_proj(signs.flatten(2).transpose(1, 2)))
    assert BinaryFSQ(16, bits=6).out_channels == 16
    with pytest.raises(ConfigError) as err:
        BinaryFSQ(16, bits=6, out_channels=0)
    assert err.value.knob == "out_channels"


def test_tokenizer_of_the_paper_parts(hf_folder):
    enc = SigLIP2Encoder(**TINY).load_pretrained(hf_folder)
    tok = Tokenizer(enc, BinaryFSQ(16, bits=5, bound="official", out_channels=12), ViTDecoder(**TINY_DEC))
    x = images()
    recon, out = tok(x)
    assert recon.shape == x.shape and out.bits.shape == (2, 4, 4, 5)
    bits = tok.encode_bits(x)
    torch.testing.assert_close(tok.decode_bits(bits, (4, 4)), recon)
    with pytest.raises(ConfigError) as err:
        Tokenizer(enc, BinaryFSQ(16, bits=5, out_channels=8), ViTDecoder(**TINY_DEC))
    assert err.value.knob == "latent_channels" and "quantizer (in 16, out 8)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Tokenizer(enc, BinaryFSQ(12, bits=5), ViTDecoder(**TINY_DEC))
    assert err.value.knob == "latent_channels" and "quantizer (12)" in str(err.value)


# ---------------------------------------------------------------- full sizes, on the meta device


def siglip2_vision_params(d, m, depth, patch, num_patches, channels=3, head=False):
    """Parameters of HF's Siglip2VisionTransformer, from its config fields alone."""
    def lin(i, o):
        return i * o + o
    layer = 2 * d + 4 * lin(d, d) + 2 * d + lin(d, m) + lin(m, d)
    total = lin(channels * patch * patch, d) + num_patches * d + depth * layer + 2 * d
    if head:  # probe, nn.MultiheadAttention (in_proj 3d x d, out_proj), layernorm, MLP
        total += d + 3 * d * d + 3 * d + lin(d, d) + 2 * d + lin(d, m) + lin(m, d)
    return total


def test_full_size_parameter_counts():
    with torch.device("meta"):
        tower = SigLIP2Tower()
        enc = SigLIP2Encoder()
        dec = ViTDecoder()
        dec_plain = ViTDecoder(distill_dim=None)
        fsq = BinaryFSQ(1152, bits=16, bound="official", out_channels=1024)
    count = sum(p.numel() for p in tower.parameters())
    # so400m/16 naflex: hidden 1152, intermediate 4304, 27 layers, patch 16, 256 positions
    assert count == siglip2_vision_params(1152, 4304, 27, 16, 256) == 412_649_712
    assert siglip2_vision_params(1152, 4304, 27, 16, 256, head=True) == 427_888_064  # HF's vision_model with head
    # the same formula gives timm's SigLIP so400m/14 vision tower with head, 427.68 M
    assert siglip2_vision_params(1152, 4304, 27, 14, 256, head=True) == 427_680_704
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 412_649_712 - 884_736 - 1152 - 294_912
    assert sum(p.numel() for p in dec.parameters()) == 312_020_948
    assert sum(p.numel() for p in dec_plain.parameters()) == 303_364_948
    assert sum(p.numel() for p in dec.distill_projector.parameters()) == 8_656_000
    assert sum(p.numel() for p in fsq.parameters()) == 1152 * 16 + 16 + 16 * 1024 + 1024
    assert dec.positional_embedding.shape == (257, 1024) and dec.ffn[0].weight.shape == (768, 1024, 1, 1)
