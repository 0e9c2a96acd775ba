"""Official BAR generator weights -> barlab (``barlab.generator.official_checkpoint``, ``python -m barlab.convert``).

- Full size: the official key layouts of BAR-B, B/2, B/4, L (and L-512), recorded from the official code on the
  meta device (tests/fixtures/official_generator_keys.json), map onto the matching barlab preset and load
  strictly; a missing, extra or mis-shaped key is refused in one line naming it.
- Numbers: tiny official generators of each variant with their recorded outputs
  (tests/fixtures/official_generator/, written by the official code at faf903f; meta.json says how):
  converted, barlab's backbone gives the official conditions z, its MBM head the official logits, and its
  sampler the official bits exactly at the same seed, once the two places where the two samplers consume the
  torch RNG differently are lined up (see ``official_rng_order``).
- The CLI writes a generator.pt that ``barlab.sample``'s loader reads and samples the official bits from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import barlab.generator.heads.mbm as mbm
from barlab.errors import BarlabError, CheckpointError, ConfigError
from barlab.generator import ARBackbone, ARSampler, MBMHead
from barlab.generator.official_checkpoint import (
    official_generator_to_barlab,
    official_layout,
    read_official_geometry,
    rope_permutation,
)
from barlab.generator.token_shuffle import shuffle, unshuffle
from tests.helpers import error_lines, run_modules

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "official_generator"
# official config name -> barlab preset
PRESETS = {"bar_b": "bar_b", "bar_b_patch2": "bar_b_p2", "bar_b_patch4": "bar_b_p4", "bar_l": "bar_l"}
VARIANTS = ("b", "b_p2", "b_p4", "l")


# ----------------------------------------------------------------------------------------------- full size
def full_size_layout(name: str) -> dict[str, tuple[int, ...]]:
    """The fixture's compact layout expanded: 'blocks.{i}.' keys for i < depth, 'lm_head.transformer.{j}.' for
    j < head_depth, in state-dict order."""
    entry = json.loads((FIXTURES / "official_generator_keys.json").read_text())[name]
    layout, keys, k = {}, entry["keys"], 0
    while k < len(keys):
        var = next((v for v in ("{i}", "{j}") if v in keys[k][0]), None)
        if var is None:
            layout[keys[k][0]] = tuple(keys[k][1])
            k += 1
            continue
        group = []
        while k < len(keys) and var in keys[k][0]:
            group.append(keys[k])
            k += 1
        for index in range(entry["depth"] if var == "{i}" else entry["head_depth"]):
            layout.update({key.replace(var, str(index)): tuple(shape) for key, shape in group})
    assert sum(math.prod(s) for s in layout.values()) == entry["num_tensor_elements"]
    return layout


def meta_state(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}


def preset_modules(preset: str, bits_per_token: int = 16, grid=(16, 16), num_classes: int = 1000):
    """The barlab preset's backbone and MBM head as training builds them, on the meta device."""
    from barlab.bench.models import compose_generator
    from barlab.pipeline.generator_stage import build_backbone_and_head

    cfg = compose_generator(preset, "mbm")
    with torch.device("meta"):
        return build_backbone_and_head(cfg, bits_per_token, grid, num_classes)


