"""``tokenizer=bar_fsq_paper`` end to end on CPU at tiny widths, every loss term on.

The pretrained parts (SigLIP2, VGG16, LPIPS, ConvNeXt-S, DINO) are tiny random files in their real
formats (tests/tiny_pretrained.py), written to a temp folder and loaded from there.
"""

from __future__ import annotations

import csv

import pytest
import torch

from barlab.errors import ConfigError
from barlab.lightning.tokenizer_module import FROZEN_LOSS_NETS
from barlab.pipeline.preflight import check_config
from barlab.pipeline.run import run
from barlab.pipeline.tokenizer_stage import build_tokenizer_module
from barlab.tokenizer.checkpoint import load_tokenizer
from tests.tiny_pretrained import TINY_OVERRIDES, pretrained_overrides, write_tiny_pretrained

STEPS = 4
TERMS = ("train/l1", "train/l2", "train/perceptual", "train/distill", "train/gram", "train/gan_g", "train/disc")


@pytest.fixture
def tiny_paper(tmp_path, compose_train):
    """compose(extra overrides) -> the tiny paper tokenizer's config, its files written under tmp_path."""
    paths = write_tiny_pretrained(tmp_path / "pretrained")

    def compose(*extra):
        return compose_train([*TINY_OVERRIDES, *pretrained_overrides(paths), *extra])

    compose.paths = paths
    return compose


