"""Static INT8 on ONNX Runtime's fused graph (ort/ptq-fused): the recipe the static-PTQ search chose
for ort/ptq (calibration method, percentile, rows), applied to the graph with fused Attention.

Why a second graph: ONNX Runtime has no QDQ form of its fused Attention, so ort/ptq's QDQ graph
runs attention unfused, while dynamic INT8 on the fused graph runs QAttention: this graph is as
fast as dynamic-fused and closer to FP32 (docs/decisions.md). Unlike dynamic-fused it is static:
every scale is a constant, so an answer does not depend on the batch it is computed in.

Construction (each step is ONNX Runtime's own quantizer where it has one):
1. The Attention inputs' ranges are calibrated on the fused FP32 graph with the recipe's method.
2. quantize_dynamic turns Attention into QAttention (S8 weights; its Attention quantizer uses
   7-bit weights, so U8 x S8 products cannot saturate on AVX2 without VNNI) and
   EmbedLayerNormalization into QEmbedLayerNormalization (U8 tables). The DynamicQuantizeLinear in
   front of each QAttention is then replaced by a QuantizeLinear with the calibrated scale and
   zero point: the graph is static.
3. quantize_static (QDQ, the recipe's calibration) of the layer MatMuls: inputs only, S8 weights
   per channel, as in ort/ptq (calibration/ort_static.py says why).
4. Q/DQ stays only where ONNX Runtime fuses it into MatMulIntegerToFloat: a consumer of a shared
   DequantizeLinear output that is not a MatMul (the residual Add before LayerNorm)
   reads the float tensor again. Measured: with the residual through Q/DQ 1.26x and KL 0.0029;
   without, 1.34x and KL 0.0020 (the residual stream is no longer rounded to 8 bits).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from calibration.ort_reader import make_reader
from calibration.ort_static import Recipe, block_of, ffn_out_pattern, static_options
from common.calibset import CalibrationSet
from common.errors import UserError


class FusedPtqError(UserError, RuntimeError):
    pass


def _with_float_value_info(model, tensors: set[str]):
    """ORT's calibrator only histograms tensors whose type it knows; the fused graph's
    com.microsoft ops carry no type info for ONNX shape inference, so declare their float inputs."""
    from onnx import TensorProto, helper

    known = {v.name for v in model.graph.value_info} | {i.name for i in model.graph.initializer}
    model.graph.value_info.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                  for t in sorted(tensors - known))
    return model


def _attention_blocks(model) -> dict[str, str]:
    """Attention node name -> its layer ("layer.3"): the fused node has no module path in its
    name, the output projection MatMul that reads it has."""
    readers = {i: n for n in model.graph.node for i in n.input}
    return {n.name: block_of(readers[n.output[0]].name) for n in model.graph.node
            if n.op_type == "Attention" and n.output[0] in readers}


def calibrate_attention_inputs(fused: Path, calib: CalibrationSet, recipe: Recipe,
                               work: Path) -> dict[str, tuple[float, float]]:
    """(min, max) of every Attention node's input, by the recipe's calibration method."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator

    m = onnx.load(str(fused))
    inputs = {n.input[0] for n in m.graph.node if n.op_type == "Attention"}
    src = work / "fused-typed.onnx"
    onnx.save(_with_float_value_info(m, inputs), str(src))
    extra = {"percentile": recipe.percentile} if recipe.method == "percentile" else {}
    c = create_calibrator(str(src), op_types_to_calibrate=["Attention"],
                          augmented_model_path=str(work / "augmented.onnx"),
                          calibrate_method=static_options(recipe)[0], extra_options=extra)
    c.collect_data(make_reader(calib))
    ranges = c.compute_data()
    # range_value holds (lowest, highest), as arrays of one element or scalars
    lo_hi = {t: np.asarray(ranges[t].range_value, dtype=np.float64).reshape(2, -1)[:, 0]
             for t in inputs}
    return {t: (float(v[0]), float(v[1])) for t, v in lo_hi.items()}