@pytest.mark.parametrize("official, preset", PRESETS.items())
def test_full_size_official_weights_map_onto_their_preset_and_load_strictly(official, preset):
    layout = full_size_layout(official)
    state = meta_state(layout)
    geometry = read_official_geometry(state)
    assert list(official_layout(geometry).items()) == list(layout.items())      # the whole layout, in order
    found, converted = official_generator_to_barlab(state)
    assert found == preset
    backbone, head = preset_modules(preset)
    assert backbone.heads == geometry.heads and head.width == geometry.head_width
    for module, name in ((backbone, "backbone"), (head, "head")):
        result = module.load_state_dict(converted[name], strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
    # every official tensor lands somewhere except the recomputed RoPE tables and the unused table rows
    kept = sum(t.numel() for m in (backbone, head) for t in m.state_dict().values())
    p, n, d = geometry.prefix_len, geometry.seq_len, geometry.width
    unused = (2 * geometry.depth * (p + n) * geometry.head_dim       # rope freqs_cos / freqs_sin
              + (128 - p) * d + 128 * d + (100 - p + 1) * d            # pos_embed, target-aware, timesteps rows
              + 3 * d)                                                 # embeddings rows 0..2 (bit ids)
    assert kept == sum(math.prod(s) for s in layout.values()) - unused


def test_bar_l_512_converts_only_without_a_preset():
    state = meta_state(full_size_layout("bar_l_res512"))
    with pytest.raises(CheckpointError, match="match no barlab preset") as err:
        official_generator_to_barlab(state)
    message = str(err.value)
    assert "\n" not in message and "bits_per_step 10 != 16 (key 'lm_head.output_embed.weight')" in message
    found, converted = official_generator_to_barlab(state, require_preset=False)
    geometry = read_official_geometry(state)
    assert found is None and geometry.grid == (32, 32) and geometry.bits_per_step == 10
    with torch.device("meta"):
        backbone, head = ARBackbone(**geometry.backbone_kwargs()), MBMHead(**geometry.head_kwargs())
    backbone.load_state_dict(converted["backbone"], strict=True, assign=True)
    head.load_state_dict(converted["head"], strict=True, assign=True)


def _drop(key):
    return lambda s: s.pop(key)


def _add(key, shape):
    return lambda s: s.__setitem__(key, torch.empty(shape, device="meta"))


@pytest.mark.parametrize("edit, words", [
    (_drop("blocks.7.attn.k_norm.weight"), "missing key 'blocks.7.attn.k_norm.weight'"),
    (_drop("lm_head.adaln_before_head.adaLN_modulation.1.bias"),
     "missing key 'lm_head.adaln_before_head.adaLN_modulation.1.bias'"),
    (_drop("pos_embed"), "missing key 'pos_embed'"),
    (_add("lm_head.extra.weight", (4,)), "unexpected key 'lm_head.extra.weight'"),
    (_add("module.cls_token", (1, 1, 768)), "unexpected key 'module.cls_token'"),
    (_add("input_merge.bias", (767,)), "wrong shape of key 'input_merge.bias': (767,), expected (768,)"),
    (_add("blocks.5.mlp.w12.weight", (4096, 767)), "wrong shape of key 'blocks.5.mlp.w12.weight'"),
    (_add("cls_token", (1, 768)), "key 'cls_token' has shape (1, 768), expected 3 dims"),
    (_add("embeddings.weight", (1003, 768)), "closest bar_b: num_classes 999 != 1000 (key 'embeddings.weight')"),
    (_add("pos_embed", (1, 385, 768)), "key 'pos_embed' gives 257 AR steps (rows - 128), not a square grid"),
    (_add("timesteps_embeddings", (1, 357, 768)), "wrong shape of key 'timesteps_embeddings': (1, 357, 768), "
     "expected (1, 356, 768)"),
])
def test_a_key_that_does_not_map_is_refused_in_one_line_naming_it(edit, words):
    state = meta_state(full_size_layout("bar_b"))
    edit(state)
    with pytest.raises(CheckpointError) as err:
        official_generator_to_barlab(state)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_rope_permutation_pairs_official_2j_2j1_as_barlab_j_j_half():
    perm = rope_permutation(8)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    # official rotate_half on pairs (2j, 2j+1) == barlab's rotation on pairs (j, j + D/2) after the permutation
    from barlab.generator.rope import rotate
    x = torch.randn(2, 3, 5, 8)
    angle = torch.randn(5, 4)
    off_cos, off_sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)
    pairs = x.reshape(*x.shape[:-1], 4, 2)
    half = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)
    official = x * off_cos + half * off_sin
    assert torch.allclose(rotate(x[..., perm], angle.cos(), angle.sin()), official[..., perm], atol=1e-6)


# ------------------------------------------------------------------------------------------------- numbers
def load_variant(name: str):
    state = torch.load(TINY / f"{name}_state.pt", map_location="cpu", weights_only=True)
    outputs = torch.load(TINY / f"{name}_outputs.pt", map_location="cpu", weights_only=True)
    config = json.loads((TINY / f"{name}_config.json").read_text())["model"]["generator"]
    meta = json.loads((TINY / "meta.json").read_text())["variants"][name]
    return state, outputs, config, meta


