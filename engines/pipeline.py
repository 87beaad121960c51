"""The build graph behind `make engines` / `python -m engines`.

Each step names its artifact, its recipe (a canonical dict) and the hashes of its inputs; the
manifest decides whether it is current. Steps run in order, each one only if something it
depends on changed, and say so in one line either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calibration.calibset import CalibConfig
from calibration.ort_static import StaticConfig
from common.data import DEFAULT_DATASET, dataset_fingerprint
from common.env import cpu_device, versions
from common.manifest import Manifest, atomic_output
from common.modelsource import DEFAULT_MODEL, model_fingerprint
from engines.trt_build import TrtProfile
from export.onnx_export import ExportConfig
from export.ort_graphs import DynamicConfig
from train.finetune import FinetuneConfig
from train.qat import QatConfig
from train.qlora import QloraConfig

STAGES = ("baseline", "onnx", "dynamic", "calibration", "ptq", "qat", "qlora", "trt")


@dataclass(frozen=True)
class BuildConfig:
    model: str = DEFAULT_MODEL
    data: str = DEFAULT_DATASET
    artifacts: str = "artifacts"
    stages: tuple[str, ...] = STAGES
    force: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    trt_profile: TrtProfile = field(default_factory=TrtProfile)
    qlora: QloraConfig = field(default_factory=QloraConfig)
    qat: QatConfig = field(default_factory=QatConfig)


@dataclass
class Step:
    name: str
    rel_path: str
    recipe: dict[str, Any]
    inputs: Callable[[], dict[str, str]]
    build: Callable[[Path], dict[str, Any] | None]


class Builder:
    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.root = Path(cfg.artifacts)
        self.manifest = Manifest(self.root)
        self.built: list[str] = []
        self.skipped: list[str] = []

    def art(self, name: str) -> str:
        """Input reference to another artifact: its current hash (it must be built)."""
        return self.manifest.get(name)["sha256"]

    def run(self, step: Step) -> None:
        inputs = step.inputs()
        if not self.cfg.force and self.manifest.is_current(step.name, step.recipe, inputs):
            print(f"[up to date] {step.name}: {self.root / step.rel_path}")
            self.skipped.append(step.name)
            return
        print(f"[build] {step.name} -> {self.root / step.rel_path}")
        t0 = time.time()
        with atomic_output(self.root / step.rel_path) as tmp:
            extra = step.build(tmp) or {}
        extra["build_seconds"] = round(time.time() - t0, 1)
        self.manifest.record(step.name, step.rel_path, step.recipe, inputs, versions(),
                             cpu_device(), extra)
        self.built.append(step.name)


def training_inputs(data: str, model: str) -> dict[str, str]:
    """What a training recipe reads: the train and validation rows and the base model."""
    fp = dataset_fingerprint(data, ("train", "validation"))
    return {"data:train": fp["train"], "data:validation": fp["validation"],
            "model": model_fingerprint(model)}


def baseline_step(b: Builder) -> Step:
    from train.finetune import finetune

    ft = b.cfg.finetune

    def build(tmp: Path) -> dict[str, Any]:
        r = finetune(ft, tmp)
        return {"best_val_macro_f1": r["best_val_macro_f1"], "train_minutes": r["train_minutes"]}

    return Step("baseline", "baseline", ft.recipe(), lambda: training_inputs(ft.data, ft.model), build)


def onnx_step(b: Builder) -> Step:
    from export.onnx_export import export_onnx

    ex = b.cfg.export

    def build(tmp: Path) -> dict[str, Any]:
        return export_onnx(b.root / "baseline", tmp, ex)

    return Step("onnx-fp32", "onnx/fp32.onnx", asdict(ex),
                lambda: {"artifact:baseline": b.art("baseline")}, build)


def fused_step(b: Builder) -> Step:
    import json

    from export.onnx_export import check_agreement, ort_fn, torch_fn, validation_inputs
    from export.ort_graphs import fuse_fp32

    ex = b.cfg.export

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoModelForSequenceClassification

        ckpt = b.root / "baseline"
        c = json.loads((ckpt / "config.json").read_text())
        info = fuse_fp32(b.root / "onnx/fp32.onnx", tmp, c["num_attention_heads"], c["hidden_size"])
        enc, names = validation_inputs(ckpt, ex)
        model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
        info["validation"] = check_agreement(torch_fn(model), ort_fn(tmp), enc, names,
                                             f"{tmp}: fused FP32 graph disagrees with PyTorch",
                                             ex.fused_atol, 1.0)
        return info

    return Step("onnx-fp32-fused", "onnx/fp32-fused.onnx", {**asdict(ex), "fusion": "bert opt_level 0"},
                lambda: {"artifact:onnx-fp32": b.art("onnx-fp32")}, build)


def ort_dynamic_step(b: Builder, fused: bool) -> Step:
    from export.onnx_export import check_agreement, ort_fn, validation_inputs
    from export.ort_graphs import quantize_dynamic_graph

    src_name = "onnx-fp32-fused" if fused else "onnx-fp32"
    suffix = "-fused" if fused else ""

    def build(tmp: Path) -> dict[str, Any]:
        src = b.root / b.manifest.get(src_name)["path"]
        info = quantize_dynamic_graph(src, tmp, b.cfg.dynamic, fused)
        enc, names = validation_inputs(b.root / "baseline", b.cfg.export)
        info["agreement_vs_fp32"] = check_agreement(
            ort_fn(src), ort_fn(tmp), enc, names, f"{tmp}: dynamic INT8 vs FP32", None,
            b.cfg.dynamic.min_top1)
        return info

    return Step(f"onnx-dynamic{suffix}", f"onnx/dynamic{suffix}.onnx",
                {**asdict(b.cfg.dynamic), "source": src_name},
                lambda: {f"artifact:{src_name}": b.art(src_name)}, build)


def torch_dynamic_step(b: Builder) -> Step:
    from export.torch_dynamic import build_torch_dynamic

    return Step("torch-ptq-dynamic", "torch/ptq-dynamic.pt",
                {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8",
                 "modules": "encoder nn.Linear"},
                lambda: {"artifact:baseline": b.art("baseline")},
                lambda tmp: build_torch_dynamic(b.root / "baseline", tmp))


def calibration_step(b: Builder) -> Step:
    from calibration.calibset import build_calibration_set
    from common.modelsource import load_tokenizer

    c = b.cfg.calib

    def build(tmp: Path) -> dict[str, Any]:
        import json

        ckpt = b.root / "baseline"
        meta = json.loads((ckpt / "recipe.json").read_text())
        return build_calibration_set(b.cfg.data, load_tokenizer(ckpt), meta["input_names"],
                                     meta["config"]["max_length"], c, tmp)

    def inputs() -> dict[str, str]:
        return {"data:validation": dataset_fingerprint(b.cfg.data, ("validation",))["validation"],
                "artifact:baseline": b.art("baseline")}

    # The file name carries the key, so a calibration set made for other inputs is never found.
    key = Manifest.key(asdict(c), inputs())[:12]
    return Step("calibration", f"calibration/calib-{key}.npz", asdict(c), inputs, build)


def ptq_step(b: Builder, activation_type: str) -> Step:
    import dataclasses

    from calibration.ort_static import build_static_ptq

    cfg = b.cfg.static
    if activation_type == "s8":  # TensorRT flavour: symmetric, and MinMax (percentile: no gain)
        cfg = dataclasses.replace(cfg, activation_type="s8", symmetric_activations=True, method="minmax")
    name = "onnx-ptq" if activation_type == "u8" else "onnx-ptq-s8"

    def build(tmp: Path) -> dict[str, Any]:
        import json

        import numpy as np

        from common.data import load_split
        from common.feeds import encode
        from common.modelsource import load_tokenizer

        ckpt = b.root / "baseline"
        meta = json.loads((ckpt / "recipe.json").read_text())
        val = load_split(b.cfg.data, "validation")
        enc = encode(load_tokenizer(ckpt), val.texts, meta["config"]["max_length"])
        calib = b.root / b.manifest.get("calibration")["path"]
        return build_static_ptq(b.root / "onnx/fp32.onnx", tmp, calib, meta["input_names"],
                                b.cfg.calib.batch_size, cfg, enc, np.asarray(val.labels))

    return Step(name, f"onnx/{name.removeprefix('onnx-')}.onnx", asdict(cfg),
                lambda: {"artifact:onnx-fp32": b.art("onnx-fp32"),
                         "artifact:calibration": b.art("calibration")}, build)


def qat_step(b: Builder) -> Step:
    from train.qat import train_qat

    q = b.cfg.qat

    def build(tmp: Path) -> dict[str, Any]:
        r = train_qat(q, b.root / "baseline", b.root / b.manifest.get("calibration")["path"],
                      b.cfg.calib.batch_size, tmp)
        return {k: r[k] for k in ("val_macro_f1_before_qat", "best_val_macro_f1", "best_step",
                                  "steps", "train_minutes", "quantization", "inserted")}

    def inputs() -> dict[str, str]:
        fp = dataset_fingerprint(q.data, ("train", "validation"))
        return {"artifact:baseline": b.art("baseline"), "artifact:calibration": b.art("calibration"),
                "data:train": fp["train"], "data:validation": fp["validation"]}

    return Step("qat", "qat", q.recipe(), inputs, build)


def qat_onnx_step(b: Builder, flavour: str) -> Step:
    from export.qat_export import export_qat

    name = "onnx-qat" if flavour == "u8" else "onnx-qat-s8"
    return Step(name, f"onnx/{name.removeprefix('onnx-')}.onnx",
                {"flavour": flavour, "opset": b.cfg.export.opset, "min_top1": 0.99,
                 "gather_before_dequantize": flavour == "u8"},
                lambda: {"artifact:qat": b.art("qat")},
                lambda tmp: export_qat(b.root / "qat", tmp, flavour, b.cfg.export))


def qlora_step(b: Builder) -> Step:
    q = b.cfg.qlora

    def build(tmp: Path) -> dict[str, Any]:
        from train.qlora import train_qlora

        r = train_qlora(q, tmp)
        return {k: r[k] for k in ("best_val_macro_f1", "train_minutes", "trainable_params",
                                  "trainable_pct", "weight_memory", "targets", "fp32_weight_bytes")}

    return Step("qlora", "qlora", q.recipe(), lambda: training_inputs(q.data, q.model), build)


# (variant, precision, source ONNX artifact): what the trt backend can run.
TRT_ENGINES = (("fp32", "fp32", "onnx-fp32"), ("fp16", "fp16", "onnx-fp32"),
               ("int8", "int8-implicit", "onnx-fp32"), ("ptq", "int8-explicit", "onnx-ptq-s8"),
               ("qat", "int8-explicit", "onnx-qat-s8"))


def trt_steps(b: Builder) -> list[Step]:
    from engines.trt_env import tensorrt_status

    ok, why = tensorrt_status()
    if not ok:
        print(f"[skip] TensorRT engines: {why}")
        return []
    import tensorrt as trt

    from calibration.trt_calibrator import cache_name
    from engines.trt_build import TrtConfig, build_engine
    from engines.trt_env import gpu_identity, trt_major

    steps = []
    for variant, precision, src in TRT_ENGINES:
        if precision == "int8-implicit" and trt_major(trt.__version__) >= 11:
            print(f"[skip] trt/{variant}: implicit INT8 calibration does not exist in TensorRT "
                  f"{trt.__version__}; trt/ptq (explicit Q/DQ) is built instead")
            continue
        if src not in b.manifest.entries:
            print(f"[skip] trt/{variant}: its ONNX source {src} is not built")
            continue
        cfg = TrtConfig(precision=precision, profile=b.cfg.trt_profile,
                        calib_batch_size=b.cfg.calib.batch_size)

        def inputs(src=src, precision=precision) -> dict[str, str]:
            d = {f"artifact:{src}": b.art(src), "gpu": canonical_gpu(gpu_identity())}
            if precision == "int8-implicit":
                d["artifact:calibration"] = b.art("calibration")
            return d

        def build(tmp: Path, src=src, cfg=cfg) -> dict[str, Any]:
            calib = cache = None
            if cfg.precision == "int8-implicit":
                calib = b.root / b.manifest.get("calibration")["path"]
                cache = b.root / "trt" / cache_name(b.art(src), b.art("calibration"),
                                                    trt.__version__, cfg.calib_batch_size)
                cache.parent.mkdir(parents=True, exist_ok=True)
            return build_engine(b.root / b.manifest.get(src)["path"], tmp, cfg, calib, cache)

        steps.append(Step(f"trt-{variant}", f"trt/{variant}.plan", cfg.recipe(), inputs, build))
    return steps


def canonical_gpu(identity: dict[str, str]) -> str:
    return "|".join(f"{k}={identity[k]}" for k in sorted(identity))


STEP_FACTORIES: dict[str, list[Callable[[Builder], Any]]] = {
    "baseline": [baseline_step],
    "onnx": [onnx_step, fused_step],
    "dynamic": [torch_dynamic_step, lambda b: ort_dynamic_step(b, False),
                lambda b: ort_dynamic_step(b, True)],
    "calibration": [calibration_step],
    # u8: the CPU flavour (evaluated as ort/ptq); s8: the same quantizer for TensorRT.
    "ptq": [lambda b: ptq_step(b, "u8"), lambda b: ptq_step(b, "s8")],
    # u8: the CPU flavour (ort/qat); s8: the same trained model for TensorRT (trt/qat).
    "qat": [qat_step, lambda b: qat_onnx_step(b, "u8"), lambda b: qat_onnx_step(b, "s8")],
    "qlora": [qlora_step],
    "trt": [trt_steps],
}


def build_all(cfg: BuildConfig) -> Builder:
    unknown = set(cfg.stages) - set(STEP_FACTORIES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STEP_FACTORIES)}")
    b = Builder(cfg)
    for stage in STEP_FACTORIES:  # fixed order: later stages read earlier artifacts
        if stage in cfg.stages:
            for factory in STEP_FACTORIES[stage]:
                made = factory(b)
                for step in made if isinstance(made, list) else [made]:
                    b.run(step)
    if b.built:
        print(f"built: {', '.join(b.built)}" + (f"; up to date: {', '.join(b.skipped)}" if b.skipped else ""))
    else:
        print(f"nothing to rebuild: all {len(b.skipped)} artifact(s) in {b.root} are up to date")
    return b
