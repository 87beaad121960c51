"""onnxruntime.quantization.CalibrationDataReader over the saved calibration set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.calibset import CalibrationSet


def make_reader(path: Path, batch_size: int, names: list[str]):
    from onnxruntime.quantization import CalibrationDataReader  # lazy: heavy

    class NpzCalibrationReader(CalibrationDataReader):
        """get_next() returns the next fixed-shape feed dict, then None; rewind() restarts."""

        def __init__(self) -> None:
            self.calib = CalibrationSet(path, batch_size, names)
            self._it = iter(self.calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(self.calib)

    return NpzCalibrationReader()
