"""The steps of `make engines`, one factory per artifact. Each factory returns a Step whose config
is the frozen config its build function runs with (never a literal written beside the call), so
changing a default changes the recipe and the manifest rebuilds exactly that step and what reads
its artifact."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import recipe
from common.manifest import Manifest
from engines.pipeline import STAGES, Builder, Step, fixed, model_source

Factory = Callable[[Builder], "Step | list[Step]"]
# stage -> the step factories that build its artifacts, in build order (register_step)
STEP_FACTORIES: dict[str, list[Factory]] = {stage: [] for stage in STAGES}


def register_step(stage: str) -> Callable[[Factory], Factory]:
    """Add a step factory to a stage. Its code (the factory and what it imports) goes into the
    key of every step it makes (common.codehash)."""
    def add(factory: Factory) -> Factory:
        STEP_FACTORIES[stage].append(factory)
        return factory
    return add


def family(b: Builder):
    from common.arch import load_spec
    from common.modelsource import resolve_model

    return load_spec(resolve_model(b.cfg.finetune.model)).family


def task_step(b: Builder) -> Step:
    """artifacts/task/: the data read once with the declared columns and labels, every row
    checked, each split written as canonical JSON Lines beside task.json. Keyed by the resolved
    task itself (rows, label names, how validation was made): a change of any rebuilds what is
    made from it."""
    from common.task import resolve_task, write_task

    spec = b.cfg.task
    # the manifest keeps where the data was read from, so later builds of this folder reuse the
    # declaration without repeating it (common.task.declared_task)
    return Step("task", fixed("task"), spec, (), lambda: {"task": resolve_task(spec).fingerprint()},
                lambda tmp: {**write_task(resolve_task(spec), tmp), "data": spec.data})


def baseline_step(b: Builder) -> Step:
    from train.finetune import finetune

    ft = b.cfg.finetune

    def build(tmp: Path) -> dict[str, Any]:
        r = finetune(ft, tmp)
        return {"best_val_macro_f1": r["best_val_macro_f1"], "train_minutes": r["train_minutes"],
                "model_type": r["model_type"]}

    return Step("baseline", fixed("baseline"), ft, ("task",), model_source(ft.model), build)


def fp16_checkpoint(b: Builder, name: str, rel: str, ckpt: str) -> Step:
    """A checkpoint's weights saved in FP16 (torch/fp16 and the CUDA-graph runner): what a GPU
    deployment ships and loads (half the bytes of the FP32 checkpoint)."""
    from export.torch_fp16 import save_fp16

    return Step(name, fixed(rel), b.cfg.torch_fp16, (ckpt,), dict,
                lambda tmp: save_fp16(b.path(ckpt), tmp, b.cfg.torch_fp16))


def torch_fp16_step(b: Builder) -> Step:
    return fp16_checkpoint(b, "torch-fp16", "torch/fp16", "baseline")


def onnx_export_step(b: Builder, name: str, rel: str, ckpt: str) -> Step:
    """A checkpoint's FP32 ONNX export, validated against it in PyTorch."""
    from export.onnx_export import export_onnx

    ex = b.cfg.export
    return Step(name, fixed(rel), ex, (ckpt,), dict, lambda tmp: export_onnx(b.path(ckpt), tmp, ex))


def onnx_step(b: Builder) -> Step:
    return onnx_export_step(b, "onnx-fp32", "onnx/fp32.onnx", "baseline")


