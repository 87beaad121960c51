"""Which artifact each (backend, variant) runs, and how to build its Runner.

Every runner is created through `make_runner`, which first checks the artifact against the
manifest (present, intact, built from the current inputs) and refuses it otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from common import variants
from common.checkpoint import baseline_meta
from common.manifest import ArtifactError, Manifest
from common.variants import Variant
from deploy.runner import Runner, RunnerError


def find_variant(backend: str, variant: str) -> Variant:
    try:
        return variants.find_variant(backend, variant)
    except variants.UnknownVariant as exc:
        raise RunnerError(str(exc)) from None


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_runner(backend: str, variant: str, artifacts: Path | str, threads: int | None = None,
                device: str = "cpu", spin: bool = True) -> Runner:
    """spin=False: ONNX Runtime's intra-op threads sleep between runs (ort backend only)."""
    artifacts = Path(artifacts)
    if not spin and backend != "ort":
        raise RunnerError(f"spin=False is an ONNX Runtime setting; {backend}/{variant} has none")
    spec = find_variant(backend, variant)
    threads = threads or default_threads()
    if backend == "trt":  # say what is missing here before saying what is not built
        from common.trt import require_tensorrt

        require_tensorrt(f"trt/{variant}")
    man = Manifest(artifacts)
    try:
        path = man.verify(spec.artifact)
    except ArtifactError as exc:
        raise RunnerError(str(exc)) from exc
    names = tuple(baseline_meta(artifacts)["input_names"])
    baseline = artifacts / man.get("baseline")["path"]
    if spec.device == "cuda" and not device.startswith("cuda"):
        raise RunnerError(f"{backend}/{variant} runs on a CUDA GPU only: pass --device cuda "
                          "(on a machine with one)")
    if backend == "torch":
        from deploy.torch_runner import TorchRunner

        if variant in {"fp32", "fp16"}:
            return TorchRunner(path, names, threads, device=device, variant=variant,
                               dtype="float16" if variant == "fp16" else "float32")
        return TorchRunner(baseline, names, threads, device=device, variant=variant, state_dict=path)
    if backend == "ort":
        from deploy.ort_runner import OrtRunner

        return OrtRunner(path, names, threads, provider=device, variant=variant, spin=spin)
    if backend == "qlora":
        from deploy.qlora_runner import QloraRunner

        return QloraRunner(path, names, threads, device=device, variant=variant)
    if backend == "trt":
        from common.config import from_recipe
        from common.trt import TrtProfile
        from deploy.trt_runner import TrtRunner

        e = man.get(spec.artifact)
        profile = from_recipe(TrtProfile, e["trt"]["fields"]["profile"], f"{spec.artifact}'s profile")
        return TrtRunner(path, names, e["device"], profile, variant)
    raise RunnerError(f"backend {backend!r} has no runner yet")
