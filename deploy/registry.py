"""Which artifact each (backend, variant) runs, and how to build its Runner.

Every runner is created through `make_runner`, which first checks the artifact against the
manifest (present, intact, built from the current inputs) and refuses it otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.manifest import ArtifactError, Manifest
from deploy.runner import Runner, RunnerError


@dataclass(frozen=True)
class Variant:
    backend: str
    variant: str
    artifact: str  # manifest entry name
    about: str


VARIANTS: tuple[Variant, ...] = (
    Variant("torch", "fp32", "baseline", "fine-tuned FP32 checkpoint in PyTorch"),
    Variant("ort", "fp32", "onnx-fp32", "FP32 ONNX export (plain graph)"),
)


def find_variant(backend: str, variant: str) -> Variant:
    for v in VARIANTS:
        if v.backend == backend and v.variant == variant:
            return v
    known = ", ".join(f"{v.backend}/{v.variant}" for v in VARIANTS)
    raise RunnerError(f"unknown variant {backend}/{variant}; known: {known}")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def baseline_meta(artifacts: Path) -> dict:
    """recipe.json of the baseline: max_length and input names every variant shares."""
    man = Manifest(artifacts)
    path = man.verify("baseline", check_hash=False)
    return json.loads((path / "recipe.json").read_text())


def make_runner(backend: str, variant: str, artifacts: Path | str, threads: int | None = None,
                device: str = "cpu") -> Runner:
    artifacts = Path(artifacts)
    spec = find_variant(backend, variant)
    threads = threads or default_threads()
    man = Manifest(artifacts)
    try:
        path = man.verify(spec.artifact)
    except ArtifactError as exc:
        raise RunnerError(str(exc)) from exc
    names = tuple(baseline_meta(artifacts)["input_names"])
    baseline = artifacts / man.get("baseline")["path"]
    if backend == "torch":
        from deploy.torch_runner import TorchRunner

        if variant == "fp32":
            return TorchRunner(path, names, threads, device=device)
        return TorchRunner(baseline, names, threads, device=device, variant=variant, state_dict=path)
    if backend == "ort":
        from deploy.ort_runner import OrtRunner

        return OrtRunner(path, names, threads, provider=device, variant=variant)
    raise RunnerError(f"backend {backend!r} has no runner yet")