def fused_graph_step(b: Builder, name: str, rel: str, src: str, ckpt: str) -> Step:
    """ONNX Runtime's transformers optimizer on the FP32 graph `src` exported from `ckpt`,
    validated against that checkpoint in PyTorch; skipped for families it does not fuse."""
    from common.arch import skipped_steps
    from export.onnx_export import Validation, check_agreement, ort_fn, validation_inputs
    from export.ort_graphs import fuse_fp32

    fu = b.cfg.fuse
    fam = family(b)

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoModelForSequenceClassification

        from common.arch import load_spec
        from common.torch_infer import torch_fn

        path = b.path(ckpt)
        spec = load_spec(path)
        info = fuse_fp32(b.path(src), tmp, str(fam.ort_fusion), spec.num_heads,
                         spec.hidden_size, fu)
        enc, names = validation_inputs(path, Validation(fu.n_validate, fu.data))
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        info["validation"] = check_agreement(torch_fn(model), ort_fn(tmp), enc, names,
                                             f"{tmp}: fused FP32 graph disagrees with PyTorch",
                                             fu.atol, 1.0)
        return info

    return Step(name, fixed(rel), fu, (src, ckpt), dict, build,
                skip=skipped_steps(fam.model_type).get(name))


def fused_step(b: Builder) -> Step:
    return fused_graph_step(b, "onnx-fp32-fused", "onnx/fp32-fused.onnx", "onnx-fp32", "baseline")


def ort_dynamic_step(b: Builder, fused: bool) -> Step:
    from export.onnx_export import Validation, check_agreement, ort_fn, validation_inputs
    from export.ort_graphs import quantize_dynamic_graph

    dy = b.cfg.dynamic
    src = "onnx-fp32-fused" if fused else "onnx-fp32"
    suffix = "-fused" if fused else ""

    def build(tmp: Path) -> dict[str, Any]:
        info = quantize_dynamic_graph(b.path(src), tmp, dy, fused)
        enc, names = validation_inputs(b.path("baseline"), Validation(dy.n_validate, dy.data))
        info["agreement_vs_fp32"] = check_agreement(
            ort_fn(b.path(src)), ort_fn(tmp), enc, names, f"{tmp}: dynamic INT8 vs FP32", None,
            dy.min_top1)
        return info

    return Step(f"onnx-dynamic{suffix}", fixed(f"onnx/dynamic{suffix}.onnx"), dy, (src, "baseline"),
                dict, build)


def torch_dynamic_step(b: Builder) -> Step:
    from export.torch_dynamic import build_torch_dynamic

    c = b.cfg.torch_dynamic
    return Step("torch-ptq-dynamic", fixed("torch/ptq-dynamic.pt"), c, ("baseline",), dict,
                lambda tmp: build_torch_dynamic(b.path("baseline"), tmp, c))


def calibration_step(b: Builder) -> Step:
    from calibration.calibset import build_calibration_set

    c = b.cfg.calib

    def build(tmp: Path) -> dict[str, Any]:
        from common.checkpoint import TextEncoder

        te = TextEncoder.from_checkpoint(b.path("baseline"))
        return build_calibration_set(b.path("task"), te, c, tmp)

    # The file name carries the key, so a calibration set made for other inputs is never found.
    def path(inputs: dict[str, str]) -> str:
        return f"calibration/calib-{Manifest.key(recipe(c), inputs)[:12]}.npz"

    return Step("calibration", path, c, ("baseline", "task"), dict, build)


def ptq_step(b: Builder) -> Step:
    """ort/ptq: the accuracy-aware search over the declared recipe space (calibration.ptq_search)."""
    from calibration.ptq_search import search_static_ptq

    cfg = b.cfg.static

    def build(tmp: Path) -> dict[str, Any]:
        import numpy as np

        from calibration.calibset import sample_calibration
        from common.checkpoint import TextEncoder
        from common.task import read_task

        te = TextEncoder.from_checkpoint(b.path("baseline"))
        val = read_task(b.path("task")).split("validation")
        names = list(te.input_names)

        def sampler(rows: int, seed: int) -> dict[str, Any]:
            return sample_calibration(val, te, rows, seed, b.cfg.calib.seq_len)[0]

        return search_static_ptq(b.path("onnx-fp32"), tmp, b.path("calibration"), names,
                                 b.cfg.calib.batch_size, cfg, te.encode_split(val),
                                 np.asarray(val.labels), family(b).ffn[-1], sampler)

    return Step("onnx-ptq", fixed("onnx/ptq.onnx"), cfg,
                ("onnx-fp32", "calibration", "baseline", "task"), dict, build)


