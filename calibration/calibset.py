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

from common.config import check_ranges, doc
from common.data import load_split
from common.errors import ConfigError
from common.feeds import encode

SPLIT = "validation"  # never "test": calibrating on test data would leak it into the variant


@dataclass(frozen=True)
class CalibConfig:
    VERSION = 2
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


def sample_calibration(data: str, tokenizer, names: list[str], max_length: int, size: int,
                       seed: int, seq_len: str = "longest") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`size` validation rows drawn with `seed`, kept in draw order (so the first k of them are
    themselves a uniform sample of k rows), padded to one width. Returns (feed, row indices)."""
    val = load_split(data, SPLIT)
    rng = np.random.default_rng(seed)
    n = min(size, len(val))
    idx = rng.choice(len(val), size=n, replace=False)
    fixed = int(seq_len) if seq_len.isdigit() else None
    enc = encode(tokenizer, [val.texts[i] for i in idx], fixed or max_length)
    width = fixed or int(-(-int(enc.lengths().max()) // 8) * 8)
    return enc.batch(list(range(n)), names, pad_to=width), idx.astype(np.int64)


def build_calibration_set(data: str, tokenizer, names: list[str], max_length: int,
                          cfg: CalibConfig, out: Path) -> dict:
    n_val = len(load_split(data, SPLIT))
    if min(cfg.size, n_val) < cfg.batch_size:  # ONNX Runtime would say "No data is collected"
        raise ConfigError(f"the {SPLIT} split of {data} has {n_val} rows, fewer than one "
                          f"calibration batch ({cfg.batch_size}): lower --calib-batch-size")
    feed, idx = sample_calibration(data, tokenizer, names, max_length, cfg.size, cfg.seed,
                                   cfg.seq_len)
    with open(out, "wb") as f:  # np.savez on a handle: no ".npz" appended to the temp name
        np.savez(f, **feed, rows=idx)
    val = load_split(data, SPLIT)
    return {"rows": len(idx), "seq_len": int(feed[names[0]].shape[1]), "split": SPLIT,
            "config": asdict(cfg), "source": val.source, "source_sha256": val.fingerprint}


def describe(path: Path) -> str:
    with np.load(path) as z:
        return json.dumps({k: list(z[k].shape) for k in z.files})
