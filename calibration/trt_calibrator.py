"""TensorRT INT8 entropy calibrator (implicit quantization, TensorRT 10.x only) fed from the same
calibration set as ONNX Runtime's reader.

The calibration cache is named by the hash of (ONNX model, calibration data, TensorRT version,
batch size), so a cache made for anything else is never found, let alone read (the old
demo/BERT builder reused any cache file that existed).

TensorRT's Python wrapper catches any exception raised in get_batch, prints it and takes it as
"no more data", so a failing feeder would silently calibrate on fewer batches. `BatchStream`
keeps the error and counts the batches served; the builder calls `check_complete()` after the
build and fails it unless the whole set was served (or a valid cache was read instead).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.calibset import CalibrationSet
from common.errors import UserError


class CalibrationIncomplete(UserError, RuntimeError):
    """The calibrator did not serve the whole calibration set."""


def cache_name(onnx_sha256: str, calib_sha256: str, trt_version: str, batch_size: int) -> str:
    key = hashlib.sha256(f"{onnx_sha256}|{calib_sha256}|{trt_version}|{batch_size}".encode())
    return f"trt-calib-{key.hexdigest()[:16]}.cache"


class CalibrationFeeder:
    """Walks the calibration set once, batch by batch, converting to the network's dtypes."""

    def __init__(self, calib: Path, batch_size: int, names: list[str],
                 dtypes: dict[str, np.dtype] | None = None):
        self.set = CalibrationSet(calib, batch_size, names)
        self.names = names
        self.dtypes = dtypes or {}
        self.i = 0

    def __len__(self) -> int:
        return len(self.set)

    @property
    def shape(self) -> tuple[int, int]:
        return self.set.batch_size, self.set.seq_len

    def next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.set):
            return None
        b = self.set.batch(self.i)
        self.i += 1
        return {n: b[n].astype(self.dtypes.get(n, np.int64), copy=False) for n in self.names}


class BatchStream:
    """What the TensorRT calibrator delegates get_batch to: serves each batch once through
    `to_device(array) -> (keep-alive object, device pointer)`, counts what it served and keeps
    the first error instead of letting TensorRT swallow it."""

    def __init__(self, feeder: Any, to_device: Callable[[np.ndarray], tuple[Any, int]]):
        self.feeder, self.to_device = feeder, to_device
        self.served = 0
        self.error: BaseException | None = None
        self.cache_read = False
        self.buffers: dict[str, Any] = {}

    def get_batch(self, names: list[str]) -> list[int] | None:
        try:
            batch = self.feeder.next()
            if batch is None:
                return None  # tells TensorRT the calibration data is exhausted
            ptrs = []
            for n in names:
                keep, ptr = self.to_device(np.ascontiguousarray(batch[n]))
                self.buffers[n] = keep  # alive until the next call
                ptrs.append(int(ptr))
            self.served += 1
            return ptrs
        except Exception as exc:  # TensorRT would print it and stop calibrating early
            self.error = self.error or exc
            return None

    def check_complete(self) -> dict[str, Any]:
        if self.error is not None:
            raise CalibrationIncomplete(
                f"INT8 calibration stopped after {self.served} of {len(self.feeder)} batches: "
                f"{type(self.error).__name__}: {self.error}") from self.error
        if not self.cache_read and self.served != len(self.feeder):
            raise CalibrationIncomplete(
                f"INT8 calibration saw {self.served} of {len(self.feeder)} batches; the engine "
                "would be calibrated on part of the set. Rebuild with `make engines`.")
        return {"batches_served": self.served, "batches": len(self.feeder),
                "cache_read": self.cache_read}


def torch_to_device(a: np.ndarray) -> tuple[Any, int]:
    import torch

    t = torch.from_numpy(a).cuda()
    return t, int(t.data_ptr())


def write_cache(path: Path, data: bytes) -> None:
    """The cache, then its sha256 beside it (`<cache>.sha256`), each under a temporary name that a
    later build cleans if this one is killed (common.workdir.clean_leftovers), renamed into
    place: a cache is only ever read whole and as written."""
    from common.manifest import write_bytes_atomic, write_text_atomic

    path = Path(path)
    write_bytes_atomic(path, data)
    write_text_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def read_cache(path: Path) -> bytes | None:
    """The cache's bytes when they are the ones written (its sha256 file agrees); else None, said
    in one line, and TensorRT calibrates again (and writes a good one)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    digest = path.with_name(path.name + ".sha256")
    want = digest.read_text(encoding="utf-8").strip() if digest.is_file() else None
    if want != hashlib.sha256(data).hexdigest():
        why = "has no sha256 beside it" if want is None else "does not match its sha256"
        print(f"[calibration] {path} {why}: not read, calibrating again")
        return None
    return data


def make_entropy_calibrator(stream: BatchStream, cache_path: Path):
    """An IInt8EntropyCalibrator2 that delegates to `stream` and reads/writes its named cache."""
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the pybind base class
            self.stream = stream
            self.cache_path = Path(cache_path)

        def get_batch_size(self) -> int:
            return self.stream.feeder.shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            return self.stream.get_batch(names)

        def read_calibration_cache(self) -> bytes | None:
            data = read_cache(self.cache_path)
            self.stream.cache_read = data is not None
            return data

        def write_calibration_cache(self, cache) -> None:
            write_cache(self.cache_path, bytes(cache))

    return EntropyCalibrator()
