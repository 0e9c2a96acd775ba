"""What machine a benchmark ran on: CPU model and instruction flags, threads, torch, GPU."""

from __future__ import annotations

import functools
import os
import platform
import subprocess

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@functools.cache
def first_cpu_fields() -> dict[str, str]:
    """The ``key: value`` fields of the first processor in /proc/cpuinfo (empty where it is unreadable);
    read once per process (the model, flags and family / model / stepping all come from here)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo (else ``lscpu``, else platform)."""
    fields = first_cpu_fields()
    model = fields.get("model name", "")
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if not model:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
            model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        except (OSError, subprocess.SubprocessError):
            pass
    return model or platform.processor() or "unknown", flags


def cpu_id() -> str:
    """``family 25 model 17 stepping 1``: tells apart CPUs that share a model name (``AMD EPYC``), whose
    numerics and speeds can differ; empty where /proc/cpuinfo has no such fields."""
    fields = first_cpu_fields()
    return " ".join(f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or AMX), not by emulation."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_model_and_flags()[1])


def machine_info() -> dict:
    """Everything needed to compare two benchmark runs: host, CPU, threads, torch, GPU."""
    model, flags = cpu_model_and_flags()
    info = {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": model, "cpu_id": cpu_id(), "cpu_count": os.cpu_count(),
            "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "torch": torch.__version__, "torch_num_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1),
                       "count": torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported()}
    return info
