"""Reference rows built by Optimum's own API from our FP32 ONNX, scored by the same evaluator:
what a user gets in one line from `optimum-cli onnxruntime quantize --avx512_vnni`.

- optimum-dynamic: ORTQuantizer + AutoQuantizationConfig.avx512_vnni(is_static=False);
- optimum-static: avx512_vnni(is_static=True), calibrated through Optimum's calibration API
  (AutoCalibrationConfig.minmax, its default) on the same validation rows as our static PTQ;
- and the baseline exported by Optimum's exporter (main_export), compared with our export
  (max |delta logit| on validation sentences): the two exporters should agree.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc


@dataclass(frozen=True)
class OptimumConfig:
    calibration: str = doc("minmax", "Optimum calibration for the static anchor: minmax | "
                           "percentiles | entropy (AutoCalibrationConfig)")
    n_compare: int = doc(256, "validation sentences the two exporters are compared on")

    def __post_init__(self) -> None:
        check_ranges(self, n_compare=">= 1")


def _model_dir(fp32: Path, baseline: Path, tmp: Path) -> Path:
    d = tmp / "fp32"
    d.mkdir()
    shutil.copy(fp32, d / "model.onnx")
    shutil.copy(baseline / "config.json", d / "config.json")
    return d


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("optimum", "optimum-onnx")}


def build_dynamic(fp32: Path, baseline: Path, out: Path) -> dict[str, Any]:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    with tempfile.TemporaryDirectory(prefix="optimum-") as tmp:
        q = ORTQuantizer.from_pretrained(_model_dir(fp32, baseline, Path(tmp)))
        qcfg = AutoQuantizationConfig.avx512_vnni(is_static=False)
        path = q.quantize(quantization_config=qcfg, save_dir=Path(tmp) / "q")
        shutil.copy(Path(path) / "model_quantized.onnx", out)
    return {"optimum": {"how": "ORTQuantizer + AutoQuantizationConfig.avx512_vnni(is_static=False)",
                        "config": qcfg.__dict__ | {"format": str(qcfg.format), "mode": str(qcfg.mode),
                                                   "activations_dtype": str(qcfg.activations_dtype),
                                                   "weights_dtype": str(qcfg.weights_dtype)},
                        "versions": _versions()}}


def build_static(fp32: Path, baseline: Path, out: Path, rows: list[int], data: str | Path,
                 cfg: OptimumConfig) -> dict[str, Any]:
    """Calibrated on validation rows `rows` (ours), tokenized unpadded as a user would."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    from common.checkpoint import TextEncoder
    from common.task import load_split

    te = TextEncoder.from_checkpoint(baseline)
    enc = te.encode_split(load_split(data, "validation").take(rows))
    columns: dict[str, list[list[int]]] = {n: [] for n in te.input_names}
    for i in range(len(enc)):
        feed = enc.batch([i], te.input_names)
        for n in te.input_names:
            columns[n].append(feed[n][0].tolist())
    dataset = Dataset.from_dict(columns)
    with tempfile.TemporaryDirectory(prefix="optimum-") as tmp:
        q = ORTQuantizer.from_pretrained(_model_dir(fp32, baseline, Path(tmp)))
        qcfg = AutoQuantizationConfig.avx512_vnni(is_static=True)
        calib = getattr(AutoCalibrationConfig, cfg.calibration)(dataset)
        ranges = q.fit(dataset=dataset, calibration_config=calib,
                       onnx_augmented_model_name=str(Path(tmp) / "augmented.onnx"),
                       operators_to_quantize=qcfg.operators_to_quantize)
        path = q.quantize(quantization_config=qcfg, save_dir=Path(tmp) / "q",
                          calibration_tensors_range=ranges)
        shutil.copy(Path(path) / "model_quantized.onnx", out)
    return {"optimum": {"how": "ORTQuantizer + AutoQuantizationConfig.avx512_vnni(is_static=True), "
                               f"AutoCalibrationConfig.{cfg.calibration} on {len(rows)} validation "
                               "rows (those our static PTQ calibrates on)",
                        "operators_to_quantize": list(qcfg.operators_to_quantize),
                        "per_channel": qcfg.per_channel, "versions": _versions()}}


def export_and_compare(ours: Path, baseline: Path, out: Path, data: str | Path,
                       cfg: OptimumConfig) -> dict[str, Any]:
    """Export the baseline with Optimum's exporter (to `out`) and compare its logits with our
    graph's on validation sentences (batch 1 and padded batches)."""
    from optimum.exporters.onnx import main_export

    from common.checkpoint import TextEncoder
    from common.task import load_split
    from export.onnx_export import check_agreement, ort_fn

    te = TextEncoder.from_checkpoint(baseline)
    enc = te.encode_split(load_split(data, "validation").head(cfg.n_compare))
    with tempfile.TemporaryDirectory(prefix="optimum-export-") as tmp:
        main_export(str(baseline), output=tmp, task="text-classification", opset=17,
                    do_validation=False)
        import onnx

        names = [i.name for i in onnx.load(str(Path(tmp) / "model.onnx"),
                                           load_external_data=False).graph.input]
        theirs, mine = ort_fn(Path(tmp) / "model.onnx"), ort_fn(ours)
        ours_in = list(te.input_names)
        # a reference, not a gate (atol None, top-1 0): each graph is fed the inputs it declares
        r = check_agreement(lambda f: mine({k: f[k] for k in ours_in}),
                            lambda f: theirs({k: f[k] for k in names}), enc,
                            list(dict.fromkeys(ours_in + names)), "Optimum's exporter",
                            atol=None, min_top1=0.0, batch_size=32)
        shutil.copy(Path(tmp) / "model.onnx", out)
    return {"optimum_exporter": {"max_abs_logit_diff": r["max_abs_diff"],
                                 "top1_agreement": r["top1_agreement"],
                                 "n": r["n"], "their_inputs": names, "versions": _versions()}}
