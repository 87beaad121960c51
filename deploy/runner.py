"""The Runner protocol every backend implements (after Polygraphy's runners).

    with make_runner(...) as r:          # load() on enter, close() on exit
        logits = r.infer(feed)           # feed: {onnx input name: np.int64 array [batch, seq]}

No device work happens before load(), so an evaluator can run several backends one after another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.errors import UserError


class RunnerError(UserError, RuntimeError):
    """A runner could not be created or used (missing library, provider, artifact...)."""


@runtime_checkable
class Runner(Protocol):
    backend: str
    variant: str
    input_names: tuple[str, ...]

    def __enter__(self) -> Runner: ...
    def __exit__(self, *exc: object) -> None: ...
    def load(self) -> None: ...
    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...
    def close(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def files(self) -> list[Path]: ...


class BaseRunner:
    """Context-manager plumbing and the loaded-state check shared by all runners."""

    backend = "?"

    def __init__(self, variant: str, input_names: tuple[str, ...], threads: int):
        self.variant = variant
        self.input_names = tuple(input_names)
        self.threads = threads
        self._loaded = False

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RunnerError(f"{type(self).__name__}.infer() called before load()")

    def _check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"feed lacks input(s) {missing}; this model takes {list(self.input_names)}")
        return {n: np.ascontiguousarray(feed[n], dtype=np.int64) for n in self.input_names}

    def load(self) -> None:
        self._loaded = True

    def close(self) -> None:
        self._loaded = False

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "variant": self.variant, "threads": self.threads}
