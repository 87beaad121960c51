"""onnxruntime.quantization.CalibrationDataReader over a calibration set."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.calibset import CalibrationSet


def make_reader(calib: CalibrationSet) -> Any:
    from onnxruntime.quantization import CalibrationDataReader  # lazy: heavy

    class CalibrationReader(CalibrationDataReader):
        """get_next() returns the next fixed-shape feed dict, then None; rewind() restarts."""

        def __init__(self) -> None:
            self.calib = calib
            self._it = iter(self.calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(self.calib)

        def __len__(self) -> int:
            return len(self.calib)

    return CalibrationReader()
