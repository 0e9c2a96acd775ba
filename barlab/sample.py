"""``python -m barlab.sample``: class-balanced samples from a trained generator.

    python -m barlab.sample ckpt=outputs/train/runs/<run>/generator.pt per_class=50
    python -m barlab.sample ckpt=<run> sampling.guidance=2.0 out_dir=samples/g2
    python -m barlab.sample ckpt=<run> 'sampling.allocation=[4,4,4,4]'   # MBM head: another unmasking allocation
    python -m barlab.sample -m ckpt=<run> score=true sampling.guidance=1.5,3,5 sampling.temperature=0.5,1,2,3

Writes ``<out_dir>/images/<index>_class<label>.png`` and ``<out_dir>/samples.npz`` in ADM's format
(``arr_0``: N×H×W×3 uint8, pixels rounded, grayscale repeated to RGB; ``arr_1``: labels), ready for
``python -m barlab.evaluate`` or ADM's evaluator. Sampling is seeded: the same command gives the
same images, over any number of processes:

    torchrun --standalone --nproc_per_node=8 -m barlab.sample ckpt=<run> per_class=50   # 50k on 8 GPUs
    srun --ntasks=8 --gpus-per-task=1 python -m barlab.sample ckpt=<run> per_class=50

Each process draws its own chunks of the class-major labels (:mod:`barlab.metrics.class_balanced`)
on its own GPU, and process 0 joins them into one ``samples.npz``, the same file one process writes.
A killed run keeps its finished chunks and draws only the rest when run again.

``score=true`` scores them in process 0 (``<out_dir>/metrics.json``, as ``barlab.evaluate`` writes
it); a multirun over ``sampling.*`` is then a sampling grid of one trained generator, one folder per
point under ``<run>/sampling_grid/``, tabulated by ``barlab.analysis``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from barlab.cli import hydra_tool, require
from barlab.config.instantiate import knob_names
from barlab.utils.devices import pick_device
from barlab.utils.image_sets import images_to_tensor, npz_shapes, read_npz
from barlab.utils.integers import check_int
from barlab.utils.io import atomic_write_json

log = logging.getLogger("barlab")
# the sampler's arguments a user sets as sampling.* (an error naming one names the knob)
SAMPLING_KNOBS = {name: f"sampling.{name}" for name in ("allocation", "schedule", "guidance", "temperature", "power",
                                                         "clip_x0")}


def run(cfg: DictConfig) -> dict:
    from barlab.generator.image_generator import load_generator
    from barlab.generator.sampler import sampling_allocation
    from barlab.metrics.class_balanced import sample_to_npz
    from barlab.runtime.distributed import launched_ranks, rank_device

    require(cfg, "ckpt", "ckpt=/path/to/run/generator.pt")
    per_class = check_int(cfg.per_class, "per_class", fix="per_class=50")
    batch_size = check_int(cfg.batch_size, "batch_size", fix="batch_size=250")
    rank, world = launched_ranks()
    device = pick_device(str(cfg.device))
    device = rank_device("cuda") if device.type == "cuda" else device  # each rank its own GPU
    model, info = load_generator(str(cfg.ckpt))
    sampling = {**model.sampling, **{k: v for k, v in OmegaConf.to_container(cfg.sampling).items() if v is not None}}
    if sampling.get("allocation") is not None:  # refused here, in one line, before any sampling
        with knob_names(SAMPLING_KNOBS):
            sampling["allocation"] = list(sampling_allocation(model.head, sampling["allocation"]))
    model = model.to(device)
    num_samples = per_class * model.num_classes
    out_dir = Path(str(cfg.out_dir)) if cfg.out_dir else default_out_dir(Path(info["path"]).parent, num_samples)
    start = time.time()
    log.info("rank %d/%d: sampling %d x %d classes with %s", rank, world, per_class, model.num_classes, sampling)
    with knob_names(SAMPLING_KNOBS):
        npz = sample_to_npz(model.generate, model.num_classes, per_class, out_dir / "samples.npz", batch_size,
                            seed=int(cfg.seed), rank=rank, world=world,
                            png_dir=out_dir / "images" if cfg.png else None, record={"generator": info["path"]},
                            stall_timeout_s=float(cfg.stall_timeout_s), show_bar=rank == 0, **sampling)
    elapsed = time.time() - start
    if rank != 0:
        return {"rank": rank, "world": world, "sampling_s": round(elapsed, 1)}
    count, height, width, channels = npz_shapes(npz)["arr_0"]
    summary = {"generator": info["path"], "head": type(model.head).__name__.removesuffix("Head").lower(),
               "num_samples": count, "per_class": per_class,
               "num_classes": model.num_classes, "image_shape": [channels, height, width],
               "sampling": sampling, "seed": int(cfg.seed), "batch_size": batch_size, "device": str(device),
               "ranks": world, "sampling_s": round(elapsed, 1),
               "images_per_s": round(num_samples / max(elapsed, 1e-9), 2), "npz": str(npz),
               "png_dir": str(out_dir / "images") if cfg.png else None}
    if cfg.score:
        import torch

        from barlab.metrics.evaluation import evaluate_samples

        data = read_npz(npz)
        images, labels = images_to_tensor(data["arr_0"]), torch.from_numpy(data["arr_1"])
        scores = {"samples": str(npz), **evaluate_samples(cfg, images, labels, device)}
        atomic_write_json(out_dir / "metrics.json", scores)
        summary["metrics"] = str(out_dir / "metrics.json")
        summary.update({k: scores.get(k) for k in ("fid", "class_accuracy", "precision", "recall", "feature_label")})
    atomic_write_json(out_dir / "sample_info.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


def default_out_dir(generator_dir: Path, num_samples: int) -> Path:
    """``<generator_dir>/samples_<N>``; in a multirun the job's folder,
    ``<generator_dir>/sampling_grid/<the job's overrides>`` (configs/sample.yaml)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        return Path(HydraConfig.get().runtime.output_dir)
    return generator_dir / f"samples_{num_samples}"


main = hydra_tool("sample", run)

if __name__ == "__main__":
    main()
