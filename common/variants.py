"""The variant registry: every (backend, variant) the toolchain builds, scores and serves, declared
once. What the rest derives from it:

- engines: the stage that builds each variant's artifact (its build handler is registered for
  that artifact in engines/steps.py) and the TensorRT engines' build parameters;
- deploy: the runner factory (deploy/factories.py, keyed by `runner`), "can it run here"
  (`unavailable`, with its reason), where it can be served (`serve`);
- evaluate: the rows of `--all` and `--gpu-check`, the default interleaved speed-up list, the CLI's
  variant choices, the README's variants table.

A new variant is one `register(Variant(...))` plus a build handler for its artifact (and a runner
factory if its backend has none): tests/test_registry.py adds a toy one that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from common.errors import UserError

# where a variant can be served: "triton" (the local server: tritonserver's Python backend running
# the variant's Runner), "ngc" (the NGC tritonserver image's native onnxruntime / tensorrt backend,
# deploy/ngc_repo.py) and "k8s" (manifests that serve that NGC repository)
SERVE_TARGETS = ("triton", "ngc", "k8s")
NEEDS = ("bitsandbytes", "tensorrt")


class Precision(str, Enum):
    """What the variant computes its products in (a model card's int8/quantized tags, ONNX
    Runtime's TF32 switch on CUDA, the torch runner's dtype)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    NF4 = "nf4"


class Speedup(str, Enum):
    """Its place in its backend's default interleaved speed-up list (`make speedup`)."""

    NO = ""
    LISTED = "listed"
    REFERENCE = "reference"  # what the list's ratios divide by


FP32, FP16, INT8, NF4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.NF4
LISTED, REFERENCE = Speedup.LISTED, Speedup.REFERENCE
# the other default lists a variant can be in:
# - "fp32-reference": the FP32 rows the comparison divides its backend's rows by (the fastest of
#   them on the same device and threads)
# - "ops": `make ops`'s default (the fused FP32 graph and the INT8 graphs built on it)
# - "saturation": `make saturation`'s default (the CPU INT8 graphs with S8 weights)
# - "seed-reference": what `python -m engines.seeds` compares each seed's run with
LISTS = ("fp32-reference", "ops", "saturation", "seed-reference")
# QLoRA's rows are PyTorch models: the comparison divides them by PyTorch's FP32 row
REFERENCE_BACKEND = {"qlora": "torch"}


class UnknownVariant(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    backend: str
    variant: str
    artifact: str  # manifest entry name of what it runs
    about: str
    precision: Precision
    # activation ranges taken per batch (padding included): predictions depend on what else is
    # in the batch, so behind a dynamic batcher one user's answer depends on other requests
    batch_dependent: bool = False
    device: str = "any"  # "cuda": runs on a GPU only; "cpu": on the CPU only
    needs: tuple[str, ...] = ()  # libraries it cannot run without (NEEDS)
    gpu_row: bool = False  # scored by `make gpu-check` on a CUDA GPU
    serve: tuple[str, ...] = ("triton",)
    speedup: Speedup = Speedup.NO
    hf: bool = False  # written as a Hugging Face folder with a model card (engines stage hf)
    runner: str = ""  # runner factory key in deploy/factories.py; "" = the backend's
    # build-handler parameters (the TensorRT engines: precision and source ONNX artifact)
    params: tuple[tuple[str, str], ...] = ()
    lists: tuple[str, ...] = ()  # the other default lists it is in (LISTS)

    def __post_init__(self) -> None:
        if set(self.serve) - set(SERVE_TARGETS) or set(self.needs) - set(NEEDS):
            raise ValueError(f"{self.key}: serve targets are among {SERVE_TARGETS}, needs among "
                             f"{NEEDS}")
        if not isinstance(self.precision, Precision) or not isinstance(self.speedup, Speedup):
            raise ValueError(f"{self.key}: precision is a Precision, speedup a Speedup")
        if set(self.lists) - set(LISTS):
            raise ValueError(f"{self.key}: lists are among {LISTS}")

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.variant}"

    @property
    def runner_key(self) -> str:
        return self.runner or self.backend

    def param(self, name: str, default: str | None = None) -> str:
        p = dict(self.params)
        if default is None:
            return p[name]
        return p.get(name, default)

    @property
    def checkpoint(self) -> str:
        """The PyTorch checkpoint (artifact) this variant was made from: its config and tokenizer
        go into its Hugging Face folder."""
        return self.artifact if self.backend == "torch" else self.param("checkpoint", "baseline")