def chosen_recipe(b: Builder, ckpt: str, **change: Any) -> Any:
    """The static-PTQ recipe ort/ptq's search chose, for the model in `ckpt`: a student keeps
    the FP32 blocks among the layers it kept, renumbered (train.student.kept_layers)."""
    from calibration.ort_static import Recipe

    chosen = b.manifest.get("onnx-ptq")["static"]
    blocks = tuple(chosen["fp32_blocks"])
    if ckpt != "baseline":
        keep = b.manifest.get(ckpt)["layers_kept"]
        blocks = tuple(keep.index(x) for x in blocks if x in keep)
    return Recipe(**{**chosen, "fp32_blocks": blocks, **change})


def ptq_s8_graph_step(b: Builder, name: str, rel: str, src: str, ckpt: str) -> Step:
    """The recipe ort/ptq chose, on the FP32 graph `src` of `ckpt`, with symmetric S8
    activations, the only kind TensorRT takes; no search of its own."""
    from calibration.ptq_search import build_fixed

    def build(tmp: Path) -> dict[str, Any]:
        from common.checkpoint import TextEncoder

        recipe = chosen_recipe(b, ckpt, activation_type="s8", symmetric=True)
        te = TextEncoder.from_checkpoint(b.path(ckpt))
        return build_fixed(b.path(src), tmp, b.path("calibration"), list(te.input_names),
                           b.cfg.calib.batch_size, recipe, family(b).ffn[-1],
                           b.cfg.static.per_channel)

    return Step(name, fixed(rel), b.cfg.static, ("onnx-ptq", src, "calibration", ckpt), dict,
                build)


def ptq_s8_step(b: Builder) -> Step:
    """ort/ptq-s8 (and trt/ptq)."""
    return ptq_s8_graph_step(b, "onnx-ptq-s8", "onnx/ptq-s8.onnx", "onnx-fp32", "baseline")


@dataclasses.dataclass(frozen=True)
class PtqFusedConfig:
    """What ort/ptq-fused is built and checked with: the static-PTQ config (per-channel weights;
    the recipe itself comes from the onnx-ptq artifact) and the agreement check, the dynamic INT8
    graphs' (their validation rows and top-1 floor)."""
    static: Any
    check: Any


def ptq_fused_graph_step(b: Builder, name: str, rel: str, src: str, ckpt: str) -> Step:
    """The recipe ort/ptq chose, on the fused graph `src` of `ckpt` (static QAttention + QDQ
    MatMuls, calibration/ort_fused.py), checked against that fused FP32 graph; skipped with the
    fused graph for families ONNX Runtime does not fuse."""
    from calibration.ort_fused import quantize_fused

    def build(tmp: Path) -> dict[str, Any]:
        from common.calibset import CalibrationSet
        from common.checkpoint import TextEncoder
        from export.onnx_export import Validation, check_agreement, ort_fn, validation_inputs

        recipe = chosen_recipe(b, ckpt)
        names = list(TextEncoder.from_checkpoint(b.path(ckpt)).input_names)
        calib = CalibrationSet(b.path("calibration"), b.cfg.calib.batch_size, names,
                               recipe.calib_rows)
        info = quantize_fused(b.path(src), tmp, calib, recipe, family(b).ffn[-1],
                              b.cfg.static.per_channel)
        # the same bar as the dynamic INT8 graphs: top-1 agreement with the fused FP32 graph
        dy = b.cfg.dynamic
        enc, names = validation_inputs(b.path(ckpt), Validation(dy.n_validate, dy.data))
        info["agreement_vs_fp32"] = check_agreement(
            ort_fn(b.path(src)), ort_fn(tmp), enc, names,
            f"{tmp}: static INT8 on the fused graph vs FP32", None, dy.min_top1)
        return info

    return Step(name, fixed(rel), PtqFusedConfig(b.cfg.static, b.cfg.dynamic),
                ("onnx-ptq", src, "calibration", ckpt), dict, build)


