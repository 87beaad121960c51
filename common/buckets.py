"""The one table of input shapes a fixed-shape runtime is prepared for: (batch, length) buckets.

Three places pad requests to a bucket and must agree: the CUDA-graph runner (deploy/
graphs_runner.py captures one graph per bucket at load), the TensorRT optimization profiles
(common/trt.py: each profile spans the table and is tuned at its typical shapes), and the Triton
tokenizer model (deploy/triton_tokenizer.py pads every batch to one length bucket, so Triton's
dynamic batcher can join requests of different lengths). Numpy only: the Triton tokenizer copies
this file into the NGC repository.

Padding is exact for an encoder classifier: padded positions are masked out of attention and the
classifier reads the first token, so a row's logits do not depend on the padding (tests check it),
and extra batch rows are copies of a real row whose outputs are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BucketError(ValueError):
    pass


@dataclass(frozen=True)
class Buckets:
    # Token lengths: with MiniLM's tokenizer the test split's sentences take 5-66 tokens (median
    # 20, 60 distinct lengths); four buckets keep the padding under 2x (above 16 tokens) and the
    # captured graphs few.
    lengths: tuple[int, ...] = (16, 32, 64, 128)
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # where the TensorRT profiles are tuned: batch 1 at a typical sentence, batched at the
    # evaluator's batch of 32 padded to its longest sentence
    opt_length_b1: int = 32
    opt_batch: int = 32
    opt_length_batched: int = 64

    def __post_init__(self) -> None:
        for name in ("lengths", "batches"):
            v = getattr(self, name)
            if not v or list(v) != sorted(set(v)) or v[0] < 1:
                raise BucketError(f"{name} must be increasing positive integers, not {v}")
        if self.batches[0] != 1:
            raise BucketError("the batch buckets must start at 1 (single requests)")
        if not (self.opt_length_b1 in self.lengths and self.opt_length_batched in self.lengths
                and self.opt_batch in self.batches):
            raise BucketError("the TensorRT tuning shapes must be buckets of the table")

    def length_buckets(self, max_length: int) -> tuple[int, ...]:
        """The length buckets a model of `max_length` tokens uses: those below it, then it."""
        return tuple(x for x in self.lengths if x < max_length) + (max_length,)

    def length_for(self, n: int, max_length: int) -> int:
        if n > max_length:
            raise BucketError(f"{n} tokens is longer than the max length {max_length}")
        return next(x for x in self.length_buckets(max_length) if x >= n)

    def batch_for(self, n: int) -> int:
        if n > self.batches[-1]:
            raise BucketError(f"batch {n} is above the largest batch bucket {self.batches[-1]}; "
                              "split the request or widen the table")
        return next(x for x in self.batches if x >= n)

    def shapes(self, max_length: int) -> list[tuple[int, int]]:
        """Every (batch, length) bucket, smallest first."""
        return [(b, n) for b in self.batches for n in self.length_buckets(max_length)]


def pad_feed(feed: dict[str, np.ndarray], batch: int, length: int,
             pad_id: int) -> dict[str, np.ndarray]:
    """A feed padded to (batch, length): pad ids with mask 0 on the right; extra rows repeat the
    first row (real tokens, so nothing degenerate runs; their outputs are dropped)."""
    rows, width = next(iter(feed.values())).shape
    if rows > batch or width > length:
        raise BucketError(f"feed of shape ({rows}, {width}) does not fit bucket ({batch}, {length})")
    out = {}
    for name, a in feed.items():
        fill = pad_id if name == "input_ids" else 0
        p = np.full((batch, length), fill, dtype=a.dtype)
        p[:rows, :width] = a
        p[rows:, :width] = a[:1]
        out[name] = p
    return out