_NGC = ("triton", "ngc", "k8s")
_GPU = ("ngc", "k8s")  # the local server's Python backend runs CPU runners only
# a graph of the student: its Hugging Face folder carries the student's config (checkpoint)
_STUDENT = (("checkpoint", "student"),)

_REGISTRY: dict[str, Variant] = {}


def register(v: Variant) -> Variant:
    if v.key in _REGISTRY:
        raise ValueError(f"variant {v.key} is registered twice")
    _REGISTRY[v.key] = v
    return v


def unregister(key: str) -> None:
    """Tests only: remove a variant they registered."""
    _REGISTRY.pop(key, None)


for _v in (
    Variant("torch", "fp32", "baseline", "fine-tuned FP32 checkpoint in PyTorch", FP32,
            gpu_row=True, speedup=REFERENCE, hf=True, lists=("fp32-reference",)),
    Variant("torch", "fp16", "torch-fp16", "the checkpoint saved in FP16, run in PyTorch on a GPU",
            FP16, device="cuda", gpu_row=True, serve=()),
    Variant("torch", "fp16-graphs", "torch-fp16", "the FP16 checkpoint replayed from CUDA graphs "
            "captured per (batch, length) bucket (common/buckets.py)", FP16, device="cuda",
            gpu_row=True, serve=(), runner="torch-graphs"),
    Variant("torch", "ptq-dynamic", "torch-ptq-dynamic",
            "torch.ao quantize_dynamic: int8 layer Linear weights, activations quantized per batch",
            INT8, batch_dependent=True, speedup=LISTED, device="cpu"),
    Variant("ort", "fp32", "onnx-fp32", "FP32 ONNX export (plain graph)", FP32, gpu_row=True,
            serve=_NGC, speedup=LISTED, hf=True, lists=("fp32-reference", "seed-reference")),
    Variant("ort", "fp32-fused", "onnx-fp32-fused", "FP32 ONNX after ORT's transformers optimizer",
            FP32, serve=_NGC, speedup=REFERENCE, hf=True, lists=("fp32-reference", "ops")),
    Variant("ort", "dynamic", "onnx-dynamic", "ORT quantize_dynamic of the plain FP32 graph",
            INT8, batch_dependent=True, serve=_NGC, speedup=LISTED, hf=True),
    Variant("ort", "dynamic-fused", "onnx-dynamic-fused", "ORT quantize_dynamic of the fused graph",
            INT8, batch_dependent=True, serve=_NGC, speedup=LISTED, hf=True, lists=("ops", "saturation")),
    Variant("ort", "ptq", "onnx-ptq", "ORT static QDQ INT8 chosen by the accuracy-aware search (U8 "
            "activations, S8 per-channel weights)", INT8, gpu_row=True, serve=_NGC,
            speedup=LISTED, hf=True, lists=("saturation", "seed-reference")),
    Variant("ort", "ptq-s8", "onnx-ptq-s8", "the same recipe with S8 activations (TensorRT flavour)",
            INT8, serve=_NGC, hf=True),
    Variant("ort", "ptq-fused", "onnx-ptq-fused", "the same recipe on the fused graph: static "
            "QAttention + QDQ MatMuls (ONNX Runtime CPU)", INT8, serve=_NGC, speedup=LISTED,
            hf=True, lists=("ops", "saturation", "seed-reference")),
    Variant("torch", "student", "student", "the distilled student: every other encoder layer of the "
            "baseline, trained on its logits (train/student.py), in PyTorch", FP32,
            gpu_row=True, speedup=LISTED, hf=True),
    Variant("torch", "student-fp16-graphs", "student-fp16", "the student in FP16, replayed from "
            "CUDA graphs per bucket", FP16, device="cuda", gpu_row=True, serve=(),
            runner="torch-graphs"),
    Variant("ort", "student-fp32", "onnx-student", "the student's FP32 ONNX export", FP32,
            gpu_row=True, serve=_NGC, speedup=LISTED, hf=True, params=_STUDENT),
    Variant("ort", "student-fused", "onnx-student-fused", "the student's FP32 graph after ORT's "
            "transformers optimizer", FP32, serve=_NGC, speedup=LISTED, hf=True,
            params=_STUDENT),
    Variant("ort", "student-ptq-fused", "onnx-student-ptq-fused", "ort/ptq's recipe on the "
            "student's fused graph: static QAttention + QDQ MatMuls", INT8, serve=_NGC,
            speedup=LISTED, hf=True, params=_STUDENT),
    Variant("ort", "student-ptq-s8", "onnx-student-ptq-s8", "ort/ptq's recipe on the student's "
            "plain graph with S8 activations (TensorRT flavour)", INT8, serve=_NGC,
            params=_STUDENT),
    Variant("ort", "qat", "onnx-qat", "QAT INT8 Q/DQ graph, U8 activations (CPU flavour)", INT8,
            serve=_NGC, speedup=LISTED, hf=True, lists=("saturation",)),
    Variant("ort", "qat-s8", "onnx-qat-s8", "QAT INT8 Q/DQ graph, S8 activations (TensorRT flavour)",
            INT8, serve=_NGC, hf=True),
    Variant("ort", "optimum-fp32", "onnx-optimum-fp32", "the baseline exported by Optimum's exporter",
            FP32, serve=_NGC, hf=True),
    Variant("ort", "optimum-dynamic", "onnx-optimum-dynamic",
            "Optimum ORTQuantizer, avx512_vnni dynamic (reference row)", INT8,
            batch_dependent=True, serve=_NGC, speedup=LISTED, hf=True),
    Variant("ort", "optimum-static", "onnx-optimum-static",
            "Optimum ORTQuantizer, avx512_vnni static, minmax calibration (reference row)", INT8,
            serve=_NGC, speedup=LISTED, hf=True),
    Variant("qlora", "nf4", "qlora", "NF4 base (bitsandbytes) + LoRA adapters (peft), PyTorch",
            NF4, needs=("bitsandbytes",), gpu_row=True),
    Variant("trt", "fp32", "trt-fp32", "TensorRT FP32 engine (TF32 off)", FP32, device="cuda",
            needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "fp32"), ("source", "onnx-fp32")), lists=("fp32-reference",)),
    Variant("trt", "fp16", "trt-fp16", "TensorRT FP16 engine", FP16, device="cuda",
            needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "fp16"), ("source", "onnx-fp32"))),
    Variant("trt", "int8", "trt-int8", "TensorRT implicit INT8, entropy calibrator (TensorRT 10.x)",
            INT8, device="cuda", needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "int8-implicit"), ("source", "onnx-fp32"))),
    Variant("trt", "ptq", "trt-ptq", "TensorRT explicit INT8 from the ORT PTQ Q/DQ ONNX (S8)", INT8,
            device="cuda", needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "int8-explicit"), ("source", "onnx-ptq-s8"))),
    Variant("trt", "qat", "trt-qat", "TensorRT explicit INT8 from the QAT Q/DQ ONNX (S8)", INT8,
            device="cuda", needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "int8-explicit"), ("source", "onnx-qat-s8"))),
    Variant("trt", "student-fp16", "trt-student-fp16", "TensorRT FP16 engine of the student",
            FP16, device="cuda", needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "fp16"), ("source", "onnx-student"), *_STUDENT)),
    Variant("trt", "student-ptq", "trt-student-ptq", "TensorRT explicit INT8 from the student's "
            "S8 Q/DQ ONNX", INT8, device="cuda", needs=("tensorrt",), gpu_row=True, serve=_GPU,
            params=(("precision", "int8-explicit"), ("source", "onnx-student-ptq-s8"),
                    *_STUDENT)),
):
    register(_v)


