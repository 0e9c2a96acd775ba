"""Continuous tokens end to end: the KL tokenizer's scaled latents, their float16 token shards, the backbone's
linear input projection (teacher forcing == KV cache, p = 1 and 2), the stage's refusals, and a short run of
the generator stage's pieces with a stand-in continuous head (``MSEHead``, a regression head).

The discrete path is pinned by digests recorded with the code before continuous tokens existed (same torch):
the state dict of a seeded discrete backbone, and the bytes of a discrete pretokenization.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from torch import nn

from barlab.data import ImageShardDataModule, SyntheticSource
from barlab.data.pretokenize import pretokenize
from barlab.data.token_datamodule import TokenShardDataModule
from barlab.data.token_shards import pack_f16, unpack_f16, write_token_shards
from barlab.errors import ConfigError
from barlab.generator.backbone import ARBackbone
from barlab.generator.heads import Head, HeadOutput
from barlab.generator.image_generator import generate_images, load_generator, save_generator
from barlab.generator.sampler import ARSampler
from barlab.generator.token_shuffle import shuffle, unshuffle
from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, KLLatent, Tokenizer
from barlab.tokenizer.checkpoint import build_tokenizer, load_tokenizer, save_tokenizer

C = 4  # KL latent channels
KL_TOKENIZER = {"encoder": {"_target_": "barlab.tokenizer.ConvEncoder", "in_channels": 3, "width": 8, "depth": 1,
                            "downsample": 4, "out_channels": 8},
                "quantizer": {"_target_": "barlab.tokenizer.KLLatent", "latent_channels": 8, "channels": C},
                "decoder": {"_target_": "barlab.tokenizer.ConvDecoder", "out_channels": 3, "width": 8, "depth": 1,
                            "upsample": 4, "in_channels": 8}}
BITS_TOKENIZER = {**KL_TOKENIZER, "quantizer": {"_target_": "barlab.tokenizer.BinaryFSQ", "latent_channels": 8,
                                                 "bits": 5}}


class MSEHead(Head):
    """Stand-in continuous head: a linear regression of the token, Gaussian noise of std ``temperature``.
    Other keyword arguments are ignored, so that ``head=linear head._target_=<this class>`` builds it."""

    token_type = "continuous"

    def __init__(self, cond_dim: int, bits_per_step: int, **_ignored):
        super().__init__(cond_dim, bits_per_step)
        self.proj = nn.Linear(cond_dim, bits_per_step)

    def loss(self, cond: torch.Tensor, tokens: torch.Tensor) -> HeadOutput:
        self._check_inputs(cond, tokens)
        loss = F.mse_loss(self.proj(cond.float()), tokens.float())
        return HeadOutput(loss=loss, bit_accuracy=torch.zeros((), device=cond.device))

    @torch.no_grad()
    def sample(self, cond, uncond, guidance, temperature=1.0, generator=None):
        mean = self._guided(self.proj, cond, uncond, guidance)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + temperature * noise


def kl_tokenizer(seed: int = 0) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(ConvEncoder(3, width=8, depth=1, downsample=4, out_channels=8), KLLatent(8, channels=C),
                     ConvDecoder(3, width=8, depth=1, upsample=4, in_channels=8)).eval()


def image_batches(seed: int = 1, batches: int = 3, size: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(8, 3, size, size, generator=gen) * 2 - 1 for _ in range(batches)]


def shard_images(tmp_path: Path, num_train: int = 12, num_val: int = 4) -> ImageShardDataModule:
    return ImageShardDataModule(str(tmp_path / "img"), SyntheticSource(num_train=num_train, num_val=num_val,
                                                                       image_size=16, num_classes=4),
                                image_size=16, batch_size=4, num_workers=0, shard_size=6)


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (the zero-initialised adaLN gates too), so every weight matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


# ------------------------------------------------------------------------------------------- the latent scale
def test_latent_scale_gives_unit_std_and_decode_tokens_inverts_it():
    tokenizer, batches = kl_tokenizer(), image_batches()
    scale = tokenizer.estimate_latent_scale(batches)
    assert scale == tokenizer.latent_scale and scale > 0
    tokens = torch.cat([tokenizer.encode_tokens(x) for x in batches])              # (24, 16, C)
    assert tokens.shape == (24, 16, C)
    # unit std over every value of the images it was estimated on (estimate in float64; tokens fp32)
    assert abs(float(tokens.double().std()) - 1.0) < 1e-5
    # the tokens are the posterior mean (raster order) times the scale
    mean = tokenizer.quantizer.encode_mean(tokenizer.encoder(batches[0]))
    assert torch.allclose(tokens[:8], mean.permute(0, 2, 3, 1).reshape(8, 16, C) * scale, rtol=0, atol=1e-6)
    # tokens -> image undoes the scale: the tokenizer's own (eval, deterministic) reconstruction, up to fp32
    # rounding of the multiply / divide by the scale carried through the decoder (|recon| <= ~2, so 1e-5)
    for x in batches:
        recon, _ = tokenizer(x)
        decoded = tokenizer.decode_tokens(tokenizer.encode_tokens(x), (4, 4))
        assert torch.allclose(decoded, recon, rtol=1e-5, atol=1e-5)
    # max_images counts images, not batches
    again = kl_tokenizer()
    means = torch.cat([again.encode_mean(x) for x in batches])[:10]
    assert again.estimate_latent_scale(batches, max_images=10) == pytest.approx(1.0 / float(means.double().std()),
                                                                                 rel=1e-12)


def test_the_scale_is_stored_in_tokenizer_pt_and_an_old_file_loads_without_it(tmp_path):
    tokenizer = kl_tokenizer()
    tokenizer.estimate_latent_scale(image_batches())
    cfg = OmegaConf.create(KL_TOKENIZER)
    facts = {"grid": [4, 4], "bits_per_token": 16 * C, "is_discrete": False}
    save_tokenizer(tmp_path / "new.pt", cfg, tokenizer.state_dict(), 16, 3,
                   extra={**facts, "latent_scale": tokenizer.latent_scale})
    save_tokenizer(tmp_path / "old.pt", cfg, tokenizer.state_dict(), 16, 3, extra=facts)
    loaded, info = load_tokenizer(tmp_path / "new.pt")
    assert loaded.latent_scale == tokenizer.latent_scale == info["latent_scale"]
    x = image_batches(seed=5, batches=1)[0]
    assert torch.equal(loaded.encode_tokens(x), tokenizer.encode_tokens(x))
    old, info = load_tokenizer(tmp_path / "old.pt")        # loads: weights and reconstructions as before
    assert old.latent_scale is None and "latent_scale" not in info
    assert torch.equal(old(x)[0], tokenizer(x)[0])
    with pytest.raises(ConfigError) as err:                # continuous tokens: refused in one line
        old.encode_tokens(x)
    assert "\n" not in str(err.value) and str(err.value).startswith("latent_scale:")
    assert "stage=tokenizer" in str(err.value)
    # a discrete tokenizer's tokens are bits: the continuous view is refused, and it has no scale
    bits_tok = build_tokenizer(BITS_TOKENIZER).eval()
    with pytest.raises(ConfigError, match="^quantizer: .*discrete"):
        bits_tok.encode_tokens(x)
    assert bits_tok.latent_scale is None


def test_the_tokenizer_stage_estimates_the_scale_on_training_images(tmp_path):
    from barlab.pipeline.tokenizer_stage import continuous_latent_scale

    images, tokenizer = shard_images(tmp_path), kl_tokenizer()
    cfg = OmegaConf.create({"tokenizer": {**KL_TOKENIZER, "latent_scale_images": 10}})
    entry = continuous_latent_scale(cfg, images, tokenizer.state_dict(), torch.device("cpu"))
    first = torch.cat([b["image"] for b in images.eval_dataset("train", 10)])
    assert first.shape[0] == 10
    tokens = tokenizer.encode_mean(first) * entry["latent_scale"]
    assert abs(float(tokens.double().std()) - 1.0) < 1e-5
    discrete = OmegaConf.create({"tokenizer": BITS_TOKENIZER})
    assert continuous_latent_scale(discrete, images, build_tokenizer(BITS_TOKENIZER).state_dict(), "cpu") == {}


# ---------------------------------------------------------------------------------------------- token shards
def test_pretokenize_writes_float16_tokens_and_the_datamodule_reads_them_back(tmp_path):
    images, tokenizer = shard_images(tmp_path), kl_tokenizer()
    tokenizer.estimate_latent_scale(image_batches())
    manifest = pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=4, shard_size=12)
    assert manifest["token_type"] == "continuous" and manifest["token_channels"] == C
    assert manifest["bits"] == 16 * C and manifest["seq_len"] == 16 and manifest["grid"] == [4, 4]
    assert manifest["channels"] == 3                       # still the images' channels
    val = torch.cat([b["image"] for b in images.eval_dataset("val")])
    want = tokenizer.encode_tokens(val).half().float()     # fp16 rounding of the tokens
    data = TokenShardDataModule(str(tmp_path / "tokens"), batch_size=4, num_workers=0)
    batches = list(data.val_dataloader())
    assert set(batches[0]) == {"tokens", "label", "skipped"}
    got = torch.cat([b["tokens"] for b in batches])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert not torch.equal(got, tokenizer.encode_tokens(val))  # they were rounded
    # a training sample's mirror view is the flipped image's tokens, 2 bytes per value
    first = torch.cat([b["image"] for b in images.eval_dataset("train", 1)])
    with tarfile.open(tmp_path / "tokens" / "train-000000.tar") as tar:
        payload = tar.extractfile("train_0000000_1.f16").read()
    assert len(payload) == 2 * 16 * C
    flipped = tokenizer.encode_tokens(first.flip(-1))[0].half().float().numpy()
    assert np.array_equal(unpack_f16(payload, 16, C), flipped)
    train = next(iter(data.train_dataloader()))
    assert train["tokens"].shape == (4, 16, C) and train["tokens"].dtype == torch.float32


def test_write_token_shards_round_trips_continuous_values(tmp_path):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((6, 3)).astype(np.float32) * 3 for _ in range(5)]
    assert np.array_equal(unpack_f16(pack_f16(values[0]), 6, 3), values[0].astype(np.float16).astype(np.float32))
    meta = {"seq_len": 6, "bits": 48, "token_type": "continuous", "token_channels": 3, "grid": [2, 3],
            "num_classes": 2}
    write_token_shards({"val": [(f"v{i}", v, i % 2) for i, v in enumerate(values)],
                        "train": [(f"t{i}", v, 0) for i, v in enumerate(values)]}, str(tmp_path / "t"), meta)
    data = TokenShardDataModule(str(tmp_path / "t"), batch_size=5, num_workers=0)
    batch = next(iter(data.val_dataloader()))
    assert torch.equal(batch["tokens"], torch.from_numpy(np.stack(values).astype(np.float16).astype(np.float32)))
    assert batch["label"].tolist() == [0, 1, 0, 1, 0]


# Recorded with the code before continuous tokens, for the pretokenization below (name -> sha256).
DISCRETE_DIGESTS = {
    "manifest.json": "10779d0d48f7337c4ad6859feaad16bc694f9eee7833acb5f605c4b58089cacb",
    "train-000000.tar": "f1927dff0df0347fe14374903ed17b0b4d73ea591e96a18f575ecafcfa76776f",
    "train-000001.tar": "f9cfa2f96d293b93e9901debfc92de99e18a371a026122da5c688ecd28d3f1e8",
    "val-000000.tar": "cf56bb92b73e912a697c6550e7550a8e46efea8e54e520417a9fa2373f8a93e3",
}


def test_discrete_pretokenization_is_byte_for_byte_unchanged(tmp_path):
    images = shard_images(tmp_path)
    torch.manual_seed(0)
    tokenizer = Tokenizer(ConvEncoder(3, width=8, depth=1, downsample=4, out_channels=8), BinaryFSQ(8, bits=5),
                          ConvDecoder(3, width=8, depth=1, upsample=4, in_channels=8)).eval()
    manifest = pretokenize(tokenizer, images, str(tmp_path / "tokens"), batch_size=4, shard_size=12)
    assert "token_type" not in manifest and "token_channels" not in manifest
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "tokens").iterdir())}
    assert got == DISCRETE_DIGESTS
    batch = next(iter(TokenShardDataModule(str(tmp_path / "tokens"), batch_size=4, num_workers=0).val_dataloader()))
    assert set(batch) == {"bits", "label", "skipped"}


# ------------------------------------------------------------------------------------------------- backbone
def tiny_backbone(bits_per_step: int, grid: tuple[int, int], **kwargs) -> ARBackbone:
    return ARBackbone(bits_per_step=bits_per_step, grid=grid, num_classes=4, width=32, depth=2, heads=2,
                      cond_dim=16, class_repeat=2, **kwargs)


@pytest.mark.parametrize("p", [1, 2])
def test_continuous_kv_cache_gives_the_teacher_forcing_conditions(p):
    torch.manual_seed(0)
    grid = (4, 4)
    backbone = randomized(tiny_backbone(C * p * p, (4 // p, 4 // p), token_type="continuous"), seed=3)
    assert not hasattr(backbone, "bit_embed") and backbone.token_embed.in_features == C * p * p
    tokens = torch.randn(3, 16, C, generator=torch.Generator().manual_seed(1))
    steps = shuffle(tokens, grid, p)                                  # float channels: p x p x c per step
    assert steps.shape == (3, 16 // (p * p), C * p * p) and torch.equal(unshuffle(steps, grid, p), tokens)
    assert torch.equal(steps[0, 0, :C], tokens[0, 0]) and torch.equal(steps[0, 0, -C:], tokens[0, (p - 1) * 5])
    labels = torch.tensor([0, 3, 4])                                  # 4: the null class
    with torch.no_grad():
        full = backbone(steps, labels)                                # (3, L', cond_dim)
        cache = backbone.new_cache(3)
        conds = [backbone.prefill(labels, cache)]
        for t in range(backbone.seq_len - 1):
            conds.append(backbone.step(steps[:, t], t, cache))
        assert backbone.step(steps[:, -1], backbone.seq_len - 1, cache) is None
    cached = torch.stack(conds, dim=1)
    assert cached.shape == full.shape == (3, backbone.seq_len, 16)
    assert torch.allclose(cached, full, rtol=1e-4, atol=1e-5)
    # the tokens matter: another last-but-one token changes the last condition
    other = steps.clone()
    other[:, -2] += 1.0
    assert not torch.allclose(backbone(other, labels)[:, -1], full[:, -1])


@pytest.mark.parametrize("p", [1, 2])
def test_the_sampler_draws_continuous_tokens_the_same_with_and_without_the_cache(p):
    torch.manual_seed(0)
    backbone = randomized(tiny_backbone(C * p * p, (4 // p, 4 // p), token_type="continuous"), seed=4)
    head = randomized(MSEHead(16, C * p * p), seed=5)
    sampler = ARSampler(backbone, head)
    labels = torch.tensor([0, 1, 2])
    runs = [sampler.sample(labels, guidance=2.0, generator=torch.Generator().manual_seed(7), use_kv_cache=kv)
            for kv in (True, False)]
    assert runs[0].dtype == torch.float32 and runs[0].shape == (3, 16 // (p * p), C * p * p)
    assert torch.allclose(runs[0], runs[1], rtol=1e-4, atol=1e-4)
    assert not torch.all((runs[0] == 0) | (runs[0] == 1))           # real values, not bits
    # a continuous head on a bit backbone is refused
    with pytest.raises(ValueError, match="continuous tokens"):
        ARSampler(tiny_backbone(C * p * p, (4 // p, 4 // p)), head)


# Recorded with the code before continuous tokens: torch.manual_seed(0); tiny_backbone(6, (4, 4)).
DISCRETE_BACKBONE_DIGEST = "e3a32e4936a6e82d14d1ae8853a4bd4f84cf4ef409d6a7cf836d57416f1daa74"


def test_a_discrete_backbone_is_built_as_before():
    torch.manual_seed(0)
    backbone = tiny_backbone(6, (4, 4))
    state = backbone.state_dict()
    assert backbone.token_type == "discrete" and not hasattr(backbone, "token_embed")
    assert [k for k in state if "embed" in k] == ["bit_embed.table.weight", "bit_embed.proj.weight",
                                                  "bit_embed.proj.bias"]
    assert len(state) == 44
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    assert digest.hexdigest() == DISCRETE_BACKBONE_DIGEST
    # the same seed, the same draws: an explicit token_type="discrete" is the default
    torch.manual_seed(0)
    again = tiny_backbone(6, (4, 4), token_type="discrete").state_dict()
    assert all(torch.equal(again[k], v) for k, v in state.items()) and list(again) == list(state)
    with pytest.raises(ConfigError, match="^token_type: "):
        tiny_backbone(6, (4, 4), token_type="float")


# ------------------------------------------------------------------------------------------------ the stage
def write_tokenizers(tmp_path: Path) -> dict[str, Path]:
    """tokenizer.pt files: ``kl`` (with its scale), ``kl_old`` (without), ``bits``."""
    kl = kl_tokenizer()
    kl.estimate_latent_scale(image_batches())
    continuous = {"grid": [4, 4], "bits_per_token": 16 * C, "is_discrete": False}
    paths = {"kl": save_tokenizer(tmp_path / "kl.pt", OmegaConf.create(KL_TOKENIZER), kl.state_dict(), 16, 3,
                                  extra={**continuous, "latent_scale": kl.latent_scale}),
             "kl_old": save_tokenizer(tmp_path / "kl_old.pt", OmegaConf.create(KL_TOKENIZER), kl.state_dict(), 16, 3,
                                      extra=continuous)}
    torch.manual_seed(0)
    bits = build_tokenizer(BITS_TOKENIZER)
    paths["bits"] = save_tokenizer(tmp_path / "bits.pt", OmegaConf.create(BITS_TOKENIZER), bits.state_dict(), 16, 3,
                                   extra={"grid": [4, 4], "bits_per_token": 5, "is_discrete": True})
    return paths


MSE_HEAD = {"_target_": "tests.test_continuous_tokens.MSEHead"}
BITWISE_HEAD = {"_target_": "barlab.generator.BitwiseHead"}


def test_the_stage_refuses_a_head_of_the_other_token_type(tmp_path):
    from barlab.pipeline.generator_stage import load_generator_tokenizer

    paths = write_tokenizers(tmp_path)

    def load(tokenizer: str, head: dict):
        return load_generator_tokenizer(OmegaConf.create({"tokenizer_ckpt": str(paths[tokenizer]), "head": head}),
                                        None)

    with pytest.raises(ConfigError) as err:                 # a bit head on continuous tokens
        load("kl", BITWISE_HEAD)
    assert str(err.value).startswith("head: ") and "(fix: head=diffusion" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:                 # a continuous head on bits
        load("bits", MSE_HEAD)
    assert str(err.value).startswith("tokenizer/quantizer: ")
    assert "(fix: tokenizer/quantizer=kl" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:                 # an old continuous file without its scale
        load("kl_old", MSE_HEAD)
    assert str(err.value).startswith("tokenizer_ckpt: ") and "latent_scale" in str(err.value)
    assert "\n" not in str(err.value)
    _, tokenizer, _ = load("kl", MSE_HEAD)                  # the matching pairs load
    assert not tokenizer.is_discrete and tokenizer.latent_scale is not None
    _, tokenizer, _ = load("bits", BITWISE_HEAD)
    assert tokenizer.is_discrete


def test_the_generator_stage_pieces_train_sample_save_and_load_continuous_tokens(tmp_path, compose_train):
    from barlab.pipeline.generator_stage import build_generator_module, load_generator_tokenizer, token_data

    paths = write_tokenizers(tmp_path)
    cfg = compose_train(["experiment=smoke", "stage=generator", f"tokenizer_ckpt={paths['kl']}",
                         "generator.token_shuffle=2", "generator.data.batch_size=4",
                         f"data.shards_dir={tmp_path / 'img'}"])
    with open_dict(cfg):
        cfg.head = MSE_HEAD
        cfg.data.source = {"_target_": "barlab.data.SyntheticSource", "num_train": 12, "num_val": 4,
                           "image_size": 16, "num_classes": 4}
        cfg.data.shard_size = 6
    tokenizer_file, tokenizer, info = load_generator_tokenizer(cfg, None)
    datamodule, manifest, _ = token_data(cfg, tokenizer, info, None)
    assert manifest["token_type"] == "continuous" and datamodule.continuous
    module = build_generator_module(cfg, tokenizer, info, manifest["num_classes"])
    assert module.backbone.token_type == "continuous" and module.head.bits_per_step == C * 4
    assert module.backbone.token_embed.in_features == C * 4 and module.backbone.seq_len == 4
    batch = next(iter(datamodule.train_dataloader()))
    out = module._loss(batch, None, batch["label"])        # p = 2: (4, 16, C) -> (4, 4, 4C) steps
    out.loss.backward()
    assert torch.isfinite(out.loss) and module.backbone.token_embed.weight.grad.abs().sum() > 0
    # regression target of the first AR step is the 2 x 2 block of the first tokens
    assert torch.equal(module.to_steps(batch["tokens"])[:, 0, :C], batch["tokens"][:, 0])
    labels = torch.tensor([0, 1, 2, 3])
    images = module.generate(labels, generator=torch.Generator().manual_seed(0), guidance=1.5)
    assert images.shape == (4, 3, 16, 16) and images.abs().max() <= 1
    save_generator(tmp_path / "generator.pt", cfg.generator.backbone, cfg.head, module.backbone, module.head,
                   tokenizer_file, grid=module.grid, token_shuffle=module.p, num_classes=module.num_classes,
                   sampling={"guidance": 1.5})
    loaded, info = load_generator(tmp_path / "generator.pt")
    assert info["token_type"] == "continuous" and loaded.backbone.token_type == "continuous"
    assert loaded.tokenizer.latent_scale == tokenizer.latent_scale
    again = loaded.generate(labels, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(again, images, atol=1e-5)
    # the x0 clamp is a stored sampling setting, as the guidance is
    save_generator(tmp_path / "clipped.pt", cfg.generator.backbone, cfg.head, module.backbone, module.head,
                   tokenizer_file, grid=module.grid, token_shuffle=module.p, num_classes=module.num_classes,
                   sampling={"guidance": 1.5, "clip_x0": 4.0, "per_class": 10})
    assert load_generator(tmp_path / "clipped.pt")[0].sampling == {"guidance": 1.5, "clip_x0": 4.0}
    # the same images through generate_images by hand: decode_tokens of the unshuffled samples
    steps = module.sampler.sample(labels, guidance=1.5, generator=torch.Generator().manual_seed(0))
    by_hand = tokenizer.decode_tokens(unshuffle(steps, (4, 4), 2), (4, 4)).clamp(-1, 1)
    assert torch.allclose(by_hand, images, atol=1e-5)
    assert torch.allclose(generate_images(module.sampler, tokenizer, (4, 4), 2, labels, guidance=1.5,
                                          generator=torch.Generator().manual_seed(0)), images, atol=1e-5)
