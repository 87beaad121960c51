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
        "amx": "amx_tile" in flags,  # MLAS's INT8 GEMMs use AMX tiles where present
        "avx2": "avx2" in flags,
    }


def cuda_driver() -> dict[str, str | None]:
    """The NVIDIA driver's version (/proc/driver/nvidia/version) and the newest CUDA it supports
    (cuDriverGetVersion from libcuda), without pynvml; None where not found."""
    import ctypes
    import re

    out: dict[str, str | None] = {"driver": None, "driver_cuda": None}
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", f.read())
            out["driver"] = m.group(1) if m else None
    except OSError:
        pass
    try:
        v = ctypes.c_int(0)
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0:
            out["driver_cuda"] = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except (OSError, AttributeError):
        pass
    return out


def cuda_index(device: int | str = "cuda") -> int:
    """The GPU number a device names: `cuda:N` -> N; `cuda` -> torch's current device."""
    if isinstance(device, int):
        return device
    head, colon, num = str(device).partition(":")
    if head != "cuda" or (colon and not num.isdigit()):
        raise ValueError(f"not a CUDA device: {device!r} (cuda or cuda:N)")
    if num:
        return int(num)
    import torch  # lazy: only for GPU descriptions

    return int(torch.cuda.current_device())


def reset_gpu_peak(device: str) -> None:
    """Start torch's peak-memory count afresh on `device` (nothing on a CPU device)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(cuda_index(device))


def gpu_memory(device: str) -> dict[str, object] | None:
    """GPU memory as a run leaves it (None on a CPU device): torch's peak allocation since
    reset_gpu_peak, and the device's memory in use now by every allocator (ONNX Runtime's and
    TensorRT's are not torch's) and every process on it."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    index = cuda_index(device)
    free, total = torch.cuda.mem_get_info(index)
    return {"torch_peak_allocated_mb": round(torch.cuda.max_memory_allocated(index) / 1e6, 1),
            "device_in_use_mb": round((total - free) / 1e6, 1),
            "note": "device_in_use_mb counts every allocator and every process on the GPU"}


def cuda_device(device: int | str = "cuda") -> dict[str, object]:
    """What a GPU number was measured on (`device`: cuda, cuda:N or N): the GPU, its number,
    compute capability and memory, the driver, the CUDA runtime and cuDNN torch uses."""
    import torch  # lazy: only for GPU descriptions

    index = cuda_index(device)
    props = torch.cuda.get_device_properties(index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"kind": "cuda", "index": index, "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), **cuda_driver(),
            "cuda_runtime": torch.version.cuda, "cudnn": cudnn, "torch": torch.__version__}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """This process' peak resident memory since start or the last reset_peak_rss (MB)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return kb / 1024


def reset_peak_rss() -> bool:
    """Restart the peak count at the current RSS (Linux: writing 5 to /proc/self/clear_refs);
    False where the kernel does not allow it (then peaks are since process start)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """with peak_memory() as p: ...  then p.mb is the peak RSS of that block (MB, this process)."""

    def __init__(self) -> None:
        self.mb: float | None = None
        self.since_start = False

    def __enter__(self) -> PeakMemory:
        self.since_start = not reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        mb = peak_rss_mb()
        self.mb = None if mb is None else round(mb, 1)


def peak_memory() -> PeakMemory:
    return PeakMemory()