def barlab_modules(state):
    geometry = read_official_geometry(state)
    found, converted = official_generator_to_barlab(state, require_preset=False)
    backbone, head = ARBackbone(**geometry.backbone_kwargs()).eval(), MBMHead(**geometry.head_kwargs()).eval()
    backbone.load_state_dict(converted["backbone"], strict=True)
    head.load_state_dict(converted["head"], strict=True)
    return found, geometry, backbone, head


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_official_generators_give_the_official_conditions_and_logits(name):
    state, out, config, _ = load_variant(name)
    found, g, backbone, head = barlab_modules(state)
    p = config["patch_size"]
    assert found is None and (g.width, g.depth, g.heads) == (config["hidden_size"], config["num_hidden_layers"],
                                                            config["num_attention_heads"])
    assert g.bits_per_step == 16 * p * p and g.seq_len == 64 // (p * p) and g.class_repeat == 32
    assert (g.num_classes, g.head_width, g.head_depth) == (10, config["mbm_head"]["width"], 2)
    bits = shuffle(out["tf_bits"].reshape(4, 64, 16).float(), (8, 8), p)          # (B, N, k') AR steps
    labels = out["tf_condition_ids"] - 3          # official condition id = class + 3 (a dropped label: the null class)
    kept = labels != g.num_classes
    assert torch.equal(labels[kept], out["tf_labels"][kept]) and not kept.all()
    with torch.no_grad():
        assert rel(backbone(bits, labels), out["z_train_raster"]) < 1e-5
        assert rel(backbone(bits, labels, out["tf_orders_random"]), out["z_train_random"]) < 1e-5
        logits = head(out["head_masked_ids"].long(), out["head_z"][:, 0], out["head_mask_ratio"])
        assert rel(logits, out["head_logits"]) < 1e-5
        for order in ("raster", "random"):      # the head inside the official training forward
            target, masks = out[f"train_target_{order}"].long(), out[f"gen_loss_{order}_masks"]
            masked = torch.where(masks, torch.full_like(target, 2), target).flatten(0, 1)
            z = out[f"z_train_{order}"].flatten(0, 1)
            got = head(masked, z, out[f"gen_loss_{order}_mask_ratio"].flatten())
            assert rel(got, out[f"gen_loss_{order}_head_logits"].flatten(0, 1)) < 1e-5
        # the KV-cache path: conditions of the first three sampling steps (cond rows, then null-class rows)
        rows = torch.cat([out["sample_labels"], torch.full_like(out["sample_labels"], g.num_classes)])
        cache = backbone.new_cache(rows.shape[0])
        z = backbone.prefill(rows, cache)
        for step in range(3):
            assert rel(z, out[f"sample_cfg_preset_step{step}_latent_conditions"][:, 0]) < 1e-5
            ids = out[f"sample_cfg_preset_step{step}_ids"].float()
            z = backbone.step(torch.cat([ids, ids]), step, cache)


@pytest.fixture
def official_rng_order(monkeypatch):
    """Line barlab's use of the torch RNG up with the official sampler's (the noise itself is drawn alike:
    Gumbel of torch.rand, noise for the logits then for the confidences, per unmasking step):

    1. the official ``BAR.generate`` first calls ``preprocess_condition``, which draws ``rand_like(labels)``
       for its label drop (even at probability 0): B uniforms before any noise -> drawn here first;
    2. at its last unmasking step the official head draws no confidence noise; barlab's draws one (unused)
       -> that draw is given back here (RNG state restored), so later AR steps see the official stream.
    Returns ``start(seed, batch, steps)``: seed, skip (1), and count head-noise calls per ``steps`` unmaskings.
    """
    real = mbm.gumbel
    state = {"steps": 0, "calls": 0}

    def gumbel(shape, generator, device):
        if len(shape) == 2:                         # a confidence draw (N, k')
            state["calls"] += 1
            if state["calls"] % state["steps"] == 0:
                saved = torch.get_rng_state()
                noise = real(shape, generator, device)
                torch.set_rng_state(saved)
                return noise
        return real(shape, generator, device)

    def start(seed: int, batch: int, steps: int) -> None:
        state.update(steps=steps, calls=0)
        torch.manual_seed(seed)
        torch.rand(batch)
        monkeypatch.setattr(mbm, "gumbel", gumbel)

    return start


SAMPLINGS = ("cfg_preset", "cfg3_t1", "cfg3_t0", "nocfg_t1", "cfg_preset_nokv")


def sample_like_official(sampler: ARSampler, spec: dict, start, p: int) -> torch.Tensor:
    labels = torch.tensor(spec["labels"])
    start(spec["seed"], labels.shape[0], len(spec["tokens_allocation"]))
    steps = sampler.sample(labels, guidance=spec["guidance_scale"], schedule="linear",
                           temperature=spec["randomize_temperature"], use_kv_cache=spec["kv_cache"],
                           allocation=spec["tokens_allocation"])
    return unshuffle(steps, (8, 8), p).reshape(labels.shape[0], -1)                 # (B, 64 * 16) raster bits


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_official_generators_sample_the_official_bits(name, official_rng_order):
    state, out, config, meta = load_variant(name)
    _, _, backbone, head = barlab_modules(state)
    sampler = ARSampler(backbone, head)
    for case in SAMPLINGS:
        spec = meta["sampling"][case]
        bits = sample_like_official(sampler, spec, official_rng_order, config["patch_size"])
        assert torch.equal(bits.to(torch.uint8), out[f"sample_{case}_bits"]), case


