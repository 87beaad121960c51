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


def first_calls(run: Callable[[dict[str, np.ndarray]], Any], feeds: Iterable[dict[str, np.ndarray]],
                progress: str | None = None) -> dict[tuple[int, ...], float]:
    """Run `run` once on the first feed of every distinct input shape, timing each call: these
    first calls pay for what a runtime prepares per shape (kernel choice, attention plans, graph
    capture, allocator growth), so they are measured apart and never mixed into warm timings."""
    seen: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
    for feed in feeds:
        seen.setdefault(next(iter(feed.values())).shape, feed)
    seq: Iterable[tuple[tuple[int, ...], dict[str, np.ndarray]]] = seen.items()
    if progress is not None:
        from tqdm.auto import tqdm

        seq = tqdm(list(seen.items()), desc=progress, leave=False)
    out = {}
    for shape, feed in seq:
        t0 = time.perf_counter()
        run(feed)
        out[shape] = time.perf_counter() - t0
    return out
