"""Fidelity to the official BAR code (noctrog/BAR, the version docs/results.md names).

Presets' sampling settings, the sampling-time MBM allocation, BAR-L's dropout sites, the linear
head's memory guard, the bitwise head's capacity match, the head study's parameter column, the
recipe at scale; and the MBM head's loss, conditioning and initialisation, the weight-decay groups
and the prefix slots under random orders, each pinned to the official behaviour.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from barlab.config.paths import CONFIG_DIR
from barlab.errors import ConfigError
from barlab.generator import ARBackbone
from barlab.generator import attention as attention_module
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads import BitwiseHead, LinearHead, MBMHead, bitwise_head_params, linear_head_memory
from barlab.generator.heads import mbm as mbm_module
from barlab.generator.sampler import ARSampler
from barlab.lightning.optim import decay_groups
from barlab.pipeline.preflight import check_config
from barlab.runtime.distributed import split_global_batch
from tests.helpers import call_main, error_lines, read_json


def compose_preset(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# ------------------------------------------------------------- presets' sampling settings

# official README / sample_imagenet.py commands: (allocation, guidance, temperature)
OFFICIAL_SAMPLING = {
    "bar_b": ([2, 2, 5, 7], 5.0, 2.5),
    "bar_l": ([2, 2, 5, 7], 5.3, 3.0),
    "bar_b_p2": ([16, 16, 16, 16], 5.5, 2.0),
    "bar_b_p4": ([64, 64, 64, 64], 9.6, 1.4),
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_SAMPLING))
def test_each_paper_preset_carries_its_official_sampling_settings(preset):
    allocation, guidance, temperature = OFFICIAL_SAMPLING[preset]
    cfg = compose_preset(f"generator={preset}", "head=mbm")
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    assert (sampling["guidance"], sampling["temperature"], sampling["schedule"]) == (guidance, temperature, "linear")
    assert sampling["allocation"] is None                       # the head's own, stored in generator.pt
    assert list(cfg.head.allocation) == allocation
    bits_per_step = 16 * cfg.generator.token_shuffle ** 2
    with torch.device("meta"):
        head = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=bits_per_step)
    assert list(head.allocation) == allocation


def test_tiny_preset_keeps_todays_sampling_and_the_top_level_node_still_overrides():
    cfg = compose_preset()
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    assert (sampling["guidance"], sampling["schedule"], sampling["temperature"], sampling["power"]) == \
        (3.0, "linear", 1.0, 1.0)
    assert sampling["allocation"] is None and cfg.head.allocation is None
    with torch.device("meta"):
        head = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=16)
    assert head.allocation == (2, 3, 5, 6)                      # cosine over head.steps, as before
    cfg = compose_preset("generator=bar_b", "sampling.guidance=2.0", "sampling.temperature=1.0",
                         "head.allocation=[4,4,4,4]")
    assert (cfg.sampling.guidance, cfg.sampling.temperature, list(cfg.head.allocation)) == (2.0, 1.0, [4, 4, 4, 4])
    cfg = compose_preset("generator=bar_b", "head=bitwise")    # other heads ignore the allocation
    assert "allocation" not in cfg.head


def test_guidance_ramp_and_temperature_annealing_follow_the_official_sampler(monkeypatch):
    # official generator.generate: cfg_scale = 1 + (g - 1) * step / L (g <= 1: 1)
    for g in (5.0, 5.3, 9.6):
        assert [guidance_scale(t, 256, g, "linear") for t in (0, 64, 255)] == \
            [1.0 + (g - 1.0) * t / 256 for t in (0, 64, 255)]
    # official mbm_head.sample: annealed_temp = T * (1 - step / num_steps), on the sampled ids and the confidence
    taus = []
    real = mbm_module.gumbel

    def spy(shape, generator, device):
        taus.append(shape)
        return real(shape, generator, device)

    head = MBMHead(8, 16, width=16, depth=1, allocation=[2, 2, 5, 7])
    monkeypatch.setattr(mbm_module, "gumbel", spy)
    head.sample(torch.randn(3, 8), None, 1.0, temperature=2.5)
    # tau = 2.5 * (1 - s/4) > 0 at each of the 4 steps: Gumbel noise on the logits and on the confidence
    assert [tuple(s) for s in taus] == [(3, 16, 2), (3, 16)] * 4
    taus.clear()
    head.sample(torch.randn(3, 8), None, 1.0, temperature=0.0)   # tau = 0: argmax, no noise
    assert taus == []


# ------------------------------------------------------------- sampling.allocation at sampling time

def tiny_generator(head_kind: str = "mbm", k: int = 16):
    torch.manual_seed(0)
    backbone = ARBackbone(k, (2, 2), 3, width=32, depth=1, heads=2, cond_dim=16, class_repeat=1).eval()
    head = (MBMHead(16, k, width=16, depth=1, steps=4) if head_kind == "mbm" else BitwiseHead(16, k)).eval()
    return backbone, head


def test_sampler_uses_the_sampling_allocation_instead_of_the_heads_own():
    backbone, head = tiny_generator()
    calls = []
    head.register_forward_hook(lambda *_: calls.append(1))
    labels = torch.tensor([0, 1])
    ARSampler(backbone, head).sample(labels, guidance=1.0)
    assert len(calls) == 4 * 4                        # 4 AR steps x the head's 4 unmasking steps
    calls.clear()
    ARSampler(backbone, head).sample(labels, guidance=1.0, allocation=[8, 8])
    assert len(calls) == 4 * 2
    calls.clear()
    ARSampler(backbone, head).sample(labels, guidance=1.0, allocation=[16])
    assert len(calls) == 4 * 1
    assert head.allocation == (2, 3, 5, 6)            # the stored head is unchanged


def test_sampling_allocation_is_refused_for_a_wrong_sum_or_another_head():
    backbone, head = tiny_generator()
    with pytest.raises(ConfigError) as err:
        ARSampler(backbone, head).sample(torch.tensor([0]), allocation=[4, 4, 4])
    assert err.value.knob == "allocation" and "sums to 12" in str(err.value)  # the sampler's own argument
    backbone, head = tiny_generator("bitwise")
    with pytest.raises(ConfigError) as err:
        ARSampler(backbone, head).sample(torch.tensor([0]), allocation=[4, 4, 4, 4])
    assert err.value.knob == "allocation" and "BitwiseHead" in str(err.value)
    # barlab.sample and the config check name the knob (below)


def test_config_check_refuses_a_bad_sampling_allocation_before_training(tmp_path, compose_train):
    check_config(compose_train(["experiment=smoke", "sampling.allocation=[4,4,4,4]"]))
    for overrides, text in ((["sampling.allocation=[4,4,4]"], "must sum to the 16 bits"),
                            (["head=bitwise", "sampling.allocation=[4,4,4,4]"], "only the MBM head")):
        with pytest.raises(ConfigError) as err:
            check_config(compose_train(["experiment=smoke", *overrides]))
        assert err.value.knob == "sampling.allocation" and text in str(err.value)


def write_generator(tmp_path: Path, head_kind: str = "mbm") -> Path:
    """A small untrained generator.pt (tiny tokenizer, 4x4 tokens of 4 bits, 3 classes)."""
    from barlab.generator.image_generator import save_generator
    from barlab.tokenizer.checkpoint import build_tokenizer, save_tokenizer

    cfg = compose_preset("experiment=smoke", f"head={head_kind}", "data=synthetic", "data.image_size=16",
                         "tokenizer.bits=4")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(cfg.tokenizer)
    tok_file = save_tokenizer(tmp_path / "tokenizer.pt", cfg.tokenizer, tokenizer.state_dict(), 16, 3,
                              extra={"bits_per_token": 4, "grid": [4, 4], "is_discrete": True})
    backbone = instantiate(cfg.generator.backbone, bits_per_step=4, grid=(4, 4), num_classes=3)
    head = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=4)
    return save_generator(tmp_path / "generator.pt", cfg.generator.backbone, cfg.head, backbone, head, tok_file,
                          grid=(4, 4), token_shuffle=1, num_classes=3, sampling=cfg.sampling)


def test_barlab_sample_takes_the_allocation_and_refuses_a_bad_one_in_one_line(tmp_path):
    ckpt = write_generator(tmp_path)
    proc = call_main("barlab.sample", f"ckpt={ckpt}", "per_class=1", "png=false", "device=cpu",
                     "sampling.allocation=[1,3]", f"out_dir={tmp_path / 'a13'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(tmp_path / "a13" / "sample_info.json")["sampling"]["allocation"] == [1, 3]
    proc = call_main("barlab.sample", f"ckpt={ckpt}", "per_class=1", "device=cpu", "sampling.allocation=[4,4,4,4]",
                     f"out_dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: sampling.allocation:") and "sums to 16" in line
    assert not (tmp_path / "bad").exists()
    (tmp_path / "bw").mkdir()
    bitwise = write_generator(tmp_path / "bw", "bitwise")
    proc = call_main("barlab.sample", f"ckpt={bitwise}", "per_class=1", "device=cpu", "sampling.allocation=[2,2]",
                     cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: sampling.allocation:") and "MBM" in line


# ------------------------------------------------------------- BAR-L dropout sites

def test_bar_l_drops_only_after_the_attention_projection_and_on_the_swiglu_hidden(monkeypatch):
    cfg = compose_preset("generator=bar_l")
    knobs = OmegaConf.to_container(cfg.generator.backbone, resolve=True)
    p = knobs["dropout"]
    assert p == 0.2
    knobs.update(width=64, depth=2, heads=4, cond_dim=32, class_repeat=2)     # bar_l's dropout, small sizes
    torch.manual_seed(0)
    backbone = instantiate(knobs, bits_per_step=8, grid=(4, 4), num_classes=5).train()
    sites = {name: m.p for name, m in backbone.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    assert set(sites) == {f"blocks.{i}.{site}" for i in range(2) for site in ("attn.proj_drop", "mlp.drop")}
    assert set(sites.values()) == {p}
    # what each dropout sees: the projection's output, the SwiGLU hidden (silu(w1 x) * w2 x)
    seen: dict[str, tuple] = {}
    for name, module in backbone.named_modules():
        if name in sites:
            module.register_forward_hook(lambda m, inp, out, name=name: seen.update({name: (inp[0].shape, out)}))
    proj_out = {}
    backbone.blocks[0].attn.proj.register_forward_hook(lambda m, i, o: proj_out.update(o=o))
    sdpa_p = []
    real_sdpa = F.scaled_dot_product_attention

    def sdpa(*args, dropout_p=0.0, **kwargs):
        sdpa_p.append(dropout_p)
        return real_sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", sdpa)
    backbone(torch.randint(0, 2, (2, 16, 8)).float(), torch.tensor([0, 1]))
    assert sdpa_p and set(sdpa_p) == {0.0}                    # no attention-probability dropout
    hidden = backbone.blocks[0].mlp.w3.in_features
    assert seen["blocks.0.mlp.drop"][0][-1] == hidden
    assert seen["blocks.0.attn.proj_drop"][0][-1] == 64
    dropped = seen["blocks.0.attn.proj_drop"][1]
    assert ((dropped == 0) | torch.isclose(dropped, proj_out["o"] / (1 - p))).all()
    assert 0.1 < (dropped == 0).float().mean() < 0.3


def test_no_dropout_draws_no_random_numbers_at_the_default_size():
    cfg = compose_preset()
    assert cfg.generator.backbone.dropout == 0.0 and cfg.generator.backbone.attn_dropout == 0.0
    torch.manual_seed(0)
    backbone = instantiate(cfg.generator.backbone, bits_per_step=16, grid=(8, 8), num_classes=10)
    bits, labels = torch.randint(0, 2, (2, 64, 16)).float(), torch.tensor([1, 2])
    state = torch.get_rng_state()
    train_out = backbone.train()(bits, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(train_out, backbone.eval()(bits, labels))


# ------------------------------------------------------------- linear head: a memory guard

def test_linear_head_admits_k16_at_cond_dim_2048_and_refuses_what_cannot_fit():
    with torch.device("meta"):
        head = LinearHead(2048, 16)                               # weights and Adam states: 2.1 GB
        assert sum(p.numel() for p in head.parameters()) == 65536 * 2049
        LinearHead(2048, 16, batch_tokens=64 * 256)               # + 12.9 GB of logits: 15.0 GB < 16
        LinearHead(2048, 18, batch_tokens=1024)                   # 2^18 codes (the paper's largest): 8.6 + 3.2 GB
    states, logits = linear_head_memory(2048, 16, 256 * 256)
    assert states == 16 * 65536 * 2049 and logits == 3 * 4 * 65536 * 65536
    with pytest.raises(ConfigError) as err:
        LinearHead(2048, 16, batch_tokens=256 * 256)              # bar_b's per-rank batch of 256 x 256 tokens
    text = str(err.value)
    assert err.value.knob == ""  # the head as a whole: `head` through the config check (below)
    for part in ("53.7 GB", "134,283,264 parameters", "2.1 GB", "51.5 GB", "65,536 tokens", "max_memory_gb=16",
                 "head=mbm"):
        assert part in text, text
    LinearHead(64, 8, batch_tokens=256 * 256, max_memory_gb=120)  # a larger budget admits it
    with pytest.raises(ConfigError) as err:
        LinearHead(64, 8, max_memory_gb=0)
    assert err.value.knob == "max_memory_gb" and err.value.fix == "max_memory_gb=16"
    assert LinearHead(64, 8, max_params=2**27).num_codes == 256  # generator.pt files of older runs still load


def test_linear_head_config_check_counts_the_batch(tmp_path, compose_train):
    cfg = compose_train(["experiment=smoke", "head=linear", "generator.backbone.cond_dim=2048"])
    check_config(cfg)                                             # k = 16 at cond_dim 2048: admitted
    with pytest.raises(ConfigError) as err:                       # smoke: 16 x 16 tokens x 2^24 logits, 3 copies
        check_config(compose_train(["experiment=smoke", "head=linear", "tokenizer.bits=24"]))
    assert err.value.knob == "head" and "256 tokens x 2^24" in str(err.value) and "8.9 GB" in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_config(compose_train(["experiment=smoke", "head=linear", "head.max_memory_gb=0"]))
    assert str(err.value) == "head.max_memory_gb: must be a positive number of GB, got 0 (fix: head.max_memory_gb=16)"


# ------------------------------------------------------------- bitwise head: capacity match

def test_bitwise_default_is_todays_plain_linear_head():
    torch.manual_seed(0)
    head = BitwiseHead(192, 16)
    torch.manual_seed(0)
    plain = nn.Linear(192, 32)
    assert isinstance(head.net, nn.Linear)
    assert torch.equal(head.net.weight, plain.weight) and torch.equal(head.net.bias, plain.bias)
    cfg = compose_preset("head=bitwise")
    assert cfg.head.hidden is None and cfg.head.depth == 1


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_bitwise_head_can_match_the_mbm_heads_parameter_count(bits):
    cfg = compose_preset("head=mbm")
    with torch.device("meta"):
        mbm = instantiate(cfg.head, cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=bits)
        bitwise = BitwiseHead(192, bits, hidden=672, depth=3)       # configs/head/bitwise.yaml
    n_mbm = sum(p.numel() for p in mbm.parameters())
    n_bit = sum(p.numel() for p in bitwise.parameters())
    assert n_bit == bitwise_head_params(192, bits, 672, 3)
    assert abs(n_bit - n_mbm) / n_mbm < 0.02
    assert len([m for m in bitwise.net if isinstance(m, nn.Linear)]) == 4


def test_bitwise_head_matches_the_paper_mbm_head_at_bar_b_size():
    with torch.device("meta"):
        mbm = MBMHead(2048, 16, width=2048, depth=3)
    n_mbm = sum(p.numel() for p in mbm.parameters())
    assert abs(bitwise_head_params(2048, 16, 8288, 3) - n_mbm) / n_mbm < 0.02


def test_head_study_table_shows_each_heads_parameter_count(tmp_path):
    from barlab.analysis.collect import load_sweep

    for num, (head, params) in enumerate((("bitwise", 6176), ("mbm", 1068292))):
        job = tmp_path / str(num)
        job.mkdir()
        (job / "results.json").write_text(json.dumps({
            "status": "ok", "stage": "all", "job_num": num, "overrides": {"head": head, "tokenizer.bits": 16},
            "gfid": 1.0, "generator": {"params_head": params, "params_backbone": 10}}))
    frame = load_sweep(tmp_path)
    assert frame.sort_values("job")["params_head"].tolist() == [6176, 1068292]
    proc = call_main("barlab.analysis", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "params_head" in proc.stdout and "1068292" in proc.stdout


# ------------------------------------------------------------- recipe at scale

@pytest.mark.parametrize("preset, per_rank, accumulation", [("bar_b", 256, 1), ("bar_b_p2", 256, 1),
                                                            ("bar_b_p4", 256, 1), ("bar_l", 64, 4)])
def test_paper_presets_train_with_a_global_batch_of_2048_on_8_gpus(preset, per_rank, accumulation):
    cfg = compose_preset(f"generator={preset}")
    gen = cfg.generator
    assert gen.global_batch_size == 2048
    assert split_global_batch(2048, 8, gen.data.batch_size, "generator.global_batch_size") == (per_rank, accumulation)
    # as the stage applies it to a trainer: 8 GPUs, and 1 GPU (the per-rank batch kept, 8x the accumulation);
    # validation periods stay in optimizer steps
    from types import SimpleNamespace

    from barlab.runtime.distributed import apply_global_batch

    for world, expected in ((8, (per_rank, accumulation)), (1, (per_rank, accumulation * 8))):
        trainer = SimpleNamespace(world_size=world, val_check_interval=100, accumulate_grad_batches=1)
        data = SimpleNamespace(batch_size=gen.data.batch_size)
        apply_global_batch(trainer, data, gen.global_batch_size, "generator.global_batch_size")
        assert (data.batch_size, trainer.accumulate_grad_batches) == expected, world
        assert data.batch_size * trainer.accumulate_grad_batches * world == 2048
        assert trainer.val_check_interval == 100 * expected[1]


# ----------------------------------------------------------------------------------------------------
# The MBM head, the weight-decay groups and the prefix slots as in the official code

def modulation_linear(module):
    return module[-1] if isinstance(module, nn.Sequential) else module


# 1. official mbm_head.py:202-207: loss = Σ w·CE / (Σ w + 1e-8) over the whole batch
def test_mbm_loss_is_one_global_weighted_mean(monkeypatch):
    head = MBMHead(4, 4, width=8, depth=1)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    ratio = torch.tensor([1.0, 0.25])
    monkeypatch.setattr(head, "mask_tokens", lambda bits, generator=None: (torch.where(mask, 2, 0), mask, ratio))
    logits = torch.zeros(2, 4, 2)
    logits[0, :, 1] = 1.0          # token 0: CE = log(1 + e) per bit (target 0)
    logits[1, :, 1] = 3.0          # token 1: CE = log(1 + e^3) per bit
    monkeypatch.setattr(head, "forward", lambda b, c, r: logits)
    ce0, ce1 = math.log(1 + math.e), math.log(1 + math.e ** 3)
    expected = (4 * ce0 + (1 + 3 * 0.1) * ce1) / (4 + 1 + 3 * 0.1)     # 6.4x... here 4 vs 1.3
    out = head.loss(torch.zeros(2, 4), torch.zeros(2, 4))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


# 2. official ResBlock / FinalLayer: adaLN_modulation = Sequential(SiLU, Linear) applied to s = SiLU(t_emb + z)
def test_mbm_modulations_see_silu_of_s():
    torch.manual_seed(0)
    head = MBMHead(16, 8, width=16, depth=2)
    cond, ratio, bits = torch.randn(5, 16), torch.rand(5), torch.randint(0, 3, (5, 8))
    seen = []
    for m in [b.ada for b in head.blocks] + [head.final_ada]:
        modulation_linear(m).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    head(bits, cond, ratio)
    s = F.silu(head.t_mlp(head.fourier(ratio)) + head.cond_proj(cond))
    assert len(seen) == 3
    for x in seen:
        assert torch.allclose(x, F.silu(s), atol=1e-6)


# 3. official generator.py:167-179 (init_weights over the whole model, head included): trunc-normal(0.02) on
#    every Linear and Embedding, zero biases, then the head's adaLN modulations zeroed; output Linear not zeroed
def test_mbm_init_statistics():
    torch.manual_seed(0)
    head = MBMHead(512, 16, width=512, depth=2)
    modulations = {id(modulation_linear(m)) for m in [b.ada for b in head.blocks] + [head.final_ada]}
    for name, m in head.named_modules():
        if isinstance(m, nn.Linear):
            if id(m) in modulations:
                assert not m.weight.any() and not m.bias.any(), name
            else:
                assert 0.018 < m.weight.std().item() < 0.022, name
                assert m.weight.abs().max().item() < 0.02 * 6, name
                assert not m.bias.any(), name
        elif isinstance(m, nn.Embedding):
            assert 0.015 < m.weight.std().item() < 0.025, name
    assert head.out.weight.abs().sum() > 0


# 4. official utils/train_utils.py:178-204: no decay for ndim < 2 and names with norm / ln / bias / embed
#    (so adaLN_modulation, adaln_before_head and t_embedder are not decayed)
def test_bar_b_weight_decay_groups_follow_the_official_name_rule():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["generator=bar_b", "head=mbm"])
    with torch.device("meta"):
        backbone = instantiate(cfg.generator.backbone, bits_per_step=16, grid=(16, 16), num_classes=1000)
        head = instantiate(cfg.head, cond_dim=2048, bits_per_step=16)
    model = nn.ModuleList([backbone, head])
    decay, no_decay = decay_groups(model, 0.03)
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert not [n for n in names if re.search(r"(^|\.)(ada|final_ada|t_mlp)(\.|$)", n)]
    assert sum(p.numel() for p in decay["params"]) == 276_948_992
    assert sum(p.numel() for p in no_decay["params"]) == 415_096_110 - 276_948_992


# 6. official generator.py:364-374 and 420-427: every prefix slot gets the target-aware embedding and the
#    query rotation of the first target o[0]
def test_prefix_slots_get_the_first_targets_embedding_and_rotation():
    torch.manual_seed(0)
    model = ARBackbone(4, (4, 4), 3, width=32, depth=1, heads=2, cond_dim=16, class_repeat=3)
    order = torch.stack([torch.randperm(16) for _ in range(2)])
    seen = {}
    real = model.rope.forward
    model.rope.forward = lambda current, target: seen.update(current=current, target=target) or real(current, target)
    model(torch.randint(0, 2, (2, 16, 4)).float(), torch.tensor([0, 1]), order)
    P = model.prefix_len
    assert torch.equal(seen["target"][:, :P], order[:, :1].expand(-1, P))
    assert torch.equal(seen["current"][:, :P], torch.full((2, P), 16))        # prefix keys: identity rotation
    cache = model.new_cache(2)
    model.prefill(torch.tensor([0, 1]), cache)                              # raster: o[0] = 0 for every prefix slot
    assert torch.equal(seen["target"], torch.zeros(2, P, dtype=torch.long))
