"""QLoRA trained beside the baseline on a CPU build, one thread each.

Why: on a small CPU a training step does not scale with threads, so two trainings side by side,
one thread each, finish sooner than one after the other (measured: docs/decisions.md). QLoRA
reads nothing the baseline writes (it starts from the pre-trained encoder), so it is
the one training that can run beside it. When it ends, the baseline takes every thread again
from its next step. Only where both are built in this run, on CPU, with more than one core and
no --threads given; `--no-overlap` runs them one after the other.

The child process trains into a staging folder next to the artifacts; the QLoRA step of the
pipeline then waits for it and moves the folder into place, so the manifest is written by the
main process only (no two writers). A child that fails is reported in one line: its error and
where its traceback is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.manifest import ArtifactError

THREADS = 1  # per training while both run


def _exit_with_parent(parent: int) -> None:
    """A build killed by a signal runs no cleanup: the child then stops on its own."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child(cfg: Any, staging: str, log: str, queue: Any, parent: int) -> None:
    """Entry point of the spawned process: train QLoRA into `staging`, report on `queue`.

    The log stays open until the process ends, and a failure is written to it here and ends the
    process with exit code 1 (SystemExit prints nothing): re-raising after the log was closed made
    CPython print a "lost sys.stderr" dump instead of the error."""
    _exit_with_parent(parent)
    f = open(log, "a", encoding="utf-8", buffering=1)  # open until the process ends
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    try:
        import torch

        torch.set_num_threads(THREADS)
        from common.env import peak_rss_mb
        from train.qlora import train_qlora

        result = train_qlora(cfg, Path(staging))
        queue.put(("ok", {**result, "peak_rss_mb": peak_rss_mb()}))  # the child's own peak
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        import traceback

        traceback.print_exc(file=f)
        queue.put(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))
        sys.exit(1)


@dataclass
class Background:
    """A QLoRA training running in a child process."""

    proc: Any
    queue: Any
    staging: Path
    log: Path

    def collect(self, dst: Path) -> dict[str, Any]:
        """Wait for the child, move its output to `dst`, return train_qlora's result."""
        status, payload = self._result()  # before join: a large result would block the pipe
        self.proc.join()
        if status != "ok" or self.proc.exitcode != 0:
            raise ArtifactError(f"QLoRA training beside the baseline failed: {payload} "
                                f"(traceback in {self.log})")
        shutil.move(str(self.staging), str(dst))
        self.log.unlink(missing_ok=True)
        return payload

    @contextlib.contextmanager
    def sharing_cores(self) -> Iterator[None]:
        """Train on THREADS torch threads while the child runs, on all of them again from the
        first step after it has finished (train.loop.STEP_HOOKS), and after the block."""
        import torch

        from train import loop

        before = torch.get_num_threads()

        def give_back() -> None:
            if not self.proc.is_alive():
                torch.set_num_threads(before)
                loop.STEP_HOOKS.remove(give_back)

        torch.set_num_threads(THREADS)
        loop.STEP_HOOKS.append(give_back)
        try:
            yield
        finally:
            if give_back in loop.STEP_HOOKS:
                loop.STEP_HOOKS.remove(give_back)
            torch.set_num_threads(before)

    def _result(self) -> tuple[str, Any]:
        import queue

        while True:
            try:
                return self.queue.get(timeout=5)
            except queue.Empty:
                if not self.proc.is_alive():  # killed (out of memory, a signal): nothing was sent
                    return "error", f"the training process died (exit code {self.proc.exitcode})"

    def abandon(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        shutil.rmtree(self.staging, ignore_errors=True)


def start(cfg: Any, root: Path) -> Background:
    """Start train_qlora(cfg) in a spawned child (a fresh interpreter: no forked torch state)."""
    import multiprocessing as mp

    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(".qlora-overlap-*"):  # left by a build that was killed
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    staging = root / f".qlora-overlap-{os.getpid()}"
    log = root / f".qlora-overlap-{os.getpid()}.log"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(cfg, str(staging), str(log), queue, os.getpid()),
                       daemon=True)
    proc.start()
    print(f"[overlap] qlora: training beside the baseline, {THREADS} thread each (log: {log})")
    return Background(proc, queue, staging, log)


def eligible(baseline_cfg: Any, qlora_cfg: Any) -> bool:
    """CPU training for both, no explicit thread count, and more than one core."""
    from train.loop import resolve_device

    return (baseline_cfg.threads == 0 and (os.cpu_count() or 1) > 1
            and resolve_device(baseline_cfg.device) == "cpu"
            and resolve_device(qlora_cfg.device) == "cpu")