def logged_rows(run_dir) -> list[dict]:
    files = sorted(run_dir.rglob("tokenizer*/**/metrics.csv")) or sorted(run_dir.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {run_dir}"
    with open(files[0]) as f:
        return list(csv.DictReader(f))


def test_paper_tokenizer_trains_end_to_end_with_every_loss_term(tiny_paper, tmp_path):
    cfg = tiny_paper("stage=tokenizer", f"tokenizer.max_steps={STEPS}", f"tokenizer.val_every={STEPS}",
                     "tokenizer.loss.gan.start_step=1", "metrics.rfid.enabled=false", "trainer.log_every_n_steps=1")
    body = run(cfg)
    assert body["train_steps"] == STEPS
    assert body["bits_per_image"] == 4 * 4 * 8
    assert 0 < body["psnr"] < 60

    rows = logged_rows(tmp_path / "run")
    seen = {k for row in rows for k, v in row.items() if v not in ("", None)}
    assert set(TERMS) <= seen, f"loss terms not logged: {sorted(set(TERMS) - seen)}"
    # the GAN joins at step 1 (the tokenizer's step with its hinge term), the discriminator's first step
    # is the next batch (the official alternation, pinned step by step in test_gan_steps.py)
    assert next(row["step"] for row in rows if row.get("train/gan_g")) == "1"
    assert next(row["step"] for row in rows if row.get("train/disc")) == "2"
    for row in rows:
        if row.get("train/loss"):
            assert torch.isfinite(torch.tensor(float(row["train/loss"])))

    # the checkpoint holds the trained parts only: no frozen loss network, no frozen DINO
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "tokenizer" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    keys = ckpt["state_dict"].keys()
    assert not [k for k in keys if k.split(".")[0] in FROZEN_LOSS_NETS]
    assert any(k.startswith("discriminator.heads.") for k in keys)
    assert not [k for k in keys if k.startswith("discriminator.") and "heads." not in k]
    assert any(k.startswith("tokenizer.encoder.embeddings.") for k in keys)   # frozen, but needed to encode

    # tokenizer.pt rebuilds without any pretrained file and encodes to 8-bit tokens
    tokenizer, info = load_tokenizer(tmp_path / "run" / "tokenizer.pt")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    bits = tokenizer.encode_bits(images)
    assert bits.shape == (2, 16, 8) and set(bits.unique().tolist()) <= {0.0, 1.0}
    assert tokenizer.decode_bits(bits, (4, 4)).shape == (2, 3, 32, 32)


def test_encoder_starts_from_the_file_and_gets_a_tenth_of_the_learning_rate(tiny_paper):
    from barlab.tokenizer import SigLIP2Tower

    module = build_tokenizer_module(tiny_paper())
    reference = SigLIP2Tower(in_channels=3, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64, num_patches=16)
    reference.load_pretrained(tiny_paper.paths["siglip2"])
    for name, value in reference.state_dict().items():
        assert torch.equal(module.tokenizer.encoder.state_dict()[name], value), name

    groups = module.tokenizer_param_groups()
    encoder = {id(p) for p in module.tokenizer.encoder.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == encoder
    assert not encoder & {id(p) for p in groups[1]["params"]}
    frozen = [p for p in module.tokenizer.parameters() if not p.requires_grad]
    assert frozen and not {id(p) for p in frozen} & {id(p) for g in groups for p in g["params"]}
    tokenizer_opt, disc_opt = module.build_optimizers()
    assert [g["lr"] for g in tokenizer_opt.param_groups] == [pytest.approx(1e-5), pytest.approx(1e-4)]
    assert {id(p) for p in tokenizer_opt.param_groups[0]["params"]} == encoder
    assert {id(p) for g in disc_opt.param_groups for p in g["params"]} == \
        {id(p) for p in module.discriminator.parameters()}          # the heads; the frozen DINO is hidden


def test_the_loss_is_the_official_weighted_sum_of_its_terms(tiny_paper):
    """0.1 L1 + 1.0 L2 + 1.1 perceptual + 0.7 distillation + 10 Gram + 0.05 hinge, each term computed here
    from the parts on their own; the discriminator in eval mode so that its spectral norm does not move."""
    module = build_tokenizer_module(tiny_paper("tokenizer.loss.gan.start_step=0"))
    module.discriminator.eval()
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    torch.manual_seed(5)
    loss, logs, recon = module.autoencoder_loss(images, gan_on=True)
    with torch.no_grad():
        again, _, prediction = module.tokenizer.forward_with_distillation(images)
        terms = {"train/l1": (again - images).abs().mean(), "train/l2": (again - images).pow(2).mean(),
                 "train/perceptual": module.perceptual(again, images),
                 "train/distill": (prediction - module.teacher(images)).pow(2).mean(),
                 "train/gram": module.gram(again, images), "train/gan_g": -module.discriminator(again).mean()}
    weights = {"train/l1": 0.1, "train/l2": 1.0, "train/perceptual": 1.1, "train/distill": 0.7, "train/gram": 10.0,
               "train/gan_g": 0.05}
    assert torch.equal(recon.detach(), again)
    for name, value in terms.items():
        assert float(logs[name]) == pytest.approx(float(value), rel=1e-5), name
        assert float(value) != 0, name
    expected = sum(weights[name] * terms[name] for name in weights)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_frozen_parts_stay_frozen_through_a_step(tiny_paper):
    module = build_tokenizer_module(tiny_paper())
    frozen = {"teacher": module.teacher, "perceptual": module.perceptual, "gram": module.gram,
              "dino": module.discriminator.dino, "embeddings": module.tokenizer.encoder.embeddings}
    before = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in frozen.items()}
    groups = module.tokenizer_param_groups()
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    optimizer.param_groups[0]["lr"] *= module.encoder_lr_mult
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    recon, _, prediction = module.tokenizer.forward_with_distillation(images)
    loss = (module.recon_loss(recon, images)["loss"] + module.perceptual(recon, images)
            + torch.nn.functional.mse_loss(prediction, module.teacher(images)) + module.gram(recon, images)
            - module.discriminator(recon).mean())
    loss.backward()
    optimizer.step()
    for name, net in frozen.items():
        assert not any(p.requires_grad for p in net.parameters()), name
        assert all(torch.equal(before[name][k], v) for k, v in net.state_dict().items()), name
    assert not module.teacher.training and not module.perceptual.training and not module.gram.training


@pytest.mark.parametrize("name", ["siglip2", "vgg16", "lpips", "convnext_s", "dino"])
def test_a_missing_pretrained_file_is_refused_before_anything_is_built(tiny_paper, tmp_path, name):
    cfg = tiny_paper("stage=tokenizer", f"tokenizer.pretrained.{name}={tmp_path / 'nowhere.pth'}")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith(f"tokenizer.pretrained.{name}: ") and "\n" not in message
    assert "nowhere.pth' not found; download " in message


def test_a_file_only_a_disabled_part_uses_is_not_required(tiny_paper):
    cfg = tiny_paper("stage=tokenizer", "tokenizer.pretrained.dino=null", "tokenizer.loss.gan.weight=0")
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"^tokenizer\.pretrained\.dino: not set; download .*dino_vit_small"):
        check_config(tiny_paper("stage=tokenizer", "tokenizer.pretrained.dino=null"))
