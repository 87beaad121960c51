"""Which artifact each (backend, variant) runs, and how to build its Runner.

Every runner is created through `make_runner`, which first checks the artifact against the
manifest (present, intact, built from the current inputs) and refuses it otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.checkpoint import baseline_meta
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
    Variant("torch", "ptq-dynamic", "torch-ptq-dynamic",
            "torch.ao quantize_dynamic: int8 encoder Linear weights, activations quantized per batch"),
    Variant("ort", "fp32", "onnx-fp32", "FP32 ONNX export (plain graph)"),
    Variant("ort", "fp32-fused", "onnx-fp32-fused", "FP32 ONNX after ORT's transformers optimizer"),
    Variant("ort", "dynamic", "onnx-dynamic", "ORT quantize_dynamic of the plain FP32 graph"),
    Variant("ort", "ptq", "onnx-ptq", "ORT static QDQ INT8 (U8 symmetric activations, S8 weights)"),
    Variant("ort", "ptq-s8", "onnx-ptq-s8", "ORT static QDQ INT8, S8 activations (TensorRT flavour)"),
    Variant("ort", "dynamic-fused", "onnx-dynamic-fused", "ORT quantize_dynamic of the fused graph"),
    Variant("ort", "qat", "onnx-qat", "QAT INT8 Q/DQ graph, U8 activations (CPU flavour)"),
    Variant("ort", "qat-s8", "onnx-qat-s8", "QAT INT8 Q/DQ graph, S8 activations (TensorRT flavour)"),
    Variant("qlora", "nf4", "qlora", "NF4 base (bitsandbytes) + LoRA adapters (peft), PyTorch"),
    Variant("trt", "fp32", "trt-fp32", "TensorRT FP32 engine"),
    Variant("trt", "fp16", "trt-fp16", "TensorRT FP16 engine"),
    Variant("trt", "int8", "trt-int8", "TensorRT implicit INT8, entropy calibrator (TensorRT 10.x)"),
    Variant("trt", "ptq", "trt-ptq", "TensorRT explicit INT8 from the ORT PTQ Q/DQ ONNX (S8)"),
    Variant("trt", "qat", "trt-qat", "TensorRT explicit INT8 from the QAT Q/DQ ONNX (S8)"),
)


def find_variant(backend: str, variant: str) -> Variant:
    for v in VARIANTS:
        if v.backend == backend and v.variant == variant:
            return v
    known = ", ".join(f"{v.backend}/{v.variant}" for v in VARIANTS)
    raise RunnerError(f"unknown variant {backend}/{variant}; known: {known}")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_runner(backend: str, variant: str, artifacts: Path | str, threads: int | None = None,
                device: str = "cpu") -> Runner:
    artifacts = Path(artifacts)
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
    if backend == "torch":
        from deploy.torch_runner import TorchRunner

        if variant == "fp32":
            return TorchRunner(path, names, threads, device=device)
        return TorchRunner(baseline, names, threads, device=device, variant=variant, state_dict=path)
    if backend == "ort":
        from deploy.ort_runner import OrtRunner

        return OrtRunner(path, names, threads, provider=device, variant=variant)
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
