"""Is TensorRT usable here, which version, which GPU. Never imports tensorrt at module level."""

from __future__ import annotations

import importlib


class TrtUnavailable(RuntimeError):
    pass


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason). The tensorrt-stubs package installs a bare `tensorrt/` folder of .pyi
    files, which imports as an empty namespace package: check for a real Builder, not the import."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return False, f"tensorrt is not installed ({exc}); use the NGC image in docker/Dockerfile.gpu"
    if not hasattr(trt, "Builder"):
        return False, "only type stubs of tensorrt are installed (no runtime library)"
    try:
        import torch
    except ImportError:
        return False, "torch (used for CUDA buffers) is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (run the container with --gpus all)"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def require_implicit_int8(version: str) -> None:
    """TensorRT 11 removed IInt8EntropyCalibrator2, BuilderFlag.INT8 and int8_calibrator."""
    if trt_major(version) >= 11:
        raise TrtUnavailable(
            f"TensorRT {version} has no implicit INT8 calibration (removed in TensorRT 11). Use the "
            "explicit-quantization path instead: `python -m evaluate --backend trt --variant ptq` "
            "(built from the Q/DQ ONNX of the ORT PTQ) or `--variant qat`; or build in an image "
            "with TensorRT 10.x (docker/Dockerfile.gpu pins one).")


def gpu_identity() -> dict[str, str]:
    """What an engine is tied to: TensorRT version, GPU name and compute capability."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"kind": "cuda", "name": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}
