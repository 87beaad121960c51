"""ONNX Runtime graph variants of the FP32 export: the fused FP32 graph and dynamic INT8.

`fp32-fused` is ONNX Runtime's transformers optimizer output (EmbedLayerNormalization, Attention,
SkipLayerNormalization, BiasGelu): the fastest FP32 graph ORT runs on CPU, hence the honest FP32
reference for speed-ups. `dynamic` / `dynamic-fused` are quantize_dynamic of the plain / fused graph.
Families the optimizer has no fusion for (common.arch: `ort_fusion`) are skipped by the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc, location
from common.data import DEFAULT_DATASET
from common.errors import UserError
from common.onnx_graph import op_counts


@dataclass(frozen=True)
class FuseConfig:
    VERSION = 1
    opt_level: int = doc(0, "ORT graph optimization applied by the optimizer itself (0: none; "
                         "the session applies its own at load)")
    # the fused graph's kernels (fused attention, SkipLayerNorm) sum in another order
    atol: float = doc(2e-3, "max |delta logit| vs PyTorch")
    n_validate: int = 128
    data: str = location(DEFAULT_DATASET, "where the validation rows come from")

    def __post_init__(self) -> None:
        check_ranges(self, opt_level="in [0, 99]", atol=">= 0", n_validate=">= 1")


@dataclass(frozen=True)
class DynamicConfig:
    VERSION = 1
    per_channel: bool = doc(False, "measured here: per-tensor is as accurate and faster on ORT CPU")
    reduce_range: bool = doc(False, "7-bit weights only help on old non-VNNI int8 overflow paths")
    # A trained classifier's margins are wide; INT8 weight noise flips a few per cent at most.
    min_top1: float = doc(0.95, "build fails below this top-1 agreement with the FP32 graph")
    n_validate: int = 128
    data: str = location(DEFAULT_DATASET, "where the validation rows come from")

    def __post_init__(self) -> None:
        check_ranges(self, min_top1="in [0, 1]", n_validate=">= 1")


class FusionError(UserError, RuntimeError):
    pass


def fuse_fp32(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int,
              cfg: FuseConfig) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                         hidden_size=hidden_size, opt_level=cfg.opt_level, use_gpu=False)
    opt.save_model_to_file(str(dst))
    counts = op_counts(dst)
    fused = {k: counts.get(k, 0) for k in ("EmbedLayerNormalization", "Attention",
                                             "SkipLayerNormalization", "BiasGelu", "FastGelu")}
    if fused["Attention"] == 0:
        raise FusionError(f"ONNX Runtime's optimizer fused no Attention in {src}; the graph "
                          "pattern changed (exporter or transformers version?)")
    return {"fused_ops": fused}


def quantize_dynamic_graph(src: Path, dst: Path, cfg: DynamicConfig, fused: bool) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused graph's com.microsoft ops carry no type info for the quantizer's shape pass;
    # DefaultTensorType tells it to assume float (onnxruntime quantization docs).
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
    quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                     weight_type=QuantType.QInt8, extra_options=extra)
    counts = op_counts(dst)
    q = {k: v for k, v in counts.items() if k in {"MatMulInteger", "DynamicQuantizeLinear",
                                                   "DynamicQuantizeMatMul", "QAttention",
                                                   "QEmbedLayerNormalization", "DequantizeLinear",
                                                   "QGemm", "MatMulIntegerToFloat"}}
    if not q:
        raise FusionError(f"quantize_dynamic left {src} without quantized ops")
    return {"quantized_ops": q}
