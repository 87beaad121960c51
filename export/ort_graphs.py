"""ONNX Runtime graph variants of the FP32 export: the fused FP32 graph and dynamic INT8.

`fp32-fused` is ONNX Runtime's transformers optimizer output (EmbedLayerNormalization, Attention,
SkipLayerNormalization, BiasGelu): the fastest FP32 graph ORT runs on CPU, hence the honest FP32
reference for speed-ups. `dynamic` / `dynamic-fused` are quantize_dynamic of the plain / fused graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DynamicConfig:
    per_channel: bool = False  # measured here: per-tensor is as accurate and faster on ORT CPU
    reduce_range: bool = False  # 7-bit weights only help on old non-VNNI int8 overflow paths
    # Build fails below this top-1 agreement with the FP32 graph on the validation sentences:
    # a trained classifier's margins are wide, and INT8 weight noise flips a few per cent at most.
    min_top1: float = 0.95


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in m.graph.node))


def fuse_fp32(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=0, use_gpu=False)
    opt.save_model_to_file(str(dst))
    counts = op_counts(dst)
    fused = {k: counts.get(k, 0) for k in ("EmbedLayerNormalization", "Attention",
                                             "SkipLayerNormalization", "BiasGelu", "FastGelu")}
    if fused["Attention"] == 0:
        raise RuntimeError(f"ONNX Runtime's optimizer fused no Attention in {src}; the graph "
                           "pattern changed (exporter or transformers version?)")
    return {"fused_ops": fused}


def quantize_dynamic_graph(src: Path, dst: Path, cfg: DynamicConfig, fused: bool) -> dict:
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
        raise RuntimeError(f"quantize_dynamic left {src} without quantized ops")
    return {"quantized_ops": q}
