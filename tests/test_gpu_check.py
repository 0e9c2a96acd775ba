"""scripts/gpu_check.py, the GPU check, run at tiny sizes on the CPU: every part runs and reports, and the
converted official generators give the official numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_runs_every_part_at_tiny_size_on_the_cpu(tmp_path):
    report = load_script().main(["--size", "ci", "--device", "cpu", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["size"] == "ci"
    assert [row["preset"] for row in report["sampling"]] == ["tiny"]
    assert report["sampling"][0]["sample_img_per_s"] > 0 and report["sampling"][0]["train_img_per_s"] > 0
    assert 0.0 <= report["mbm_bf16"]["bits_identical"] <= 1.0
    assert [row["variant"] for row in report["converted"]] == ["b", "b_p2", "b_p4", "l"]
    assert all(row["conditions_rel"] < 1e-5 and row["logits_rel"] < 1e-5 for row in report["converted"])
    assert [row["phase"] for row in report["paper_tokenizer"]["rows"]] == ["GAN off", "GAN on"]
    assert all(f"{name}_s" in report for name in ("sampling", "mbm_bf16", "converted", "paper_tokenizer"))


def test_gpu_check_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        load_script().main(["--device", "cuda"])
    assert "no CUDA device here" in capsys.readouterr().err
