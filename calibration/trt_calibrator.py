"""TensorRT INT8 entropy calibrator (implicit quantization, TensorRT 10.x only) fed from the same
calibration set as ONNX Runtime's reader.

The calibration cache is named by the hash of (ONNX model, calibration data, TensorRT version,
batch size), so a cache made for anything else is never found, let alone read (the old
demo/BERT builder reused any cache file that existed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common.calibset import CalibrationSet


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

    @property
    def shape(self) -> tuple[int, int]:
        return self.set.batch_size, self.set.seq_len

    def next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.set):
            return None
        b = self.set.batch(self.i)
        self.i += 1
        return {n: b[n].astype(self.dtypes.get(n, np.int64), copy=False) for n in self.names}


def make_entropy_calibrator(feeder: CalibrationFeeder, cache_path: Path):
    """An IInt8EntropyCalibrator2 whose get_batch copies the next batch into CUDA buffers."""
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the pybind base class
            self.feeder = feeder
            self.cache_path = Path(cache_path)
            self.buffers: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return self.feeder.shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = self.feeder.next()
            if batch is None:
                return None  # tells TensorRT the calibration data is exhausted
            ptrs = []
            for n in names:
                t = torch.from_numpy(np.ascontiguousarray(batch[n])).cuda()
                self.buffers[n] = t  # keep alive until the next call
                ptrs.append(int(t.data_ptr()))
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(cache))
            tmp.replace(self.cache_path)

    return EntropyCalibrator()