def staticize_qattention(model, ranges: dict[str, tuple[float, float]]) -> int:
    """Replace each DynamicQuantizeLinear feeding a QAttention by a QuantizeLinear with the
    calibrated scale and zero point (U8, asymmetric, the range widened to include 0 as ONNX
    Runtime does). Returns how many were replaced."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.UINT8)
    feeds_qattention = {n.input[0] for n in model.graph.node if n.op_type == "QAttention"}
    nodes, n_static = [], 0
    for n in model.graph.node:
        if n.op_type != "DynamicQuantizeLinear" or n.output[0] not in feeds_qattention:
            nodes.append(n)
            continue
        lo, hi = ranges[n.input[0]]
        zp, scale = compute_scale_zp(np.array(min(lo, 0.0), np.float32),
                                     np.array(max(hi, 0.0), np.float32), qmin, qmax, False)
        # the QAttention already reads outputs 1 and 2 by name: make them constants
        model.graph.initializer.extend([
            numpy_helper.from_array(np.asarray(scale, np.float32), n.output[1]),
            numpy_helper.from_array(np.asarray(zp, np.uint8), n.output[2])])
        nodes.append(helper.make_node("QuantizeLinear", [n.input[0], n.output[1], n.output[2]],
                                      [n.output[0]], f"{n.name}_static"))
        n_static += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return n_static


def float_residuals(model) -> int:
    """Consumers of a DequantizeLinear output other than MatMul and Q/DQ read the float tensor
    the QuantizeLinear before it read (step 4 of the module docstring); nodes left unread are
    removed. Returns how many inputs were rewired."""
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    rewired = 0
    for n in model.graph.node:
        if n.op_type in {"MatMul", "QuantizeLinear", "DequantizeLinear"}:
            continue
        for k, name in enumerate(n.input):
            q = producer.get(dq[name].input[0]) if name in dq else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                rewired += 1
    graph_out = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | graph_out
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    return rewired


def quantize_fused(fused: Path, dst: Path, calib: CalibrationSet, recipe: Recipe, ffn_out: str,
                   per_channel: bool = True) -> dict[str, Any]:
    """Build ort/ptq-fused from the fused FP32 graph with `recipe` (module docstring). `ffn_out`:
    the feed-forward output Linear's path in a layer (common.arch), which placement
    "no-ffn-out" keeps FP32; "no-attention" needs nothing here (QAttention computes Q.K^T and
    softmax.V in float)."""
    import onnx
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from common.onnx_graph import op_counts

    if recipe.activation_type != "u8" or recipe.symmetric:
        raise FusedPtqError("the fused static graph is ONNX Runtime's CPU flavour: U8 asymmetric "
                            "activations only (TensorRT takes ort/ptq-s8)")
    m = onnx.load(str(fused), load_external_data=False)
    blocks = _attention_blocks(m)
    if not blocks:
        raise FusedPtqError(f"{fused} has no fused Attention: build it with `python -m engines "
                            "--stages onnx` (this family may have no ONNX Runtime fusion)")
    keep_fp32 = [name for name, blk in blocks.items() if blk in recipe.fp32_blocks]
    if "embeddings" in recipe.fp32_blocks:  # the search kept the embedding Gather FP32
        keep_fp32 += [n.name for n in m.graph.node if n.op_type == "EmbedLayerNormalization"]
    with tempfile.TemporaryDirectory(prefix="ptq-fused-") as tmp:
        work = Path(tmp)
        ranges = calibrate_attention_inputs(fused, calib, recipe, work)
        g1 = work / "qattention.onnx"
        quantize_dynamic(str(fused), str(g1), op_types_to_quantize=["Attention",
                                                                    "EmbedLayerNormalization"],
                         per_channel=False, weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        m = onnx.load(str(g1))
        n_static = staticize_qattention(m, ranges)
        skip_ffn = ffn_out_pattern(ffn_out) if recipe.placement == "no-ffn-out" else None
        matmuls = [n.name for n in m.graph.node if n.op_type == "MatMul"
                   and block_of(n.name) not in {"head", *recipe.fp32_blocks}
                   and not (skip_ffn and skip_ffn.search(n.name))]
        _with_float_value_info(m, {n.input[0] for n in m.graph.node if n.name in matmuls})
        g2 = work / "static-qattention.onnx"
        onnx.save(m, str(g2))
        method, options = static_options(recipe)  # the recipe is U8 asymmetric (checked above)
        g3 = work / "qdq.onnx"
        quantize_static(str(g2), str(g3), make_reader(calib), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=matmuls, calibrate_method=method, extra_options=options)
        m = onnx.load(str(g3))
        rewired = float_residuals(m)
        onnx.save(m, str(dst))
    counts = op_counts(dst)
    expected = len(blocks) - len([b for b in blocks.values() if b in recipe.fp32_blocks])
    if (counts.get("DynamicQuantizeLinear") or counts.get("QAttention", 0) != n_static
            or n_static != expected):
        raise FusedPtqError(f"{dst}: {counts.get('DynamicQuantizeLinear', 0)} dynamic quantizers "
                            f"left, {counts.get('QAttention', 0)} QAttention, {n_static} static "
                            f"inputs, {expected} Attention to quantize; ONNX Runtime's quantizer "
                            "output changed (or skipped an Attention it cannot quantize)")
    return {"static": recipe.as_dict(), "static_qattention": n_static,
            "qdq_matmuls": len(matmuls), "float_residual_inputs": rewired,
            "attention_input_ranges": {k: list(v) for k, v in sorted(ranges.items())},
            "quantized_ops": {k: v for k, v in counts.items() if k in {
                "QAttention", "QEmbedLayerNormalization", "QuantizeLinear", "DequantizeLinear",
                "DynamicQuantizeLinear"}}}
