"""ONNX Runtime graph variants of the FP32 export: the fused FP32 graph and dynamic INT8.

`fp32-fused` is ONNX Runtime's transformers optimizer output (EmbedLayerNormalization, Attention,
BiasGelu) with its SkipLayerNormalization nodes written back as Add + LayerNormalization: the
fastest FP32 graph ORT runs on CPU, hence the honest FP32 reference for speed-ups.
`dynamic` / `dynamic-fused` are quantize_dynamic of the plain / fused graph (so they, and
ort/ptq-fused, inherit the unfused LayerNorm). Families the optimizer has no fusion for
(common.arch: `ort_fusion`) are skipped by the pipeline.

Why unfuse SkipLayerNormalization: ONNX Runtime's CPU kernel for it (float) is a scalar loop per
row, a serial sum and a division per element (contrib_ops/cpu/skip_layer_norm.cc), while the
ONNX LayerNormalization kernel is vectorized. Measured on a Zen 4 (onnxruntime 1.32, one
[1, 25, 384] tensor, MiniLM's shape at batch 1): SkipLayerNormalization 53 us (1 thread) /
31 us (2 threads), Add + Add + LayerNormalization 15 us / 15 us, of which ~7 us is the cost of a
session call. Over the 12 of a 6-layer model that is 0.3-0.45 ms per sentence: an eighth of the
fused FP32 graph, a quarter of the INT8 ones (docs/decisions.md, 2026-12-05). The bias is added
last, right before LayerNormalization, so that ONNX Runtime's own SkipLayerNormFusion (session
level) does not fuse it back: that fusion needs the Add feeding LayerNormalization to add two 3-D
tensors (core/optimizer/skip_layer_norm_fusion.cc); the build checks with `session_op_counts`
that it did not.
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
    opt_level: int = doc(0, "ORT graph optimization applied by the optimizer itself (0: none; "
                         "the session applies its own at load)")
    unfuse_skip_layernorm: bool = doc(True, "SkipLayerNormalization -> Add + LayerNormalization "
                                      "(ORT's CPU kernel for it is slow; module docstring)")
    # the fused graph's kernels (fused attention, SkipLayerNorm) sum in another order
    atol: float = doc(2e-3, "max |delta logit| vs PyTorch")
    n_validate: int = 128
    data: str = location(DEFAULT_DATASET, "where the validation rows come from")

    def __post_init__(self) -> None:
        check_ranges(self, opt_level="in [0, 99]", atol=">= 0", n_validate=">= 1")


@dataclass(frozen=True)
class DynamicConfig:
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


def unfuse_skip_layernorm(model) -> int:
    """Rewrite every SkipLayerNormalization that has a bias and whose only output read is the
    normalized tensor as Add(input, skip) -> Add(bias) -> LayerNormalization. Returns how many
    (0 below ONNX opset 17, which has no LayerNormalization). Without a bias,
    Add(input, skip) -> LayerNormalization is the pattern ONNX Runtime's session fuses back, so
    such a node is left as it is (a BERT-style export has a bias: the output projection's)."""
    from onnx import helper

    if any(o.domain in ("", "ai.onnx") and o.version < 17 for o in model.opset_import):
        return 0  # no ONNX LayerNormalization before opset 17: the fused op stays
    nodes, n = [], 0
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
        if not bias or any(list(node.output)[1:]):
            nodes.append(node)  # no bias, or mean / inv-std / the sum are read: keep it fused
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        # names from the output (unique in a valid graph), not the node name (optional)
        base = f"{node.output[0]}/unfused"
        nodes.append(helper.make_node("Add", [x, skip], [f"{base}/residual"], f"{base}/Add"))
        nodes.append(helper.make_node("Add", [f"{base}/residual", bias], [f"{base}/biased"],
                                      f"{base}/AddBias"))
        nodes.append(helper.make_node("LayerNormalization",
                                      [f"{base}/biased", gamma] + ([beta] if beta else []),
                                      [node.output[0]], f"{base}/LayerNorm", axis=-1,
                                      epsilon=eps))
        n += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return n


def refused_skip_layernorm(path: Path) -> int:
    """How many SkipLayerNormalization nodes ONNX Runtime's session fuses back into the graph at
    `path`: those it runs beyond those the file keeps."""
    kept = op_counts(path).get("SkipLayerNormalization", 0)
    return session_op_counts(path).get("SkipLayerNormalization", 0) - kept


def session_op_counts(path: Path) -> dict[str, int]:
    """Op counts of the graph an ONNX Runtime CPU session runs after its own fusions (EXTENDED:
    the level SkipLayerNormFusion runs at; ALL adds only layout transforms)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort-session-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "session.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return op_counts(Path(so.optimized_model_filepath))


def fuse_fp32(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int,
              cfg: FuseConfig) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                         hidden_size=hidden_size, opt_level=cfg.opt_level, use_gpu=False)
    unfused = unfuse_skip_layernorm(opt.model) if cfg.unfuse_skip_layernorm else 0
    opt.save_model_to_file(str(dst))
    counts = op_counts(dst)
    fused = {k: counts.get(k, 0) for k in ("EmbedLayerNormalization", "Attention",
                                             "SkipLayerNormalization", "LayerNormalization",
                                             "BiasGelu", "FastGelu")}
    if fused["Attention"] == 0:
        raise FusionError(f"ONNX Runtime's optimizer fused no Attention in {src}; the graph "
                          "pattern changed (exporter or transformers version?)")
    if cfg.unfuse_skip_layernorm and fused["SkipLayerNormalization"]:
        # below opset 17, without a bias, or with an extra output read: these run ORT's slow
        # kernel, said here rather than left as a quiet gap in the speed-ups
        print(f"  {dst.name}: {fused['SkipLayerNormalization']} SkipLayerNormalization kept "
              "(ONNX Runtime's CPU kernel for it is slow; an export at opset >= 17 unfuses them)")
    if unfused:
        refused = refused_skip_layernorm(dst)
        if refused:
            raise FusionError(f"{dst}: ONNX Runtime's session fused {refused} "
                              "SkipLayerNormalization back (its SkipLayerNormFusion pattern "
                              "changed); set fuse.unfuse_skip_layernorm=false or update "
                              "export/ort_graphs.unfuse_skip_layernorm")
    return {"fused_ops": fused, "skip_layernorm_unfused": unfused}


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
