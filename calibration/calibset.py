"""Build and read the calibration set: an .npz of int64 arrays keyed by ONNX input name.

Drawn from the validation split only, with a seed; every row is padded to one fixed length,
because ORT's Entropy/Percentile calibrators collect histograms per tensor and need every batch
to have one shape, and a TensorRT calibrator fills fixed-size device buffers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.data import load_split
from common.feeds import encode

SPLIT = "validation"  # never "test": calibrating on test data would leak it into the variant


@dataclass(frozen=True)
class CalibConfig:
    size: int = 256  # rows drawn from validation
    seed: int = 0
    batch_size: int = 16
    # "longest": pad every row to the longest sampled row, rounded up to a multiple of 8;
    # an integer (e.g. "64"): pad/truncate every row to that many tokens.
    seq_len: str = "longest"

    def __post_init__(self) -> None:
        if self.size < 1 or self.batch_size < 1:
            raise ValueError("calibration size and batch size must be >= 1")
        if self.seq_len != "longest" and not self.seq_len.isdigit():
            raise ValueError(f"seq_len must be 'longest' or an integer, not {self.seq_len!r}")


def build_calibration_set(data: str, tokenizer, names: list[str], max_length: int,
                          cfg: CalibConfig, out: Path) -> dict:
    val = load_split(data, SPLIT)
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.size, len(val))
    idx = np.sort(rng.choice(len(val), size=n, replace=False))
    fixed = int(cfg.seq_len) if cfg.seq_len.isdigit() else None
    enc = encode(tokenizer, [val.texts[i] for i in idx], fixed or max_length)
    width = fixed or int(-(-int(enc.lengths().max()) // 8) * 8)
    feed = enc.batch(list(range(n)), names, pad_to=width)
    with open(out, "wb") as f:  # np.savez on a handle: no ".npz" appended to the temp name
        np.savez(f, **feed, rows=idx.astype(np.int64))
    return {"rows": n, "seq_len": width, "split": SPLIT, "config": asdict(cfg),
            "source": val.source, "source_sha256": val.fingerprint}


class CalibrationSet:
    """The saved arrays, served as fixed-shape batches in file order."""

    def __init__(self, path: Path, batch_size: int, names: list[str] | None = None):
        with np.load(path) as z:
            keys = [k for k in z.files if k != "rows"]
            self.arrays = {k: z[k] for k in (names or keys)}
        shapes = {v.shape for v in self.arrays.values()}
        if len(shapes) != 1:
            raise ValueError(f"{path}: inputs have different shapes {shapes}")
        self.n, self.seq_len = shapes.pop()
        self.batch_size = batch_size

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


def describe(path: Path) -> str:
    with np.load(path) as z:
        return json.dumps({k: list(z[k].shape) for k in z.files})
