"""The reader of a saved calibration set (.npz of int64 arrays keyed by ONNX input name), shared
by ONNX Runtime's calibration reader, the TensorRT calibrator and QAT's amax calibration; the set
is built by calibration.calibset."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from common.manifest import ArtifactError


class CalibrationSet:
    """The saved arrays, served as fixed-shape batches in file order."""

    def __init__(self, path: Path, batch_size: int, names: list[str] | None = None,
                 rows: int = 0):
        """rows > 0: only the first `rows` rows (a prefix of the draw is itself a sample)."""
        try:
            with np.load(path) as z:
                keys = [k for k in z.files if k != "rows"]
                missing = sorted(set(names or keys) - set(keys))
                if missing:
                    raise ArtifactError(f"{path} has no input(s) {missing}: it was made for another "
                                        "model; rebuild it with `make engines`")
                self.arrays = {k: z[k] for k in (names or keys)}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # truncated, not an .npz
            raise ArtifactError(f"{path} is not a readable calibration set ({exc}); rebuild it "
                                "with `make engines`") from None
        shapes = {v.shape for v in self.arrays.values()}
        if len(shapes) != 1:
            raise ArtifactError(f"{path}: inputs have different shapes {shapes}")
        self.n, self.seq_len = shapes.pop()
        if rows:
            if rows > self.n:
                raise ArtifactError(f"{path} holds {self.n} rows, {rows} asked for: rebuild it with "
                                    f"a larger --calib-size")
            self.arrays = {k: v[:rows] for k, v in self.arrays.items()}
            self.n = rows
        self.batch_size = batch_size

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], batch_size: int) -> CalibrationSet:
        self = cls.__new__(cls)
        self.arrays = arrays
        self.n, self.seq_len = next(iter(arrays.values())).shape
        self.batch_size = batch_size
        return self

    def __len__(self) -> int:
        """Number of full batches (a last partial batch is dropped: fixed shapes)."""
        return self.n // self.batch_size

    def batch(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return {k: np.ascontiguousarray(v[s]) for k, v in self.arrays.items()}

    def __iter__(self):
        return (self.batch(i) for i in range(len(self)))