def ptq_fused_step(b: Builder) -> Step:
    """ort/ptq-fused."""
    return ptq_fused_graph_step(b, "onnx-ptq-fused", "onnx/ptq-fused.onnx", "onnx-fp32-fused",
                                "baseline")


def qat_step(b: Builder) -> Step:
    from train.qat import train_qat

    q = b.cfg.qat

    def build(tmp: Path) -> dict[str, Any]:
        r = train_qat(q, b.path("baseline"), b.path("calibration"), b.cfg.calib.batch_size, tmp)
        return {k: r[k] for k in ("val_macro_f1_before_qat", "best_val_macro_f1", "best_step",
                                  "steps", "train_minutes", "quantization", "inserted")}

    return Step("qat", fixed("qat"), q, ("baseline", "calibration", "task"), dict, build)


def qat_onnx_step(b: Builder, flavour: str) -> Step:
    from export.qat_export import export_qat

    weights = "s8" if flavour == "s8" else b.cfg.qat_export.weights
    c = dataclasses.replace(b.cfg.qat_export, flavour=flavour, weights=weights)
    name = "onnx-qat" if flavour == "u8" else "onnx-qat-s8"
    return Step(name, fixed(f"onnx/{name.removeprefix('onnx-')}.onnx"), c, ("qat",), dict,
                lambda tmp: export_qat(b.path("qat"), tmp, c))


def qlora_step(b: Builder) -> Step:
    q = b.cfg.qlora

    def build(tmp: Path) -> dict[str, Any]:
        from train.qlora import train_qlora

        beside = b.background is not None  # trained in a child beside the baseline (overlap.py)
        r = b.background.collect(tmp) if beside else train_qlora(q, tmp)
        child = ({"child_seconds": round(60 * r["train_minutes"], 1),
                  "child_peak_rss_mb": r.get("peak_rss_mb")} if beside else {})
        return {**{k: r[k] for k in ("best_val_macro_f1", "train_minutes", "trainable_params",
                                     "trainable_pct", "weight_memory", "targets",
                                     "fp32_weight_bytes")}, "trained_beside_baseline": beside,
                **child}

    return Step("qlora", fixed("qlora"), q, ("task",), model_source(q.model), build)


def optimum_steps(b: Builder) -> list[Step]:
    """Optimum's own exporter and one-line quantizers, as reference rows (export.optimum_anchors)."""
    from common.arch import skipped_steps
    from export import optimum_anchors as oa

    c = b.cfg.optimum

    def static(tmp: Path) -> dict[str, Any]:
        import numpy as np

        rows = int(b.manifest.get("onnx-ptq")["static"]["calib_rows"])
        with np.load(b.path("calibration")) as z:
            drawn = z["rows"][:rows].tolist()
        return oa.build_static(b.path("onnx-fp32"), b.path("baseline"), tmp, drawn,
                               b.path("task"), c)

    return [
        Step("onnx-optimum-fp32", fixed("onnx/optimum-fp32.onnx"), c, ("baseline", "onnx-fp32"),
             dict, lambda tmp: oa.export_and_compare(b.path("onnx-fp32"), b.path("baseline"), tmp,
                                                     b.path("task"), c)),
        Step("onnx-optimum-dynamic", fixed("onnx/optimum-dynamic.onnx"), c,
             ("baseline", "onnx-fp32"), dict,
             lambda tmp: oa.build_dynamic(b.path("onnx-fp32"), b.path("baseline"), tmp)),
        Step("onnx-optimum-static", fixed("onnx/optimum-static.onnx"), c,
             ("baseline", "onnx-fp32", "calibration", "onnx-ptq", "task"), dict, static,
             skip=skipped_steps(family(b).model_type).get("onnx-optimum-static")),
    ]


