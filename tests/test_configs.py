"""Every config option composes and passes the checks; each quantizer trains a few steps."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from barlab.cli import CONFIG_DIR, check_group_overrides
from barlab.config_checks import check_config
from barlab.errors import ConfigError

GROUPS = ["data", "tokenizer", "tokenizer/quantizer", "generator", "head", "trainer", "logger", "callbacks",
          "experiment", "metrics"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_passes_checks(tmp_path, group, option, compose_train):
    overrides = [f"{group}={option}"]
    if option == "kl":  # a continuous latent is a tokenizer-only study: the generator needs bits
        overrides.append("stage=tokenizer")
    if option == "imagefolder":
        (tmp_path / "images" / "a").mkdir(parents=True)
        overrides.append(f"data.source.root={tmp_path / 'images'}")
    cfg = compose_train(overrides)
    check_config(cfg)
    assert cfg.tokenizer.quantizer._target_.startswith("barlab.tokenizer.")
    assert cfg.data.image_size % cfg.tokenizer.encoder.downsample == 0


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


@pytest.mark.parametrize("quantizer, bits_per_token", [("binary_fsq", 8), ("fsq", 10), ("kl", 64)])
def test_each_quantizer_trains_a_few_steps(tmp_path, quantizer, bits_per_token, compose_train):
    from barlab.train import run

    cfg = compose_train(["experiment=smoke", "stage=tokenizer", f"tokenizer/quantizer={quantizer}",
                                   "tokenizer.bits=8", "tokenizer.max_steps=3", "tokenizer.val_every=3"])
    body = run(cfg)
    assert body["bits_per_token"] == bits_per_token      # fsq [8,5,5,5]: ceil(log2 1000) = 10; kl: 4 ch x 16
    assert body["bits_per_image"] == 16 * bits_per_token  # 4x4 grid at 16 px, f=4
    assert body["train_steps"] == 3
    assert (tmp_path / "run" / "results.json").is_file()
    assert (len(body["bit_stats"].get("usage", [])) == 8) == (quantizer == "binary_fsq")


def test_fsdp_preset_shards_each_transformer_block():
    from hydra.utils import instantiate

    from barlab.cli import CONFIG_DIR
    from barlab.generator.blocks import Block

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp", "generator=bar_l"])
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy.kwargs["use_orig_params"] is True
    assert cfg.trainer.precision == "bf16-mixed" and cfg.generator.global_batch_size == 2048