def variants() -> tuple[Variant, ...]:
    """Every registered variant, in registration order."""
    return tuple(_REGISTRY.values())


def backends() -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.backend for v in variants()))


def find_variant(backend: str, variant: str) -> Variant:
    """By backend and name; `variant` may also be written "backend/name" (then backend may be
    empty or must agree)."""
    if "/" in variant:
        b, _, variant = variant.partition("/")
        if backend and backend != b:
            raise UnknownVariant(f"--backend {backend} and --variant {b}/{variant} disagree")
        backend = b
    v = _REGISTRY.get(f"{backend}/{variant}")
    if v is None:
        raise UnknownVariant(f"unknown variant {backend}/{variant}; known: "
                             f"{', '.join(_REGISTRY)}")
    return v


def hf_folders() -> tuple[tuple[str, Variant], ...]:
    """(folder name, variant) of the Hugging Face folders `make engines` writes: the PyTorch
    baseline as "baseline", every other variant marked hf by its name."""
    return tuple(("baseline" if v.key == "torch/fp32" else v.variant, v)
                 for v in variants() if v.hf)


def speedup_variants(backend: str) -> tuple[str, ...]:
    """The default interleaved speed-up list of a backend, its reference first."""
    vs = [v for v in variants() if v.backend == backend and v.speedup is not Speedup.NO]
    return tuple(v.variant for v in sorted(vs, key=lambda v: v.speedup is not REFERENCE))


