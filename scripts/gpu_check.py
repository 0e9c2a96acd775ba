"""The GPU check: one script, about 10 minutes on one H100 or H200, that writes ``gpu_check.json``.

1. ``sampling``: BAR-B and BAR-B/4 with random weights, bf16, at the paper's settings (CFG, temperature,
   4-step MBM allocation): sampling img/s beside the paper's 24.3 and 445.5 (H200), and a bf16 training
   step (img/s, peak memory) - the ``gpu`` benchmark's measurement.
2. ``mbm_bf16``: the MBM head in bf16 against fp32 at temperature 0 (BAR-B sizes, the same random weights
   and labels, guidance 1): the share of identical bits over whole samples and over the first AR step.
3. ``converted``: the tiny official generators of ``tests/fixtures/official_generator`` converted by
   ``barlab.generator.official_checkpoint`` and run on the device in fp32 (TF32 off): the teacher-forced
   conditions and the MBM head's logits against the official numbers (max relative difference).
4. ``paper_tokenizer``: the ``paper_tokenizer`` benchmark (the published BAR-FSQ tokenizer's training step at
   32 images in bf16: time, peak memory, the paper's GPU-hours from the measured time).

    .venv/bin/python scripts/gpu_check.py --out gpu_check            # on the GPU machine
    .venv/bin/python scripts/gpu_check.py --size ci --device cpu --out /tmp/check   # tiny, any machine

``--size ci`` uses tiny presets and runs in about a minute on a CPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "official_generator"
PRESETS = {"ci": [("tiny", (8, 8))], "real": [("bar_b", (16, 16)), ("bar_b_p4", (16, 16))]}


def context(size: str, device: torch.device):
    from barlab.bench.context import BenchContext

    return BenchContext(size=size, device=device, warmup=1 if size == "ci" else 2, repeats=2 if size == "ci" else 5)


def check_sampling(size: str, device: torch.device) -> list[dict]:
    """Sampling and training img/s of the presets (``barlab.bench.gpu.measure_preset``)."""
    from barlab.bench.gpu import SIZES, measure_preset

    ctx = context(size, device)
    return [measure_preset(preset, ctx, SIZES[size], grid=grid) for preset, grid in PRESETS[size]]


def check_mbm_bf16(size: str, device: torch.device) -> dict:
    """Whole samples at temperature 0 and guidance 1, fp32 against bf16 autocast: identical bits."""
    from barlab.bench.models import build_module, compose_generator

    preset, grid = ("tiny", (8, 8)) if size == "ci" else ("bar_b", (16, 16))
    module = build_module(compose_generator(preset, "mbm"), grid, 16, 10 if size == "ci" else 1000, device)
    labels = torch.arange(8, device=device) % module.num_classes
    with torch.no_grad():
        fp32 = module.sampler.sample(labels, guidance=1.0, temperature=0.0)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            bf16 = module.sampler.sample(labels, guidance=1.0, temperature=0.0)
    return {"preset": preset, "bits_identical": float((fp32 == bf16).float().mean()),
            "first_step_bits_identical": float((fp32[:, 0] == bf16[:, 0]).float().mean())}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float()).abs().max() / b.float().abs().max())


def check_converted(device: torch.device) -> list[dict]:
    """Each tiny official generator converted and run on ``device`` in fp32 against the official numbers."""
    from barlab.generator import ARBackbone, MBMHead
    from barlab.generator.official_checkpoint import official_generator_to_barlab, read_official_geometry
    from barlab.generator.token_shuffle import shuffle

    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for name in ("b", "b_p2", "b_p4", "l"):
        state = torch.load(FIXTURE / f"{name}_state.pt", map_location="cpu", weights_only=True)
        out = torch.load(FIXTURE / f"{name}_outputs.pt", map_location="cpu", weights_only=True)
        p = json.loads((FIXTURE / f"{name}_config.json").read_text())["model"]["generator"]["patch_size"]
        geometry = read_official_geometry(state)
        _, converted = official_generator_to_barlab(state, require_preset=False)
        backbone = ARBackbone(**geometry.backbone_kwargs()).eval()
        head = MBMHead(**geometry.head_kwargs()).eval()
        backbone.load_state_dict(converted["backbone"], strict=True)
        head.load_state_dict(converted["head"], strict=True)
        backbone, head = backbone.to(device), head.to(device)
        bits = shuffle(out["tf_bits"].reshape(4, 64, 16).float(), (8, 8), p).to(device)
        labels = (out["tf_condition_ids"] - 3).to(device)
        with torch.no_grad():
            z = backbone(bits, labels)
            logits = head(out["head_masked_ids"].long().to(device), out["head_z"][:, 0].to(device),
                          out["head_mask_ratio"].to(device))
        rows.append({"variant": name, "conditions_rel": relative(z, out["z_train_raster"]),
                     "logits_rel": relative(logits, out["head_logits"])})
    return rows


def check_paper_tokenizer(size: str, device: torch.device) -> dict:
    from barlab.bench import paper_tokenizer

    return paper_tokenizer.run(context(size, device))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("ci", "real"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="gpu_check")
    args = parser.parse_args(argv)
    from barlab.config.resolvers import register_resolvers

    register_resolvers()  # as every entry point does
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --size ci for the tiny run)")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "size": args.size, "torch": torch.__version__}
    for name, check in (("sampling", lambda: check_sampling(args.size, device)),
                        ("mbm_bf16", lambda: check_mbm_bf16(args.size, device)),
                        ("converted", lambda: check_converted(device)),
                        ("paper_tokenizer", lambda: check_paper_tokenizer(args.size, device))):
        start = time.perf_counter()
        try:
            report[name] = check()
        except RuntimeError as err:  # out of memory, a missing kernel: record it and go on
            report[name] = {"error": str(err).splitlines()[0]}
        report[f"{name}_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(report[name], default=str)[:400], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    main()