def test_without_lining_up_the_rng_only_the_first_step_matches():
    """What official_rng_order fixes: barlab's own RNG use gives other bits after the first AR step."""
    state, out, config, meta = load_variant("b")
    _, _, backbone, head = barlab_modules(state)
    spec = meta["sampling"]["cfg3_t1"]
    torch.manual_seed(spec["seed"])
    torch.rand(4)
    steps = ARSampler(backbone, head).sample(torch.tensor(spec["labels"]), guidance=spec["guidance_scale"],
                                             temperature=spec["randomize_temperature"],
                                             allocation=spec["tokens_allocation"])
    want = out["sample_cfg3_t1_bits"].reshape(4, 64, 16)
    assert torch.equal(steps[:, 0].to(torch.uint8), want[:, 0]) and not torch.equal(steps.to(torch.uint8), want)


def test_a_wrong_rope_table_is_refused():
    state = dict(load_variant("b")[0])
    state["blocks.1.attn.rope.freqs_cos"] = state["blocks.1.attn.rope.freqs_cos"].flip(0)
    with pytest.raises(CheckpointError, match="'blocks.1.attn.rope.freqs_cos' is not the official RoPE table"):
        official_generator_to_barlab(state, require_preset=False)


# ---------------------------------------------------------------------------------------------------- CLI
TOKENIZER = {
    "encoder": {"_target_": "barlab.tokenizer.ConvEncoder", "in_channels": 1, "width": 8, "depth": 1,
                "downsample": 4, "out_channels": 8},
    "quantizer": {"_target_": "barlab.tokenizer.BinaryFSQ", "latent_channels": 8, "bits": 16},
    "decoder": {"_target_": "barlab.tokenizer.ConvDecoder", "out_channels": 1, "width": 8, "depth": 1,
                "upsample": 4, "in_channels": 8},
}


def write_tokenizer(path: Path, bits: int = 16, grid=(8, 8)) -> Path:
    from barlab.tokenizer.checkpoint import build_tokenizer, save_tokenizer

    cfg = json.loads(json.dumps(TOKENIZER))
    cfg["quantizer"]["bits"] = bits
    torch.manual_seed(0)
    tokenizer = build_tokenizer(cfg)
    return save_tokenizer(path, OmegaConf.create(cfg), tokenizer.state_dict(), 32, 1,
                          extra={"bits_per_token": bits, "grid": list(grid), "is_discrete": True})


def convert_in_process(**values):
    from barlab.convert import run

    return run(OmegaConf.create({"ckpt": None, "tokenizer_ckpt": None, "out": None, "preset": "auto", **values}))