def listed(name: str, backend: str | None = None) -> tuple[Variant, ...]:
    """The variants in default list `name` (LISTS), of one backend or all, in registration
    order."""
    if name not in LISTS:
        raise ValueError(f"unknown list {name!r}; lists: {LISTS}")
    return tuple(v for v in variants() if name in v.lists and backend in (None, v.backend))


def fp32_references(backend: str) -> tuple[tuple[str, str], ...]:
    """(backend, variant) of the FP32 rows a backend's rows are divided by in the comparison."""
    return tuple((v.backend, v.variant)
                 for v in listed("fp32-reference", REFERENCE_BACKEND.get(backend, backend)))


def servable(target: str, backend: str | None = None) -> tuple[Variant, ...]:
    return tuple(v for v in variants() if target in v.serve and backend in (None, v.backend))


def missing_library(need: str) -> str | None:
    """Why a library a variant needs is not usable here, or None."""
    import importlib.util

    if need == "bitsandbytes":
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed: pip install 'bitsandbytes==0.50.*'"
        return None
    if need == "tensorrt":
        from common.trt import tensorrt_status

        ok, why = tensorrt_status()
        return None if ok else f"TensorRT is not usable here: {why}"
    raise ValueError(f"unknown need {need!r}")


def unavailable(v: Variant, device: str = "cpu") -> str | None:
    """Why `v` cannot run on `device` here (one line that says what to do), or None."""
    cuda = device.startswith("cuda")
    for need in v.needs:  # the library first: a GPU alone would not do
        why = missing_library(need)
        if why:
            return why
    if v.device == "cpu" and cuda:  # torch's quantized kernels exist on the CPU only
        return f"{v.key} has no CUDA path (it runs on the CPU only): score it with --device cpu"
    if v.device == "cuda" and not cuda:
        return ("runs on a CUDA GPU only: `make gpu-check` (or --device cuda) on a machine with "
                "one")
    if cuda and v.backend == "ort":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            return ("ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu; "
                    f"available: {', '.join(available)})")
    elif cuda and v.backend != "trt":  # trt: tensorrt_status already looked for the GPU
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch (run the container with --gpus all)"
    return None


def not_runnable(v: Variant, man: Any, device: str) -> str | None:
    """Why a variant is not scored here (one line, with what to do), or None: what is missing on
    this machine, then why `make engines` skipped its artifact, then whether it is built."""
    why = unavailable(v, device)
    if why:
        return why
    if man.skipped(v.artifact):  # the family or the machine cannot build it (engines says why)
        return f"skipped by make engines: {man.skipped(v.artifact)}"
    if not man.built(v.artifact):
        return f"{v.artifact} is not built here: run `make engines`"
    return None


def variants_table() -> str:
    """Markdown: the README's variants table."""
    lines = ["| `--variant` | what it runs | notes |", "|---|---|---|"]
    for v in variants():
        notes = []
        if v.batch_dependent:
            notes.append("batch-dependent")
        notes.append("GPU only" if v.device == "cuda" else "CPU and GPU" if v.gpu_row else "CPU")
        if "ngc" in v.serve:
            notes.append("NGC Triton")
        lines.append(f"| `{v.key}` | {v.about} | {', '.join(notes)} |")
    return "\n".join(lines)
