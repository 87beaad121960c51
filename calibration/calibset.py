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

from common.checkpoint import TextEncoder
from common.config import check_ranges, doc
from common.data import Split
from common.errors import ConfigError
from common.task import load_split

SPLIT = "validation"  # never "test": calibrating on test data would leak it into the variant


@dataclass(frozen=True)
class CalibConfig:
    # 1024: static PTQ searches 256 and 1024 rows (prefixes of this draw); TensorRT's entropy
    # calibrator and QAT's amax calibration read the whole set
    size: int = doc(1024, "rows drawn from validation (kept in draw order)")
    seed: int = 0
    batch_size: int = 16
    seq_len: str = doc("longest", "'longest': pad every row to the longest sampled row, rounded "
                       "up to a multiple of 8; an integer: pad/truncate every row to that length")

    def __post_init__(self) -> None:
        check_ranges(self, size=">= 1", batch_size=">= 1", seed=">= 0")
        if self.size < self.batch_size:
            raise ConfigError(f"the calibration set's size {self.size} is less than one batch "
                              f"({self.batch_size}): raise --calib-size or lower "
                              "--calib-batch-size")
        if self.seq_len != "longest" and not self.seq_len.isdigit():
            raise ConfigError(f"seq_len must be 'longest' or an integer, not {self.seq_len!r}")


def sample_calibration(val: Split, te: TextEncoder, size: int, seed: int,
                       seq_len: str = "longest") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`size` rows of `val` (the validation split) drawn with `seed`, kept in draw order (so the
    first k of them are themselves a uniform sample of k rows), tokenized as the model was
    trained (pairs as pairs), padded to one width. Returns (feed, row indices)."""
    rng = np.random.default_rng(seed)
    n = min(size, len(val))
    idx = rng.choice(len(val), size=n, replace=False)
    fixed = int(seq_len) if seq_len.isdigit() else None
    sample = TextEncoder(te.tokenizer, fixed or te.max_length, te.input_names, te.pair)
    enc = sample.encode_split(val.take(idx.tolist()))
    width = fixed or int(-(-int(enc.lengths().max()) // 8) * 8)
    return enc.batch(list(range(n)), list(te.input_names), pad_to=width), idx.astype(np.int64)


def build_calibration_set(data: str | Path, te: TextEncoder, cfg: CalibConfig, out: Path) -> dict:
    """The calibration set of the task in `data` (a build's task folder), written to `out`."""
    val = load_split(data, SPLIT)
    if min(cfg.size, len(val)) < cfg.batch_size:  # ONNX Runtime would say "No data is collected"
        raise ConfigError(f"the {SPLIT} split of {val.source} has {len(val)} rows, fewer than one "
                          f"calibration batch ({cfg.batch_size}): lower --calib-batch-size")
    feed, idx = sample_calibration(val, te, cfg.size, cfg.seed, cfg.seq_len)
    with open(out, "wb") as f:  # np.savez on a handle: no ".npz" appended to the temp name
        np.savez(f, **feed, rows=idx)
    return {"rows": len(idx), "seq_len": int(feed[te.input_names[0]].shape[1]), "split": SPLIT,
            "config": asdict(cfg), "source": val.source, "source_sha256": val.fingerprint}


def describe(path: Path) -> str:
    with np.load(path) as z:
        return json.dumps({k: list(z[k].shape) for k in z.files})
