"""Every (backend, variant) the toolchain builds and scores, and the artifact each one runs: the
table the build (engines, for the Hugging Face folders), the runners and the evaluator share."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError


class UnknownVariant(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    backend: str
    variant: str
    artifact: str  # manifest entry name
    about: str
    # activation ranges taken per batch (padding included): predictions depend on what else is
    # in the batch, so behind a dynamic batcher one user's answer depends on other requests
    batch_dependent: bool = False
    device: str = "any"  # "cuda": only runs on a GPU


VARIANTS: tuple[Variant, ...] = (
    Variant("torch", "fp32", "baseline", "fine-tuned FP32 checkpoint in PyTorch"),
    Variant("torch", "fp16", "baseline", "the FP32 checkpoint run in FP16 on a GPU", device="cuda"),
    Variant("torch", "ptq-dynamic", "torch-ptq-dynamic",
            "torch.ao quantize_dynamic: int8 layer Linear weights, activations quantized per batch",
            batch_dependent=True),
    Variant("ort", "fp32", "onnx-fp32", "FP32 ONNX export (plain graph)"),
    Variant("ort", "fp32-fused", "onnx-fp32-fused", "FP32 ONNX after ORT's transformers optimizer"),
    Variant("ort", "dynamic", "onnx-dynamic", "ORT quantize_dynamic of the plain FP32 graph",
            batch_dependent=True),
    Variant("ort", "dynamic-fused", "onnx-dynamic-fused", "ORT quantize_dynamic of the fused graph",
            batch_dependent=True),
    Variant("ort", "ptq", "onnx-ptq", "ORT static QDQ INT8 chosen by the accuracy-aware search (U8 "
            "activations, S8 per-channel weights)"),
    Variant("ort", "ptq-s8", "onnx-ptq-s8", "the same recipe with S8 activations (TensorRT flavour)"),
    Variant("ort", "ptq-fused", "onnx-ptq-fused", "the same recipe on the fused graph: static "
            "QAttention + QDQ MatMuls (ONNX Runtime CPU)"),
    Variant("ort", "qat", "onnx-qat", "QAT INT8 Q/DQ graph, U8 activations (CPU flavour)"),
    Variant("ort", "qat-s8", "onnx-qat-s8", "QAT INT8 Q/DQ graph, S8 activations (TensorRT flavour)"),
    Variant("ort", "optimum-fp32", "onnx-optimum-fp32", "the baseline exported by Optimum's exporter"),
    Variant("ort", "optimum-dynamic", "onnx-optimum-dynamic",
            "Optimum ORTQuantizer, avx512_vnni dynamic (reference row)", batch_dependent=True),
    Variant("ort", "optimum-static", "onnx-optimum-static",
            "Optimum ORTQuantizer, avx512_vnni static, minmax calibration (reference row)"),
    Variant("qlora", "nf4", "qlora", "NF4 base (bitsandbytes) + LoRA adapters (peft), PyTorch"),
    Variant("trt", "fp32", "trt-fp32", "TensorRT FP32 engine (TF32 off)", device="cuda"),
    Variant("trt", "fp16", "trt-fp16", "TensorRT FP16 engine", device="cuda"),
    Variant("trt", "int8", "trt-int8", "TensorRT implicit INT8, entropy calibrator (TensorRT 10.x)",
            device="cuda"),
    Variant("trt", "ptq", "trt-ptq", "TensorRT explicit INT8 from the ORT PTQ Q/DQ ONNX (S8)",
            device="cuda"),
    Variant("trt", "qat", "trt-qat", "TensorRT explicit INT8 from the QAT Q/DQ ONNX (S8)",
            device="cuda"),
)

# the Hugging Face folders `make engines` writes: every ONNX Runtime variant, and the baseline
HF_VARIANTS: tuple[tuple[str, str], ...] = (("baseline", "baseline"),) + tuple(
    (v.variant, v.artifact) for v in VARIANTS if v.backend == "ort")


def find_variant(backend: str, variant: str) -> Variant:
    for v in VARIANTS:
        if v.backend == backend and v.variant == variant:
            return v
    known = ", ".join(f"{v.backend}/{v.variant}" for v in VARIANTS)
    raise UnknownVariant(f"unknown variant {backend}/{variant}; known: {known}")


def variants_table() -> str:
    """Markdown: the README's variants table, generated from VARIANTS."""
    lines = ["| `--backend/--variant` | what it runs | notes |", "|---|---|---|"]
    for v in VARIANTS:
        notes = []
        if v.batch_dependent:
            notes.append("batch-dependent")
        if v.device == "cuda":
            notes.append("GPU only")
        lines.append(f"| `{v.backend}/{v.variant}` | {v.about} | {', '.join(notes)} |")
    return "\n".join(lines)
