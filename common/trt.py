"""What the TensorRT runtime side needs, in one place below the builder, the calibrator and the
runner (as Polygraphy keeps its trt backend together): is TensorRT usable here, which version,
which GPU an engine is tied to, the optimization profiles an engine accepts, and whether the
Triton image can load a plan. Never imports tensorrt at module level."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.buckets import Buckets
from common.errors import ConfigError, UserError

# Where TensorRT engines are built and run: the NGC PyTorch image (see docker/Dockerfile.gpu).
WHERE_TRT = "engines are built and run in the NGC image on a GPU (docker/Dockerfile.gpu)"
TRITON_DOCKERFILE = Path(__file__).resolve().parents[1] / "docker" / "Dockerfile.triton"
# TensorRT of each NGC tritonserver release docker/Dockerfile.triton has pinned (NVIDIA's
# frameworks support matrix); an `ARG TENSORRT_VERSION=` in that Dockerfile takes precedence.
TRITON_TRT = {"25.01": "10.8", "25.10": "10.13"}

Shape = tuple[int, int]
ProfileShapes = tuple[Shape, Shape, Shape]


class TrtUnavailable(UserError, RuntimeError):
    """TensorRT (or the GPU it needs, or the feature asked for) is not available here."""


class OutsideProfiles(UserError, ValueError):
    """A (batch, sequence) shape no optimization profile of the engine admits."""


@dataclass(frozen=True)
class TrtProfile:
    """The optimization profiles every engine is built with, over (batch, sequence), from the
    bucket table (common/buckets.py) and the longest sequence:

    - profile 0, single requests: min (1, min_seq), opt (1, opt_length_b1), max (1, max_seq);
    - profile 1, batches: min (2, min_seq), opt (opt_batch, opt_length_batched),
      max (largest batch bucket, max_seq).

    One profile tuned at (32, 64) left single requests on kernels chosen for batch 32. The batch
    ranges do not overlap, so exactly one profile admits a shape: the runner and Triton's
    tensorrt backend (instance_group profile ["0", "1"]) pick the same one. Tuning lengths above
    max_seq are clamped to it.

    min_seq 1: the shortest text is [CLS] [SEP] (2 tokens) and Triton's TensorRT backend refuses
    any request outside the profiles, so they start at 1 rather than at a typical length."""
    buckets: Buckets = field(default_factory=Buckets)
    min_seq: int = 1
    max_seq: int = Buckets().lengths[-1]  # the model's max length

    def __post_init__(self) -> None:
        if not 1 <= self.min_seq <= self.max_seq:
            raise ConfigError(f"need 1 <= min_seq <= max_seq, got min_seq {self.min_seq}, "
                              f"max_seq {self.max_seq}")

    @property
    def max_batch(self) -> int:
        return self.buckets.batches[-1]

    def _seq(self, n: int) -> int:
        return min(max(n, self.min_seq), self.max_seq)

    def profiles(self) -> list[ProfileShapes]:
        """(min, opt, max) of each profile, in the order the builder adds them."""
        b = self.buckets
        out = [((1, self.min_seq), (1, self._seq(b.opt_length_b1)), (1, self.max_seq))]
        if self.max_batch > 1:
            out.append(((2, self.min_seq), (max(2, b.opt_batch), self._seq(b.opt_length_batched)),
                        (self.max_batch, self.max_seq)))
        return out

    def triton_profiles(self) -> list[str]:
        """What a Triton tensorrt model's instance_group must list as `profile` to use every
        profile (unlisted, the backend uses profile 0 only: batch 1 here)."""
        return [str(i) for i in range(len(self.profiles()))]

    def shapes(self) -> ProfileShapes:
        """The envelope of all profiles: (smallest, the batched opt, largest)."""
        return (1, self.min_seq), self.profiles()[-1][1], (self.max_batch, self.max_seq)

    def admits(self, batch: int, seq: int) -> bool:
        return any(lo[0] <= batch <= hi[0] and lo[1] <= seq <= hi[1]
                   for lo, _, hi in self.profiles())

    def profile_for(self, batch: int, seq: int) -> int:
        """The index of the one profile admitting (batch, seq); OutsideProfiles names the flag
        that widens the profiles."""
        for i, (lo, _, hi) in enumerate(self.profiles()):
            if lo[0] <= batch <= hi[0] and lo[1] <= seq <= hi[1]:
                return i
        fixes = []
        if batch > self.max_batch:
            wider = ",".join(map(str, self.buckets.batches + (max(batch, 2 * self.max_batch),)))
            fixes.append(f"--trt-profile-buckets-batches {wider}")
        if seq > self.max_seq:
            fixes.append(f"--trt-profile-max-seq {seq}")
        if 1 <= seq < self.min_seq:
            fixes.append(f"--trt-profile-min-seq {seq}")
        how = (f"rebuild with wider profiles: `python -m engines {' '.join(fixes)}`" if fixes
               else "batch and sequence must be at least 1")
        raise OutsideProfiles(f"shape (batch {batch}, sequence {seq}) is outside the engine's "
                              f"optimization profiles {self.profiles()}; {how}")


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


def gpu_identity(index: int = 0) -> dict[str, str]:
    """What an engine is tied to: TensorRT version, GPU name and compute capability (of GPU
    `index`: the one the engine is built or run on)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return {"kind": "cuda", "name": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def check_engine_identity(built: dict[str, Any], current: dict[str, str], path: Any) -> None:
    """Refuse an engine built for another GPU, compute capability or TensorRT version."""
    for key in ("tensorrt", "name", "compute_capability"):
        if built.get(key) != current.get(key):
            raise TrtUnavailable(
                f"{path} was built for {key} {built.get(key)!r}, this machine has "
                f"{current.get(key)!r}: TensorRT engines are tied to one GPU and TensorRT version. "
                "Rebuild it here with `make engines`.")


def _major_minor(version: str, what: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(version).strip())
    if not m:
        raise TrtUnavailable(f"{what} {version!r} is not a TensorRT version (major.minor[.patch])")
    return int(m.group(1)), int(m.group(2))


def check_plan_for_server(built_trt_version: str, server_trt_version: str, path: Any) -> None:
    """Refuse a plan the Triton image cannot load. A plan is tied to the TensorRT version that
    built it (unless built version-compatible, which these are not) and Triton's tensorrt backend
    refuses another one ("Version tag does not match"); NGC images pin TensorRT by major.minor."""
    built = _major_minor(built_trt_version, f"{path} records TensorRT")
    server = _major_minor(server_trt_version, "the server's TensorRT")
    if built != server:
        raise TrtUnavailable(
            f"{path} was built with TensorRT {built_trt_version}, the Triton image runs TensorRT "
            f"{server_trt_version}, and Triton's tensorrt backend refuses a plan from another "
            f"TensorRT version: rebuild the engine (`make engines`) in the image whose TensorRT "
            f"is {server[0]}.{server[1]} (docker/Dockerfile.gpu of the same NGC release as "
            "docker/Dockerfile.triton), or serve the ONNX variant (--backend ort)")


def triton_trt_version(dockerfile: Path = TRITON_DOCKERFILE) -> str:
    """The TensorRT major.minor of the NGC tritonserver image the repository targets: the
    Dockerfile's `ARG TENSORRT_VERSION` if it states one, else its BASE_IMAGE tag looked up in
    TRITON_TRT; checked against its `ARG TENSORRT_MAJOR`."""
    if not Path(dockerfile).is_file():
        raise TrtUnavailable(f"{dockerfile} is missing: it names the Triton image (and so its "
                             "TensorRT version); run from the repository root")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", Path(dockerfile).read_text(), flags=re.M))
    tag = args.get("BASE_IMAGE", "").rsplit(":", 1)[-1].removesuffix("-py3")
    version = args.get("TENSORRT_VERSION") or TRITON_TRT.get(tag)
    if version is None:
        raise TrtUnavailable(f"{dockerfile}: no TensorRT version known for tritonserver {tag!r}; "
                             "add `ARG TENSORRT_VERSION=<major.minor>` (NVIDIA's frameworks "
                             "support matrix lists it) or a row to common/trt.py TRITON_TRT")
    major = args.get("TENSORRT_MAJOR")
    if major is not None and str(_major_minor(version, "TENSORRT_VERSION")[0]) != major:
        raise TrtUnavailable(f"{dockerfile}: TENSORRT_MAJOR {major} disagrees with TensorRT "
                             f"{version} of tritonserver {tag}: correct the ARGs")
    return version
