"""What the TensorRT runtime side needs, in one place below the builder, the calibrator and the
runner (as Polygraphy keeps its trt backend together): is TensorRT usable here, which version,
which GPU an engine is tied to, and the optimization profile an engine accepts.
Never imports tensorrt at module level."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError, UserError

# Where TensorRT engines are built and run: the NGC PyTorch image (see docker/Dockerfile.gpu).
WHERE_TRT = "engines are built and run in the NGC image on a GPU (docker/Dockerfile.gpu)"


class TrtUnavailable(UserError, RuntimeError):
    """TensorRT (or the GPU it needs, or the feature asked for) is not available here."""


@dataclass(frozen=True)
class TrtProfile:
    """The one optimization profile every engine is built with, over (batch, sequence).

    min_seq 1: the shortest text is [CLS] [SEP] (2 tokens) and Triton's TensorRT backend refuses
    any request outside the profile, so the profile starts at 1 rather than at a typical length."""

    VERSION = 2
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 64
    min_seq: int = 1
    opt_seq: int = 64
    max_seq: int = 128

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ConfigError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {self}")
        if not (1 <= self.min_seq <= self.opt_seq <= self.max_seq):
            raise ConfigError(f"need 1 <= min_seq <= opt_seq <= max_seq, got {self}")

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return ((self.min_batch, self.min_seq), (self.opt_batch, self.opt_seq),
                (self.max_batch, self.max_seq))

    def admits(self, batch: int, seq: int) -> bool:
        return self.min_batch <= batch <= self.max_batch and self.min_seq <= seq <= self.max_seq


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason). The tensorrt-stubs package installs a bare `tensorrt/` folder of .pyi
    files, which imports as an empty namespace package: check for a real Builder, not the import."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return False, f"tensorrt is not installed ({exc}); {WHERE_TRT}"
    if not hasattr(trt, "Builder"):
        return False, f"only type stubs of tensorrt are installed (no runtime library); {WHERE_TRT}"
    try:
        import torch
    except ImportError:
        return False, "torch (used for CUDA buffers) is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (run the container with --gpus all)"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def require_tensorrt(what: str) -> None:
    ok, why = tensorrt_status()
    if not ok:
        raise TrtUnavailable(f"{what} needs TensorRT and a CUDA GPU: {why}")


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


def check_engine_identity(built: dict[str, Any], current: dict[str, str], path: Any) -> None:
    """Refuse an engine built for another GPU, compute capability or TensorRT version."""
    for key in ("tensorrt", "name", "compute_capability"):
        if built.get(key) != current.get(key):
            raise TrtUnavailable(
                f"{path} was built for {key} {built.get(key)!r}, this machine has "
                f"{current.get(key)!r}: TensorRT engines are tied to one GPU and TensorRT version. "
                "Rebuild it here with `make engines`.")
