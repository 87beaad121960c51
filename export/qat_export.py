"""Export a QAT checkpoint to ONNX carrying QuantizeLinear/DequantizeLinear, then validate it.

torch.onnx writes every fake quantizer as a Q -> DQ pair, weights included (FP32 initializer ->
Q -> DQ). `fold_and_flavour` then
- folds each weight's Q into an INT8 initializer (DQ reads it directly): the bytes on disk become
  INT8, and this is the form ONNX Runtime and TensorRT expect for constant weights;
- writes the activation quantizers in the flavour of the target. Every quantizer is symmetric
  INT8 (zero point 0, range [-128, 127]); the same grid is U8 with zero point 128, which is what
  ONNX Runtime's x86 kernels run fast (S8 activations measured 2-10x slower here), while TensorRT
  takes S8 with zero point 0 only. So "u8" (CPU) and "s8" (TensorRT) are one trained model;
- in the CPU flavour, writes the weights S8 or, on x86 CPUs without VNNI, U8 with zero point 128
  (same grid; S8 weights saturate there: `common.env.int8_weights_for_this_cpu`), and gathers the
  embedding rows from the INT8 table before dequantizing them
  (see `gather_before_dequantize`).
Validation: the Q/DQ structure is counted against what the QAT config says is quantized, and the
graph must agree (top-1) with the fake-quant PyTorch model on real test sentences.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc, location
from common.data import DEFAULT_DATASET
from common.env import int8_weights_for_this_cpu
from common.errors import ConfigError, UserError

FLAVOURS = ("u8", "s8")
WEIGHT_TYPES = ("s8", "u8")
U8_ZERO_POINT = "qat_activation_zero_point_u8"


class QdqStructureError(UserError, RuntimeError):
    pass


def _const_values(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    vals = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    # torch.onnx de-duplicates equal constants and re-exposes them through Identity nodes
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.op_type == "Identity" and n.input[0] in vals and n.output[0] not in vals:
                vals[n.output[0]] = vals[n.input[0]]
                changed = True
    return vals


def _axis(node) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return 1  # the ONNX default for QuantizeLinear/DequantizeLinear


def quantize_array(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear to INT8: saturate(round_half_even(w / scale) + zp)."""
    if scale.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.rint(w / scale) + zp.astype(np.float64)
    return np.clip(q, -128, 127).astype(np.int8)