def hf_steps(b: Builder) -> list[Step]:
    """artifacts/hf/<name>/: every variant the registry marks `hf` (the ONNX Runtime variants, and
    the PyTorch baseline as "baseline") as a folder optimum / transformers load, with its model
    card (export.hf), carrying the scores of the report that measured this very artifact."""
    import hashlib
    import json

    from common.variants import hf_folders

    c = b.cfg.hf
    steps = []
    now: list[frozenset[str]] = []  # the code's fingerprints, computed once, when first asked

    def code_why(artifact: str) -> str | None:
        """Why a build would remake `artifact` for its code alone: its scores are then not the
        folder's to quote (the rule the comparison applies)."""
        from engines.freshness import code_stale, current_code

        now[:] = now or [current_code()]
        return code_stale(b.manifest, now[0]).get(artifact)

    for folder, v in hf_folders():
        report = Path(b.cfg.reports) / f"{v.backend}-{v.variant}.json"

        def scored(report: Path = report, artifact: str = v.artifact) -> dict[str, Any] | None:
            """The variant's report, if it scored this very artifact (not an older build or
            another model's)."""
            if not report.is_file() or not b.manifest.built(artifact):
                return None
            try:
                rep = json.loads(report.read_text())
            except (OSError, ValueError):  # a truncated report is no score
                return None
            if card_problem(rep) or code_why(artifact):  # unreadable, or would be remade
                return None
            return rep if rep["made_by"].get("sha256") == b.art(artifact) else None

        def sources(scored=scored, folder: str = folder, key: str = v.key,
                    precision: str = v.precision.value) -> dict[str, str]:
            rep = scored()
            # the registry facts this folder is built from (common.variants is data, not code,
            # in the key: common.codehash)
            return {"report": hashlib.sha256(json.dumps(rep, sort_keys=True).encode()).hexdigest()
                    if rep else "none", "variant": f"{key} ({precision}) as hf/{folder}"}

        def build(tmp: Path, folder: str = folder, artifact: str = v.artifact,
                  ckpt: str = v.checkpoint, torch: bool = v.backend == "torch",
                  precision: str = v.precision.value, scored=scored) -> dict[str, Any]:
            from export.hf import write_folder

            rep = scored()
            onnx = None if torch else b.path(artifact)
            return write_folder(tmp, b.path(ckpt), onnx, b.manifest.get(artifact), rep, folder,
                                c, precision)

        deps = tuple(dict.fromkeys((v.artifact, v.checkpoint)))
        steps.append(Step(f"hf-{folder}", fixed(f"hf/{folder}"), c, deps, sources, build,
                          optional=True))
    return steps


