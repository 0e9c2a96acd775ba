"""Plain modules name their own arguments in errors; the config layer names the knob a user sets.

- every ``ConfigError(...)`` / ``check_int(...)`` (and every helper taking a ``knob``) in the plain
  packages names an argument (``bits``, ``""`` for the module as a whole), never a config path;
- ``renamed_for`` / ``knob_of`` turn an argument into the knob of the composed config, following
  interpolations (``bits: ${tokenizer.bits}`` -> ``tokenizer.bits``), in the fix too;
- ``instantiate_checked`` does it for constructors (nested nodes too), ``knob_names`` for the
  plain functions the wiring calls.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import yaml

from barlab.config.instantiate import instantiate_checked, knob_names, knob_of, renamed_by, renamed_for
from barlab.config.paths import CONFIG_DIR
from barlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PLAIN_PACKAGES = ("generator", "tokenizer", "data", "metrics")


# ----------------------------------------------------------------------------------- (a) the AST scan
def knob_takers(trees: dict[Path, ast.Module]) -> dict[str, int]:
    """``function name -> position of its knob argument``: ConfigError, check_int, and every function of
    the scanned files with a parameter named ``knob`` (``_check``, ``num_levels``, ``_weight``)."""
    takers = {"ConfigError": 0, "check_int": 1}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                if "knob" in names:
                    takers[node.name] = names.index("knob") - (names[0] in ("self", "cls"))
    return takers


def knob_offenders(trees: dict[Path, ast.Module]) -> list[str]:
    """``file:line: source`` of every call whose knob argument is a config path (has a dot or a slash)
    or is built (f-string, concatenation) instead of being a plain literal or a variable."""
    takers = knob_takers(trees)
    offenders = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name not in takers:
                continue
            position = takers[name]
            knob = next((k.value for k in node.keywords if k.arg == "knob"), None)
            if knob is None and len(node.args) > position and not isinstance(node.args[position], ast.Starred):
                knob = node.args[position]
            if knob is None or isinstance(knob, ast.Name):
                continue
            if isinstance(knob, ast.Constant) and isinstance(knob.value, str) and not re.search(r"[./]", knob.value):
                continue
            offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(knob)}")
    return offenders


def parse(source: str, name: str = "barlab/generator/example.py") -> dict[Path, ast.Module]:
    return {REPO / name: ast.parse(source)}


def test_plain_modules_name_their_own_arguments():
    trees = {path: ast.parse(path.read_text(), str(path))
             for package in PLAIN_PACKAGES for path in sorted((REPO / "barlab" / package).rglob("*.py"))}
    assert len(trees) > 40
    offenders = knob_offenders(trees)
    assert not offenders, "knob arguments naming config paths:\n" + "\n".join(offenders)


def test_the_scan_finds_config_paths_in_every_form():
    source = '''
def _check(ok, knob, message, fix):
    pass

class Head:
    def check(self, value, knob):
        pass

    def __init__(self, bits, width):
        check_int(bits, "tokenizer.bits", fix="tokenizer.bits=16")
        raise ConfigError("head.mlp_ratio", "must be positive")
        raise ConfigError(knob="tokenizer/quantizer", message="x")
        raise ConfigError(f"data.source.{name}", "x")
        _check(False, "generator.backbone." + "width", "x", "y")
        self.check(width, "head.width")
        check_int(bits, "bits", fix="bits=16")
        raise ConfigError("", "the module as a whole")
        raise ConfigError(name, "a variable")
'''
    found = knob_offenders(parse(source))
    assert [line.split(": ", 1)[1] for line in found] == [
        "'tokenizer.bits'", "'head.mlp_ratio'", "'tokenizer/quantizer'", "f'data.source.{name}'",
        "'generator.backbone.' + 'width'", "'head.width'"]
    assert all(line.startswith("barlab/generator/example.py:") for line in found)


# ------------------------------------------------------------------ (b) renamed_for / knob_of on a config
def raw_interpolation(group_file: Path, key: str) -> str | None:
    """The knob ``key`` of a group's YAML is interpolated from (``${generator.head_width}`` ->
    ``generator.head_width``), or None when it holds a plain value."""
    value = yaml.safe_load(group_file.read_text()).get(key)
    match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    return match.group(1) if match else None


def test_knob_of_follows_interpolations(compose_train):
    cfg = compose_train(["head=mbm"])
    quantizer = cfg.tokenizer.quantizer
    assert knob_of(quantizer, "tokenizer.quantizer", "bits") == "tokenizer.bits"
    assert knob_of(quantizer, "tokenizer.quantizer", "bound") == "tokenizer.quantizer.bound"
    assert knob_of(cfg.tokenizer.decoder, "tokenizer.decoder", "width") == "tokenizer.encoder.width"
    expected = raw_interpolation(CONFIG_DIR / "head" / "mbm.yaml", "width") or "head.width"
    assert knob_of(cfg.head, "head", "width") == expected


def test_renamed_for_names_the_knob_a_user_sets(compose_train):
    cfg = compose_train(["head=mbm"])
    err = renamed_for(ConfigError("bits", "must be a positive integer, got 0", fix="bits=16"),
                      cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert str(err) == "tokenizer.bits: must be a positive integer, got 0 (fix: tokenizer.bits=16)"

    expected = raw_interpolation(CONFIG_DIR / "head" / "mbm.yaml", "width") or "head.width"
    err = renamed_for(ConfigError("width", "must be a positive integer, got 0", fix="width=2048"), cfg.head, "head")
    assert err.knob == expected and err.fix == f"{expected}=2048"

    whole = ConfigError("", "linear softmax over 2^40 codes does not fit", fix="head=mbm (or head=bitwise)")
    err = renamed_for(whole, cfg.head, "head")
    assert str(err) == "head: linear softmax over 2^40 codes does not fit (fix: head=mbm (or head=bitwise))"

    dotted = ConfigError("data.image_size", "must be even", fix="data.image_size=32")
    assert renamed_for(dotted, cfg.head, "head") is dotted
    stranger = ConfigError("no_such_argument", "x", fix="no_such_argument=1")
    assert renamed_for(stranger, cfg.head, "head") is stranger
    # an argument the caller handed in is the caller's to name
    given = ConfigError("bits_per_step", "x", fix="bits_per_step=16")
    assert renamed_for(given, cfg.head, "head", passed={"bits_per_step"}) is given
    assert renamed_for(given, cfg.head, "head").knob == "head.bits_per_step"


def test_renamed_for_renames_the_other_arguments_in_the_fix(compose_train):
    cfg = compose_train(["experiment=smoke"])
    err = renamed_for(ConfigError("heads", "2D RoPE needs head_dim divisible by 4", fix="rope=false"),
                      cfg.generator.backbone, "generator.backbone")
    assert err.knob == "generator.backbone.heads" and err.fix == "generator.backbone.rope=false"


def test_instantiate_checked_names_the_knob_in_one_line(compose_train):
    cfg = compose_train(["experiment=smoke", "tokenizer.bits=0"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.tokenizer.quantizer, "tokenizer.quantizer")
    assert str(err.value) == "tokenizer.bits: must be a positive integer, got 0 (fix: tokenizer.bits=16)"

    cfg = compose_train(["experiment=smoke", "generator.backbone.width=24", "generator.backbone.heads=4"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        instantiate_checked(cfg.generator.backbone, "generator.backbone", bits_per_step=16, grid=(4, 4),
                            num_classes=4)
    assert err.value.knob == "generator.backbone.heads" and err.value.fix == "generator.backbone.rope=false"


def test_instantiate_checked_renames_against_the_nested_node_that_failed(compose_train):
    cfg = compose_train(["experiment=smoke", "data.source.num_train=-1"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.data, "data")
    assert str(err.value) == "data.source.num_train: must be >= 0, got -1 (fix: data.source.num_train=4)"


def test_instantiate_checked_leaves_the_given_arguments_to_the_caller(compose_train):
    cfg = compose_train(["experiment=smoke"])
    with pytest.raises(ConfigError) as err, torch.device("meta"):
        instantiate_checked(cfg.generator.backbone, "generator.backbone", bits_per_step=0, grid=(4, 4),
                            num_classes=4)
    assert err.value.knob == "bits_per_step"
    with pytest.raises(ConfigError) as err, torch.device("meta"), knob_names(bits_per_step="tokenizer.bits"):
        instantiate_checked(cfg.generator.backbone, "generator.backbone", bits_per_step=0, grid=(4, 4),
                            num_classes=4)
    assert str(err.value) == "tokenizer.bits: must be a positive integer, got 0 (fix: tokenizer.bits=16)"


# ------------------------------------------------------------------------------------ (c) knob_names
def test_knob_names_renames_an_error_naming_a_given_argument():
    from barlab.generator.token_shuffle import check_shuffle

    with pytest.raises(ConfigError) as err, knob_names(p="generator.token_shuffle"):
        check_shuffle((16, 16), 3)
    assert str(err.value) == ("generator.token_shuffle: factor 3 must divide the token grid 16x16 "
                              "(fix: generator.token_shuffle=1)")
    with pytest.raises(ConfigError) as err:  # without it: the function's own argument
        check_shuffle((16, 16), 3)
    assert err.value.knob == "p" and err.value.fix == "p=1"


def test_knob_names_takes_a_mapping_with_the_module_as_a_whole():
    with pytest.raises(ConfigError) as err, knob_names({"": "metrics.backend"}, path="metrics.inception.path"):
        raise ConfigError("", "the standard FID Inception is not installed", fix="pip install it (or path=/x.pt)")
    assert str(err.value) == ("metrics.backend: the standard FID Inception is not installed "
                              "(fix: pip install it (or metrics.inception.path=/x.pt))")


def test_knob_names_renames_every_given_argument_in_the_fix():
    names = {"weights_path": "tokenizer.loss.perceptual.weights_path", "weight": "tokenizer.loss.perceptual.weight"}
    with pytest.raises(ConfigError) as err, knob_names(names):
        raise ConfigError("weights_path", "None not found", fix="weight=0 or a path")
    assert err.value.knob == "tokenizer.loss.perceptual.weights_path"
    assert err.value.fix == "tokenizer.loss.perceptual.weight=0 or a path"
    assert renamed_by(ConfigError("other", "x", fix="weight=0"), names).fix == "weight=0"


def test_knob_names_lets_everything_else_through_unchanged():
    for error in (ConfigError("data.image_size", "x", fix="data.image_size=32"), ConfigError("q", "x"),
                  ValueError("not a config error")):
        with pytest.raises(type(error)) as err, knob_names(p="generator.token_shuffle", image_size="data.image_size"):
            raise error
        assert err.value is error
    with knob_names(p="generator.token_shuffle"):  # nothing raised: nothing to do
        pass


def test_knob_names_nest_the_innermost_first():
    with pytest.raises(ConfigError) as err, knob_names(shards_dir="data.shards_dir"):
        with knob_names(shards_dir="generator.data.shards_dir"):
            raise ConfigError("shards_dir", "holds no token shards", fix="shards_dir=/path")
    assert str(err.value) == "generator.data.shards_dir: holds no token shards (fix: generator.data.shards_dir=/path)"