@pytest.mark.slow
def test_cli_writes_a_generator_file_that_samples_the_official_bits(tmp_path, official_rng_order):
    tokenizer = write_tokenizer(tmp_path / "tokenizer.pt")
    ckpt = tmp_path / "b_p2.bin"
    ckpt.write_bytes((TINY / "b_p2_state.pt").read_bytes())
    ok, refused = run_modules(
        ("barlab.convert", f"ckpt={ckpt}", f"tokenizer_ckpt={tokenizer}", "preset=custom"),
        ("barlab.convert", f"ckpt={ckpt}", f"tokenizer_ckpt={tokenizer}"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert refused.returncode == 2 and len(error_lines(refused.stderr)) == 1
    assert "preset: the weights' sizes match no barlab preset" in refused.stderr and "preset=custom" in refused.stderr
    summary = json.loads(ok.stdout[ok.stdout.index("{"):])
    assert summary["generator"] == str(tmp_path / "b_p2" / "generator.pt") and summary["token_shuffle"] == 2

    from barlab.generator.image_generator import load_generator

    model, info = load_generator(tmp_path / "b_p2")
    assert info["converted_from"]["preset"] == "custom" and info["bits_per_step"] == 64 and model.num_classes == 10
    _, out, _, meta = load_variant("b_p2")
    spec = meta["sampling"]["cfg_preset"]
    bits = sample_like_official(model.sampler, spec, official_rng_order, 2)
    assert torch.equal(bits.to(torch.uint8), out["sample_cfg_preset_bits"])
    images = model.generate(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 32, 32)


def test_cli_refusals_are_one_line(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer.pt")
    ckpt = tmp_path / "b.bin"
    ckpt.write_bytes((TINY / "b_state.pt").read_bytes())
    text = tmp_path / "notes.bin"
    text.write_text("not weights")
    cases = [
        ({"ckpt": str(tmp_path / "missing.bin"), "tokenizer_ckpt": str(tokenizer)}, ConfigError,
         "ckpt: '" + str(tmp_path / "missing.bin") + "' not found; barlab.convert needs a local official BAR"),
        ({"ckpt": str(ckpt), "tokenizer_ckpt": str(tokenizer), "preset": "bar_b"}, ConfigError,
         "preset: the weights are of no barlab preset, not bar_b"),
        ({"ckpt": str(ckpt), "tokenizer_ckpt": str(tokenizer), "preset": "bar_x"}, ConfigError,
         "unknown preset 'bar_x'"),
        ({"ckpt": str(ckpt), "tokenizer_ckpt": str(write_tokenizer(tmp_path / "t4.pt", bits=4)), "preset": "custom"},
         ConfigError, "has 4-bit tokens on a 8x8 grid; the generator predicts 16 bits per step on a 8x8 grid"),
        ({"ckpt": str(tokenizer), "tokenizer_ckpt": str(tokenizer), "preset": "custom"}, CheckpointError,
         "official generator weights: missing key 'cls_token' (not a state dict of the official modeling/generator"),
        ({"ckpt": str(text), "tokenizer_ckpt": str(tokenizer)}, ConfigError, "is not a readable torch state dict"),
        ({"ckpt": str(ckpt), "tokenizer_ckpt": str(ckpt), "preset": "custom"}, BarlabError,
         f"tokenizer_ckpt={ckpt}: this is a dict without barlab's format marker, not a tokenizer"),
    ]
    broken = dict(torch.load(TINY / "b_state.pt", weights_only=True))
    broken.pop("norm.weight")
    torch.save(broken, tmp_path / "broken.bin")
    cases.append(({"ckpt": str(tmp_path / "broken.bin"), "tokenizer_ckpt": str(tokenizer), "preset": "custom"},
                  CheckpointError, f"ckpt={tmp_path / 'broken.bin'}: official generator weights: missing key "
                  "'norm.weight'"))
    for values, kind, words in cases:
        with pytest.raises(kind) as err:
            convert_in_process(**values)
        assert words in str(err.value) and "\n" not in str(err.value), (values, str(err.value))


# ------------------------------------------------------------------ the released tokenizer (BAR_FSQ)

def official_tokenizer_layout() -> list[tuple[str, list[int]]]:
    """The official BAR_FSQ state dict's keys and shapes at full size (16 bits, 256 px), state-dict order."""
    import gzip

    with gzip.open(Path(__file__).parent / "fixtures" / "official_tokenizer_keys.json.gz", "rt") as f:
        return [(k, shape) for k, shape in json.load(f)["keys"]]


def test_full_size_official_tokenizer_converts_and_loads_strictly(compose_train):
    from barlab.tokenizer.checkpoint import build_tokenizer
    from barlab.tokenizer.official_checkpoint import official_tokenizer_sizes, official_tokenizer_to_barlab

    layout = official_tokenizer_layout()
    with torch.device("meta"):
        state = {k: torch.empty(shape) for k, shape in layout}
    assert official_tokenizer_sizes(state) == {"bits": 16, "grid": 16, "encoder_depth": 27, "decoder_depth": 24}
    converted = official_tokenizer_to_barlab(state)
    cfg = compose_train(["tokenizer=bar_fsq_paper", "data=imagefolder", "data.source.root=/x", "data.image_size=256"])
    with torch.device("meta"):
        tokenizer = build_tokenizer(cfg.tokenizer)
    tokenizer.load_state_dict(converted, strict=True, assign=True)
    assert converted["quantizer.proj_in.weight"].shape == (16, 1152, 1, 1)
    dropped = [k for k, _ in layout if k.startswith(("encoder.siglip.encoder.", "encoder.frozen_"))]
    assert len(dropped) == 2 * 27 * 16 + 2 and len(converted) == len(tokenizer.state_dict())


def test_official_tokenizer_refuses_a_foreign_key_in_one_line():
    from barlab.tokenizer.official_checkpoint import official_tokenizer_to_barlab

    state = {"quantize.in_proj.weight": torch.zeros(16, 8), "discriminator.heads.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"^unexpected key 'discriminator.heads.0.weight': not part of an "
                                              r"official BAR_FSQ state dict$"):
        official_tokenizer_to_barlab(state)