def fold_and_flavour(src: Path, dst: Path, flavour: str, weights: str = "s8") -> dict:
    import onnx
    from onnx import numpy_helper

    if flavour not in FLAVOURS or weights not in WEIGHT_TYPES or (flavour, weights) == ("s8", "u8"):
        raise ValueError(f"flavour must be one of {FLAVOURS} and weights one of {WEIGHT_TYPES} "
                         f"(s8 only for the s8 flavour), not {flavour!r}/{weights!r}")
    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name for i in g.initializer}
    vals = _const_values(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded, activations, remove = 0, 0, []
    new_inits = []
    if flavour == "u8":
        new_inits.append(numpy_helper.from_array(np.array(128, dtype=np.uint8), U8_ZERO_POINT))
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            raise QdqStructureError(f"{q.name}: QuantizeLinear not followed by DequantizeLinear only")
        if q.input[0] in inits:  # a weight: fold Q into an INT8 initializer
            w, s, zp = vals[q.input[0]], vals[q.input[1]], vals[q.input[2]]
            name = f"{q.input[0]}_quantized"
            wq = quantize_array(w, s, zp, _axis(q))
            if weights == "u8":  # the same grid shifted by 128, zero point with it
                wq = (wq.astype(np.int16) + 128).astype(np.uint8)
                zp_name = f"{name}_zero_point_u8"
                zp_u8 = (zp.astype(np.int16) + 128).astype(np.uint8)
                new_inits.append(numpy_helper.from_array(zp_u8, zp_name))
            new_inits.append(numpy_helper.from_array(wq, name))
            for d in dqs:
                d.input[0] = name
                if weights == "u8":
                    d.input[2] = zp_name
            remove.append(q)
            folded += 1
        else:
            activations += 1
            if flavour == "u8":
                for n in (q, *dqs):
                    n.input[2] = U8_ZERO_POINT
    for q in remove:
        g.node.remove(q)
    g.initializer.extend(new_inits)
    swapped = gather_before_dequantize(g) if flavour == "u8" else 0
    _drop_unused(g)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return {"weights_folded": folded, "activation_qdq": activations, "flavour": flavour,
            "weights": weights, "gathers_before_dequantize": swapped}


def gather_before_dequantize(graph) -> int:
    """Rewrite DQ(table) -> Gather(ids) as Gather(table, ids) -> DQ, exact for a per-tensor scale.

    ONNX Runtime's CPU kernels run the first form as written: the whole 30522 x 384 word table is
    dequantized on every call (38% of the QAT graph's batch-1 time in a profile here), because its
    DQ -> Gather -> Q group is not fused (INT8 table, UINT8 activation zero point). Gathering rows
    first dequantizes only the tokens of the batch. Only the CPU flavour is rewritten: TensorRT
    folds a constant DQ at build time, and its INT8 Gather support is not something we can test.
    """
    from onnx import helper

    vals = _const_values(graph)
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    swapped = 0
    for gather in [n for n in graph.node if n.op_type == "Gather"]:
        dq = producer.get(gather.input[0])
        if (dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits
                or vals[dq.input[1]].ndim != 0):
            continue
        rows = f"{gather.output[0]}_int8_rows"
        at = list(graph.node).index(gather)
        new_gather = helper.make_node("Gather", [dq.input[0], gather.input[1]], [rows],
                                      name=f"{gather.name}_int8", axis=_gather_axis(gather))
        new_dq = helper.make_node("DequantizeLinear", [rows, *dq.input[1:]], list(gather.output),
                                  name=f"{dq.name}_rows")
        graph.node.remove(gather)
        graph.node.insert(at, new_dq)
        graph.node.insert(at, new_gather)
        if not any(dq.output[0] in n.input for n in graph.node):
            graph.node.remove(dq)
        swapped += 1
    return swapped


def _gather_axis(node) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def _names_read(graph) -> set[str]:
    """Every value name the graph's nodes read, those of If/Loop subgraphs included (a subgraph
    may read an outer Constant: DeBERTa's export has If nodes that do)."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= _names_read(g)
    return used


def _drop_unused(graph) -> None:
    """Remove initializers and Constant nodes nothing reads any more (the FP32 weights)."""
    while True:
        used = _names_read(graph)
        dead = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def qdq_structure(path: Path) -> dict:
    """What the graph quantizes: MatMuls with both inputs from DQ, Gathers reading a DQ'd table,
    per-channel weight DQs (with their axis), activation Q counts and zero-point types."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    vals = _const_values(g)  # scales and zero points may be Constant nodes, not initializers
    producer = {o: n for n in g.node for o in n.output}

    def from_dq(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    def int8_gather(n) -> bool:  # Gather(INT8 table) -> DQ, the CPU flavour's embedding form
        return (n.op_type == "Gather" and n.input[0] in inits
                and inits[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                and any(c.op_type == "DequantizeLinear" and n.output[0] in c.input for c in g.node))

    matmuls = [n for n in g.node if n.op_type == "MatMul"]
    q_matmuls = [n for n in matmuls if all(from_dq(i) for i in n.input)]
    weight_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    weight_out = {d.output[0] for d in weight_dq}
    per_channel = [d for d in weight_dq if vals[d.input[1]].ndim == 1]
    zp_types = Counter(str(vals[n.input[2]].dtype).upper()
                       for n in g.node if n.op_type == "QuantizeLinear")
    return {
        "QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in g.node),
        "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in g.node),
        "matmul": len(matmuls), "matmul_quantized": len(q_matmuls),
        "matmul_weight_quantized": sum(any(i in weight_out for i in n.input) for n in q_matmuls),
        "gather_quantized": sum((n.op_type == "Gather" and from_dq(n.input[0])) or int8_gather(n)
                                for n in g.node),
        "weight_dq_per_channel": len(per_channel),
        "weight_dq_axes": sorted({_axis(d) for d in per_channel}),
        "weight_dtype": sorted({str(vals[d.input[0]].dtype).upper() for d in weight_dq}),
        "activation_zero_point_types": dict(zp_types),
    }


def expected_structure(linears: int, attention_layers: int, embeddings: bool,
                       flavour: str, weights: str = "s8") -> dict[str, Any]:
    """What the graph must hold, from what insert_fake_quant says it quantized."""
    return {"matmul_quantized": linears + 2 * attention_layers,
            "matmul_weight_quantized": linears,
            "weight_dq_per_channel": linears, "weight_dq_axes": [1],
            "gather_quantized": 1 if embeddings else 0,
            "weight_dtype": ["UINT8" if weights == "u8" else "INT8"],
            "activation_zero_point_types": ["UINT8" if flavour == "u8" else "INT8"]}


def check_structure(got: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    diffs = []
    for k, v in want.items():
        g = sorted(got[k]) if k == "activation_zero_point_types" else got[k]
        if g != v:
            diffs.append(f"{k}: graph has {g}, config says {v}")
    if diffs:
        raise QdqStructureError(f"{path}: Q/DQ structure differs from the QAT config: " + "; ".join(diffs))


@dataclass(frozen=True)
class QatExportConfig:
    flavour: str = doc("u8", "u8: U8 activations for ONNX Runtime on CPU; s8: for TensorRT")
    opset: int = 17
    # Resolved when the config is made, so the recipe (and the manifest) names the weight type:
    # the same build on a CPU of the other kind is stale and rebuilt, not reused.
    weights: str = field(default_factory=int8_weights_for_this_cpu, metadata={
        "help": "u8 flavour's weight type: s8, or u8 on x86 without VNNI (default: this CPU's)"})
    min_top1: float = doc(0.99, "build fails below this top-1 agreement with fake-quant PyTorch")
    n_validate: int = 512
    data: str = location(DEFAULT_DATASET, "where the validation rows come from")

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"flavour must be one of {FLAVOURS}, not {self.flavour!r}")
        if self.weights not in WEIGHT_TYPES:
            raise ConfigError(f"weights must be one of {WEIGHT_TYPES}, not {self.weights!r}")
        check_ranges(self, opset=">= 13", min_top1="in [0, 1]", n_validate=">= 1")
        if self.flavour == "s8" and self.weights != "s8":
            raise ConfigError("the s8 (TensorRT) flavour takes S8 weights only")


def export_qat(ckpt: Path, out_path: Path, cfg: QatExportConfig) -> dict[str, Any]:
    """Export + fold + structure check + top-1 agreement with the fake-quant PyTorch model."""
    import onnx
    from transformers import AutoTokenizer

    from common.checkpoint import read_recipe
    from common.qat_model import export_mode, load_qat_model
    from common.torch_infer import torch_fn
    from export.onnx_export import (
        Validation,
        check_agreement,
        ort_fn,
        torch_to_onnx,
        validation_inputs,
    )

    recipe = read_recipe(ckpt)
    model = load_qat_model(ckpt)
    names = list(recipe["input_names"])
    with tempfile.TemporaryDirectory(prefix="qat-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with export_mode(model):
            torch_to_onnx(model, AutoTokenizer.from_pretrained(ckpt), names, raw, cfg.opset,
                          recipe["max_length"])
        folded = fold_and_flavour(raw, out_path, cfg.flavour, cfg.weights)
    onnx.checker.check_model(str(out_path))
    got = qdq_structure(out_path)
    inserted = recipe["inserted"]
    want = expected_structure(inserted["linear"], inserted["attention"],
                              bool(inserted["embedding"]), cfg.flavour, cfg.weights)
    check_structure(got, want, out_path)
    enc, _ = validation_inputs(ckpt, Validation(cfg.n_validate, cfg.data))
    agreement = check_agreement(torch_fn(model), ort_fn(out_path), enc, names,
                                f"{out_path}: QAT ONNX ({cfg.flavour}) vs fake-quant PyTorch", None,
                                cfg.min_top1)
    print(f"  QAT ONNX ({cfg.flavour}): {got['matmul_quantized']}/{got['matmul']} MatMuls quantized, "
          f"{got['gather_quantized']} Gather; top-1 agreement with fake-quant PyTorch "
          f"{100 * agreement['top1_agreement']:.2f}% on {agreement['n']} test inputs")
    training = {k: recipe[k] for k in ("max_length", "steps", "steps_per_epoch", "best_step",
                                       "val_macro_f1_before_qat", "best_val_macro_f1",
                                       "frozen_params")}
    return {"qdq": got, "expected_qdq": want, "fold": folded, "agreement_vs_fakequant": agreement,
            "flavour": cfg.flavour, "weights": cfg.weights, "quantization": recipe["quantization"],
            "qat": recipe["config"]["fields"], "qat_training": training}