def card_problem(rep: Any) -> str | None:
    """Why a report cannot go on a model card (export.hf.model_card reads these fields; a
    truncated, hand-edited or foreign report must not break the build), or None."""
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    def obj(x: Any, *keys: str) -> bool:
        return isinstance(x, dict) and all(k in x for k in keys)

    if not obj(rep, "made_by", "macro_f1", "accuracy", "size_mb", "latency_ms", "batched",
               "batch_invariance", "device", "provider", "threads", "per_class", "task", "rows"):
        return "not a report object with every field a model card reads"
    labels = rep["task"].get("labels") if isinstance(rep["task"], dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return "its task names no labels"
    if not (obj(rep["made_by"], "sha256") and obj(rep["latency_ms"], "p50", "p95")
            and obj(rep["batched"], "batch_size", "macro_f1")
            and obj(rep["batch_invariance"], "differ") and obj(rep["device"])
            and obj(rep["per_class"], *labels) and obj(rep["rows"], "scored", "split_rows")):
        return ("its made_by, latency_ms, batched, batch_invariance, device, per_class or rows is "
                "short")
    rows = [rep["per_class"][c] for c in labels]
    if not all(obj(r, "precision", "recall", "f1") for r in rows):
        return "a per_class row lacks precision, recall or f1"
    values = [rep["macro_f1"], rep["accuracy"], rep["size_mb"], rep["latency_ms"]["p50"],
              rep["latency_ms"]["p95"], rep["batched"]["macro_f1"],
              *(r[k] for r in rows for k in ("precision", "recall", "f1"))]
    return None if all(number(v) for v in values) else "a score is not a number"


def trt_steps(b: Builder) -> list[Step]:
    """One engine per trt variant of the registry, from its declared precision and source ONNX."""
    from common.trt import tensorrt_status
    from common.variants import variants

    ok, why = tensorrt_status()
    steps = []
    for v in (v for v in variants() if v.backend == "trt"):
        precision, src = v.param("precision"), v.param("source")
        # the profiles span at least the baseline's own max length (its recipe's, known before it
        # is built); --trt-profile-max-seq may widen them
        max_seq = max(b.cfg.trt.profile.max_seq, b.cfg.finetune.max_length)
        cfg = dataclasses.replace(b.cfg.trt, precision=precision,
                                  calib_batch_size=b.cfg.calib.batch_size,
                                  profile=dataclasses.replace(b.cfg.trt.profile, max_seq=max_seq))
        deps = (src, "calibration") if precision == "int8-implicit" else (src,)
        skip = None if ok else f"TensorRT is not usable here: {why}"
        if ok and precision == "int8-implicit":
            import tensorrt as trt

            from common.trt import trt_major

            if trt_major(trt.__version__) >= 11:
                skip = (f"implicit INT8 calibration does not exist in TensorRT {trt.__version__}; "
                        "trt/ptq (explicit Q/DQ) is built instead")
        steps.append(Step(v.artifact, fixed(f"trt/{v.variant}.plan"), cfg, deps,
                          _gpu_source if ok else dict, _trt_build(b, src, cfg), skip=skip))
    return steps


def _gpu_source() -> dict[str, str]:
    from common.trt import gpu_identity

    ident = gpu_identity()
    return {"gpu": "|".join(f"{k}={ident[k]}" for k in sorted(ident))}


def _trt_build(b: Builder, src: str, cfg: Any) -> Callable[[Path], dict[str, Any]]:
    def build(tmp: Path) -> dict[str, Any]:
        import tensorrt as trt

        from calibration.trt_calibrator import cache_name
        from engines.trt_build import build_engine

        calib = cache = None
        if cfg.precision == "int8-implicit":
            calib = b.path("calibration")
            cache = b.root / "trt" / cache_name(b.art(src), b.art("calibration"), trt.__version__,
                                                cfg.calib_batch_size)
            cache.parent.mkdir(parents=True, exist_ok=True)
        return build_engine(b.path(src), tmp, cfg, calib, cache)

    return build


def ort_dynamic_plain_step(b: Builder) -> Step:
    return ort_dynamic_step(b, False)


def ort_dynamic_fused_step(b: Builder) -> Step:
    return ort_dynamic_step(b, True)


def qat_onnx_u8_step(b: Builder) -> Step:
    """ort/qat: the CPU flavour."""
    return qat_onnx_step(b, "u8")


def qat_onnx_s8_step(b: Builder) -> Step:
    """ort/qat-s8 and trt/qat: the same trained model with S8 activations for TensorRT."""
    return qat_onnx_step(b, "s8")


# Build order inside a stage: later factories read earlier artifacts (ptq: the search first, then
# its S8 (TensorRT) flavour and the fused-graph version of its recipe).
from engines import student as _student  # noqa: E402 - its steps use the step functions above

for _stage, _factories in (
        ("task", (task_step,)),
        ("baseline", (baseline_step, torch_fp16_step)),
        ("onnx", (onnx_step, fused_step)),
        ("dynamic", (torch_dynamic_step, ort_dynamic_plain_step, ort_dynamic_fused_step)),
        ("calibration", (calibration_step,)),
        ("ptq", (ptq_step, ptq_s8_step, ptq_fused_step)),
        ("student", _student.FACTORIES),
        ("qat", (qat_step, qat_onnx_u8_step, qat_onnx_s8_step)),
        ("qlora", (qlora_step,)),
        ("optimum", (optimum_steps,)),
        ("hf", (hf_steps,)),
        ("trt", (trt_steps,))):
    for _f in _factories:
        register_step(_stage)(_f)
