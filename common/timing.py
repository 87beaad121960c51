"""The one timing loop: wall clock around each call, its input prepared outside the timed window."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def time_each(run: Callable[[T], Any], inputs: Iterable[T], warmup: Iterable[T] = (),
              progress: str | None = None, keep: bool = False) -> tuple[np.ndarray, list[Any]]:
    """Run `run` on each warm-up input (untimed), then on each input with a perf_counter around
    the call alone. Returns (seconds per call, the outputs if keep else [])."""
    for x in warmup:
        run(x)
    seq = inputs
    if progress is not None:
        from tqdm.auto import tqdm

        seq = tqdm(inputs, desc=progress, leave=False)
    times: list[float] = []
    outs: list[Any] = []
    for x in seq:
        t0 = time.perf_counter()
        y = run(x)
        times.append(time.perf_counter() - t0)
        if keep:
            outs.append(y)
    return np.asarray(times, dtype=np.float64), outs
