"""Library versions and device description recorded with every artifact and report."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform

_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "peft",
             "bitsandbytes", "tensorrt", "scikit-learn", "tokenizers")


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions, read from package metadata (no heavy import)."""
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_weights_for_this_cpu() -> str:
    """The weight type for ONNX Runtime's U8-activation integer GEMMs on this CPU.

    x86 without VNNI runs U8 x S8 with VPMADDUBSW, whose int16 pair sums saturate (ONNX Runtime's
    quantization docs: "use U8U8 or reduce_range"); measured on an AVX2-only EPYC, the QAT graph
    with S8 weights agreed 98.3% (top-1) with its fake-quant PyTorch model, with U8 weights 99.8%
    at 3% more batch-1 time. VNNI (vpdpbusd) and ARM (sdot/udot) do not saturate: S8 there.
    """
    flags = cpu_flags()
    x86_no_vnni = "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    return "u8" if x86_no_vnni else "s8"


def cpu_device() -> dict[str, object]:
    flags = cpu_flags()
    return {
        "kind": "cpu",
        "name": cpu_name(),
        "cores": os.cpu_count(),
        # VNNI decides whether INT8 GEMMs beat FP32 on x86: report it next to every CPU number.
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx2": "avx2" in flags,
    }


def cuda_device(index: int = 0) -> dict[str, object]:
    import torch  # lazy: only for GPU descriptions

    props = torch.cuda.get_device_properties(index)
    return {"kind": "cuda", "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1)}
