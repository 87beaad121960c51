"""How each registered variant (common/variants.py) becomes a Runner.

One factory per runner key (by default the variant's backend), registered with `@runner_factory`.
Every runner is created through `make_runner`, which first says whether the variant can run here
(`common.variants.unavailable`), then checks the artifact against the manifest (present, intact,
its recipe matching its key, built from the current inputs) and refuses it otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import variants
from common.buckets import Buckets
from common.checkpoint import baseline_meta
from common.manifest import ArtifactError, Manifest
from common.variants import Variant

if TYPE_CHECKING:
    from common.trt import TrtProfile
from deploy.runner import Runner, RunnerError


@dataclass(frozen=True)
class RunnerRequest:
    """What a runner factory gets: the variant, its verified artifact and how to run it."""

    variant: Variant
    path: Path  # the artifact (verified against the manifest)
    entry: dict[str, Any]  # its manifest entry
    manifest: Manifest
    input_names: tuple[str, ...]
    threads: int
    device: str
    spin: bool


_FACTORIES: dict[str, Callable[[RunnerRequest], Runner]] = {}


def runner_factory(key: str) -> Callable[[Callable[[RunnerRequest], Runner]], Callable[[RunnerRequest], Runner]]:
    def add(fn: Callable[[RunnerRequest], Runner]) -> Callable[[RunnerRequest], Runner]:
        _FACTORIES[key] = fn
        return fn
    return add


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
    why = variants.unavailable(spec, device)  # what is missing here, before what is not built
    if why:
        raise RunnerError(f"{spec.key} cannot run here: {why}")
    man = Manifest(artifacts)
    try:
        path = man.verify(spec.artifact)
    except ArtifactError as exc:
        raise RunnerError(str(exc)) from exc
    factory = _FACTORIES.get(spec.runner_key)
    if factory is None:
        raise RunnerError(f"{spec.key}: no runner is registered for {spec.runner_key!r}")
    names = tuple(baseline_meta(artifacts)["input_names"])
    return factory(RunnerRequest(spec, path, man.get(spec.artifact), man, names,
                                 threads or default_threads(), device, spin))


@runner_factory("torch")
def _torch(r: RunnerRequest) -> Runner:
    from deploy.torch_runner import TorchRunner

    v = r.variant.variant
    if r.variant.artifact != "torch-ptq-dynamic":
        fp16 = r.variant.precision is variants.FP16
        return TorchRunner(r.path, r.input_names, r.threads, device=r.device, variant=v,
                           dtype="float16" if fp16 else "float32")
    baseline = r.manifest.verify("baseline")
    return TorchRunner(baseline, r.input_names, r.threads, device=r.device, variant=v,
                       state_dict=r.path)


def engine_profile(entry: dict[str, Any], artifact: str) -> TrtProfile:
    """The optimization profile a TensorRT entry records: the recipe a built engine was built with
    (its `trt` record, what TrtRunner and the NGC repository read), or the recipe a skipped one
    would have been built with."""
    from common.config import from_recipe
    from common.trt import TrtProfile

    made = entry.get("trt") or entry["recipe"]
    return from_recipe(TrtProfile, made["fields"]["profile"], f"{artifact}'s profile")


def build_buckets(man: Manifest) -> Buckets:
    """The build's one table of (batch, length) buckets: the table its TensorRT profiles were
    made from (`--trt-profile-buckets-*`), which every TensorRT entry records, built or skipped
    (a machine without TensorRT records the skip with its recipe). The CUDA-graph runner captures
    these shapes and the Triton tokenizer pads to these lengths, so the three cannot drift apart.
    Entries that disagree (engines from two builds) are refused; a build with no TensorRT entry
    (an older one, or --stages without them): the default table."""
    found: dict[Buckets, list[str]] = {}
    for artifact in dict.fromkeys(v.artifact for v in variants.variants() if v.backend == "trt"):
        e = man.entries.get(artifact)
        if e is None:
            continue
        e = e if "skipped" in e else man.get(artifact)  # a built one: its seal checked
        found.setdefault(engine_profile(e, artifact).buckets, []).append(artifact)
    if len(found) > 1:
        said = "; ".join(f"{', '.join(names)}: batches {list(b.batches)}, lengths {list(b.lengths)}"
                         for b, names in found.items())
        raise RunnerError(f"the TensorRT entries of {man.root} record different bucket tables "
                          f"({said}): rebuild them with one `make engines`")
    return next(iter(found), Buckets())


@runner_factory("torch-graphs")
def _torch_graphs(r: RunnerRequest) -> Runner:
    from deploy.graphs_runner import CudaGraphRunner

    max_length = int(baseline_meta(r.manifest.root)["max_length"])
    return CudaGraphRunner(r.path, r.input_names, r.threads, max_length, device=r.device,
                           variant=r.variant.variant, buckets=build_buckets(r.manifest))


@runner_factory("ort")
def _ort(r: RunnerRequest) -> Runner:
    from deploy.ort_runner import OrtRunner

    return OrtRunner(r.path, r.input_names, r.threads, provider=r.device, variant=r.variant.variant,
                     spin=r.spin)


@runner_factory("qlora")
def _qlora(r: RunnerRequest) -> Runner:
    from deploy.qlora_runner import QloraRunner

    return QloraRunner(r.path, r.input_names, r.threads, device=r.device,
                       variant=r.variant.variant)


@runner_factory("trt")
def _trt(r: RunnerRequest) -> Runner:
    from deploy.trt_runner import TrtRunner

    return TrtRunner(r.path, r.input_names, r.entry["device"],
                     engine_profile(r.entry, r.variant.artifact), r.variant.variant,
                     device=r.device)
