"""Every config option composes and passes the checks; each quantizer trains a few steps."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from barlab.config.overrides import check_group_overrides
from barlab.config.paths import CONFIG_DIR
from barlab.errors import ConfigError
from barlab.pipeline.preflight import check_config, encoder_factor

GROUPS = ["data", "tokenizer", "tokenizer/quantizer", "generator", "head", "trainer", "logger", "callbacks", "ablation",
          "token_head",
          "experiment", "metrics"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_passes_checks(tmp_path, group, option, compose_train):
    overrides = [f"{group}={option}"]
    if option == "kl":  # continuous tokens: the generator models them with the diffusion head
        overrides.append("head=diffusion")
    if option == "diffusion":
        overrides.append("tokenizer/quantizer=kl")
    if option == "imagefolder":
        (tmp_path / "images" / "a").mkdir(parents=True)
        overrides.append(f"data.source.root={tmp_path / 'images'}")
    if option == "webdataset":  # its brace patterns must name files that exist (the checks read none of them)
        for split in ("train", "val"):
            for i in range(2):
                (tmp_path / f"imagenet-{split}-{i:06d}.tar").touch()
            overrides.append(f"data.{split}_urls='{tmp_path}/imagenet-{split}-{{000000..000001}}.tar'")
    if option == "bar_fsq_paper":  # its pretrained files must exist: tiny stand-ins, sized to match
        from tests.tiny_pretrained import TINY_OVERRIDES, pretrained_overrides, write_tiny_pretrained

        overrides = [*TINY_OVERRIDES, *pretrained_overrides(write_tiny_pretrained(tmp_path / "pretrained"))]
    cfg = compose_train(overrides)
    check_config(cfg)
    assert cfg.tokenizer.quantizer._target_.startswith("barlab.tokenizer.")
    assert cfg.data.image_size % encoder_factor(cfg.tokenizer) == 0


def test_bits_is_the_one_integer_that_sets_the_width(tmp_path, compose_train):
    cfg = compose_train(["tokenizer.bits=18"])
    assert cfg.tokenizer.quantizer.bits == 18
    yaml_text = "".join(p.read_text() for p in (CONFIG_DIR / "tokenizer").rglob("*.yaml"))
    assert "codebook_size" not in yaml_text  # derived, never written down


def test_group_override_precheck():
    check_group_overrides(["data=synthetic", "tokenizer/quantizer=fsq,kl", "experiment=smoke", "x.y=3"])
    with pytest.raises(ConfigError, match="tokenizer/quantizer: unknown option 'vq'"):
        check_group_overrides(["tokenizer/quantizer=vq"])
    with pytest.raises(ConfigError, match="tokenizer/quantizer=fsq"):
        check_group_overrides(["tokenizer.quantizer=fsq"])
    with pytest.raises(ConfigError, match=r"generator.head_width: has moved to head.width \(fix: head.width=512\)"):
        check_group_overrides(["generator.head_width=512"])
    with pytest.raises(ConfigError, match="fix: sampling.guidance=2,4"):
        check_group_overrides(["generator.sampling.guidance=2,4"])


@pytest.mark.parametrize("quantizer, bits_per_token", [("binary_fsq", 8), ("fsq", 10), ("kl", 64)])
def test_each_quantizer_trains_a_few_steps(tmp_path, quantizer, bits_per_token, compose_train):
    from barlab.train import run

    cfg = compose_train(["experiment=smoke", "stage=tokenizer", f"tokenizer/quantizer={quantizer}",
                                   "tokenizer.bits=8", "tokenizer.max_steps=3", "tokenizer.val_every=3"])
    body = run(cfg)
    assert body["bits_per_token"] == bits_per_token      # fsq [8,5,5,5]: ceil(log2 1000) = 10; kl: 4 ch x 16
    assert body["bits_per_image"] == 16 * bits_per_token  # 4x4 grid at 16 px, f=4
    assert body["train_steps"] == 3
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["status"] == "ok" and written["stage"] == "tokenizer"
    assert {k: written[k] for k in ("bits_per_token", "bits_per_image", "psnr", "train_steps")} == \
        {k: body[k] for k in ("bits_per_token", "bits_per_image", "psnr", "train_steps")}
    assert (len(body["bit_stats"].get("usage", [])) == 8) == (quantizer == "binary_fsq")


def test_fsdp_preset_shards_each_transformer_block():
    from hydra.utils import instantiate

    from barlab.config.paths import CONFIG_DIR
    from barlab.generator.transformer_block import Block
    from barlab.tokenizer.siglip2 import SigLIP2Layer
    from barlab.tokenizer.vit_decoder import DecoderBlock

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp", "generator=bar_l"])
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block, SigLIP2Layer, DecoderBlock}
    assert strategy.kwargs["use_orig_params"] is True
    assert cfg.trainer.precision == "bf16-mixed" and cfg.generator.global_batch_size == 2048


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_paper_tokenizer_composes_with_the_cluster_trainers_at_full_size(compose_train, trainer):
    """``tokenizer=bar_fsq_paper`` at ImageNet scale: every node resolves, the full-size tokenizer builds
    (on the meta device) with the published widths, and FSDP would wrap each of its transformer blocks."""
    import torch
    from hydra.utils import instantiate

    from barlab.tokenizer.checkpoint import build_tokenizer

    cfg = compose_train([f"trainer={trainer}", "tokenizer=bar_fsq_paper", "data=imagefolder", "stage=tokenizer",
                         "data.source.root=/imagenet", "data.image_size=256"])
    assert cfg.tokenizer.global_batch_size == 256 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.tokenizer.decoder.grid == 16 and cfg.tokenizer.quantizer.out_channels == 1024
    assert cfg.tokenizer.loss.distillation.teacher.width == 1152
    with torch.device("meta"):
        tokenizer = build_tokenizer(cfg.tokenizer)
    assert tokenizer.bits_per_image(256) == 16 * 16 * 16
    if trainer == "fsdp":
        classes = instantiate(cfg.trainer.strategy).kwargs["auto_wrap_policy"]._module_classes
        units = [m for m in tokenizer.modules() if isinstance(m, tuple(classes))]
        assert len(units) == 27 + 24


# ---------------------------------------------------------------- each option's effect on what is built

def _head(cfg, bits=16):
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=bits)


def _quantizer(cfg):
    from barlab.tokenizer.checkpoint import build_tokenizer

    return build_tokenizer(cfg.tokenizer).quantizer


def test_head_options_build_their_head(compose_train):
    from barlab.generator import BitwiseHead, LinearHead, MBMHead

    cfg = compose_train(["head=bitwise", "tokenizer.bits=12"])
    head = _head(cfg, 12)
    assert type(head) is BitwiseHead and head.bits_per_step == 12
    assert head.net.in_features == cfg.generator.backbone.cond_dim and head.net.out_features == 24
    cfg = compose_train(["head=linear"])
    head = _head(cfg, 10)
    assert type(head) is LinearHead and head.num_codes == 1024 and head.proj.out_features == 1024
    cfg = compose_train(["head=mbm", "head.width=48", "head.depth=3"])
    head = _head(cfg, 16)
    assert type(head) is MBMHead and head.width == 48 and len(head.blocks) == 3
    assert head.allocation == (2, 3, 5, 6)  # cosine over head.steps=4
    cfg = compose_train(["head=mbm", "generator=bar_b"])
    assert _head(cfg, 16).allocation == (2, 2, 5, 7)


def test_quantizer_and_tokenizer_options_build_their_bottleneck(compose_train):
    from barlab.tokenizer import FSQ, BinaryFSQ, KLLatent

    q = _quantizer(compose_train(["tokenizer/quantizer=binary_fsq", "tokenizer.bits=20"]))
    assert type(q) is BinaryFSQ and q.k == 20 and q.bound == "centred"
    assert q.proj_in.in_channels == 64 and q.proj_in.out_channels == 20
    q = _quantizer(compose_train(["tokenizer/quantizer=fsq"]))
    assert type(q) is FSQ and q.levels == [8, 5, 5, 5] and q.bits_per_token == 10
    q = _quantizer(compose_train(["tokenizer/quantizer=kl", "stage=tokenizer"]))
    assert type(q) is KLLatent and q.bits_per_token == 4 * 16 and q.proj_in.out_channels == 8  # mean + logvar
    assert q.kl_weight == 1e-6
    q = _quantizer(compose_train(["tokenizer/quantizer=kl", "stage=tokenizer", "tokenizer.quantizer.channels=6"]))
    assert q.bits_per_token == 6 * 16 and q.proj_in.out_channels == 12
    cfg = compose_train(["tokenizer=bar_fsq_256"])
    tokenizer = __import__("barlab.tokenizer.checkpoint", fromlist=["x"]).build_tokenizer(cfg.tokenizer)
    assert tokenizer.quantizer.latent_channels == 256 and tokenizer.grid_size(256) == (16, 16)


def test_trainer_options_set_accelerator_devices_and_strategy(compose_train):
    from hydra.utils import instantiate

    expected = {"cpu": ("cpu", 1, None, "auto"), "gpu": ("gpu", 1, None, "bf16-mixed"),
                "ddp": ("gpu", 8, "ddp", "bf16-mixed"), "ddp_cpu": ("cpu", 2, "ddp", "32-true"),
                "default": ("auto", 1, None, "auto")}
    for option, (accelerator, devices, strategy, precision) in expected.items():
        t = compose_train([f"trainer={option}"]).trainer
        assert (t.accelerator, t.devices, t.get("strategy"), t.precision) == (accelerator, devices, strategy,
                                                                             precision), option
    trainer = instantiate(compose_train(["trainer=cpu", "logger=none"]).trainer, logger=False,
                          precision="32-true")  # "auto" is resolved by barlab.pipeline.trainer, not Lightning
    assert type(trainer.accelerator).__name__ == "CPUAccelerator" and trainer.num_devices == 1


def test_logger_and_data_options_build_their_objects(compose_train, tmp_path):
    from hydra.utils import instantiate

    from barlab.data import FashionMNISTSource, SyntheticSource

    assert dict(compose_train(["logger=none"]).logger) == {}
    assert sorted(compose_train(["logger=tensorboard"]).logger) == ["csv", "tensorboard"]
    wandb = compose_train(["logger=wandb"]).logger
    assert sorted(wandb) == ["csv", "wandb"] and wandb.wandb.offline is True
    csv = instantiate(compose_train(["logger=csv"]).logger.csv)
    assert type(csv).__name__ == "CSVLogger" and csv.save_dir == str(tmp_path / "run")
    data = compose_train(["data=synthetic"]).data
    assert isinstance(instantiate(data.source), SyntheticSource) and data.channels == 3
    data = compose_train(["data=fashion_mnist"]).data
    assert data.source._target_ == "barlab.data.FashionMNISTSource" and data.channels == 1 and data.image_size == 32
    fm = instantiate(data.source)                     # building the source reads and downloads nothing yet
    assert type(fm) is FashionMNISTSource and fm.idx_dir is None and fm.allow_download is True
    assert fm.download_dir == str(tmp_path / "data" / "downloads" / "fashion_mnist")   # from paths.data_dir
    assert not (tmp_path / "data").exists()
    smoke = compose_train(["experiment=smoke"])
    assert (smoke.generator.backbone.width, smoke.data.image_size, smoke.trainer.accelerator) == (32, 16, "cpu")


# ---------------------------------------------------------------- the head's and the sampler's values, pinned

MBM = {"_target_": "barlab.generator.MBMHead", "width": 192, "depth": 2, "mlp_ratio": 2.6666666666666665,
       "allocation": None, "steps": 4, "mask_ratio_std": 0.8, "unmasked_weight": 0.1, "fourier_dim": 256,
       "mask_ratio_dist": "logit_normal", "mask_ratio_mean": 0.0, "full_mask_share": 0.0, "masked_fill": "mask"}
SAMPLING = {"guidance": 3.0, "schedule": "linear", "power": 1.0, "temperature": 1.0, "allocation": None,
            "clip_x0": None, "per_class": 10}
# generator preset -> (its MBM head's width, depth and stored allocation; its sampling settings)
PRESET_VALUES = {
    "tiny": (dict(width=192, depth=2, allocation=None), dict(guidance=3.0, temperature=1.0)),
    "bar_b": (dict(width=2048, depth=3, allocation=[2, 2, 5, 7]), dict(guidance=5.0, temperature=2.5)),
    "bar_b_p2": (dict(width=2048, depth=3, allocation=[16, 16, 16, 16]), dict(guidance=5.5, temperature=2.0)),
    "bar_b_p4": (dict(width=2048, depth=3, allocation=[64, 64, 64, 64]), dict(guidance=9.6, temperature=1.4)),
    "bar_l": (dict(width=2048, depth=3, allocation=[2, 2, 5, 7]), dict(guidance=5.3, temperature=3.0)),
}
OTHER_HEADS = {"bitwise": {"_target_": "barlab.generator.BitwiseHead", "hidden": None, "depth": 1},
               "linear": {"_target_": "barlab.generator.LinearHead", "max_memory_gb": 16, "batch_tokens": None}}


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


@pytest.mark.parametrize("preset", sorted(PRESET_VALUES))
def test_each_preset_gives_these_head_and_sampling_values(compose_train, preset):
    from barlab.pipeline.generator_stage import sampling_settings

    head, sampling = PRESET_VALUES[preset]
    cfg = compose_train([f"generator={preset}"])
    assert _plain(cfg.head) == {**MBM, **head}
    assert sampling_settings(cfg) == _plain(cfg.sampling) == {**SAMPLING, **sampling}
    assert "head_width" not in cfg.generator and "sampling" not in cfg.generator  # one place each
    for other, values in OTHER_HEADS.items():  # the preset's MBM head settings reach the MBM head only
        cfg = compose_train([f"generator={preset}", f"head={other}"])
        assert _plain(cfg.head) == values and _plain(cfg.sampling) == {**SAMPLING, **sampling}
    cfg = compose_train([f"generator={preset}", "head.width=512", "head.depth=1", "sampling.guidance=2.0"])
    assert (cfg.head.width, cfg.head.depth, cfg.sampling.guidance) == (512, 1, 2.0)  # the command line wins


def test_the_default_config_and_smoke_give_these_head_and_sampling_values(compose_train):
    cfg = compose_train([])
    assert _plain(cfg.head) == MBM and _plain(cfg.sampling) == SAMPLING
    smoke = compose_train(["experiment=smoke"])
    assert _plain(smoke.head) == {**MBM, "width": 32, "depth": 1} and _plain(smoke.sampling) == {**SAMPLING,
                                                                                                  "per_class": 2}
    for other, values in OTHER_HEADS.items():
        assert _plain(compose_train(["experiment=smoke", f"head={other}"]).head) == values
    # an experiment's head size over a preset's: BAR-B's allocation and sampling, the smoke head's size
    cfg = compose_train(["generator=bar_b", "experiment=smoke"])
    assert _plain(cfg.head) == {**MBM, "width": 32, "depth": 1, "allocation": [2, 2, 5, 7]}
    assert (cfg.sampling.guidance, cfg.sampling.temperature, cfg.sampling.per_class) == (5.0, 2.5, 2)


def test_a_run_recorded_before_the_head_size_and_sampling_moved_still_continues(compose_train):
    import json

    from barlab.runtime.run_state import RUN_FILE, RunState

    cfg = compose_train(["generator=bar_b"])
    state = RunState.open(cfg)
    old = state.record["recipe"]  # as recorded before the move: the preset's head size and sampling in generator
    old["generator"].update(head_width=2048, head_depth=3, sampling={"guidance": 5.0, "schedule": "linear",
                                                                     "temperature": 2.5, "allocation": [2, 2, 5, 7]})
    (state.run_dir / RUN_FILE).write_text(json.dumps(state.record))
    RunState.open(cfg)  # the same recipe
    with pytest.raises(ConfigError, match=r"head.width \(was 2048, now 512\)"):
        RunState.open(compose_train(["generator=bar_b", "head.width=512"]))
