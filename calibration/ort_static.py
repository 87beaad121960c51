"""ONNX Runtime static PTQ in QDQ format: one point of the recipe space (`Recipe`) turned into a
quantized graph. What is searched and how one recipe is chosen is calibration/ptq_search.py.

Fixed by construction (the measurements behind it: docs/decisions.md): weights S8 per
channel, symmetric; Q/DQ on MatMul inputs only, so ONNX Runtime runs MatMulIntegerToFloat and no
MatMul output is rounded twice before the bias and residual Adds (quantizing outputs too cost
points of validation F1); FP32: LayerNorm, Softmax, GELU,
residual Adds, the classification head (Gemm/MatMul outside the layer stack).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.ort_reader import make_reader
from common.calibset import CalibrationSet
from common.errors import ConfigError

METHODS = ("minmax", "entropy", "percentile")
# Which MatMuls a recipe quantizes (weights' Linears always, unless their block stays FP32):
# "all"; "no-attention": Q.K^T and softmax.V stay FP32; "no-ffn-out": the feed-forward output
# Linear (its input is the GELU output, the activation with the heaviest tail) stays FP32.
PLACEMENTS = ("all", "no-attention", "no-ffn-out")


@dataclass(frozen=True)
class Recipe:
    """One point of the static-PTQ recipe space."""

    method: str = "percentile"
    percentile: float = 99.999
    calib_rows: int = 256
    placement: str = "all"
    activation_type: str = "u8"  # u8: ONNX Runtime on x86; s8: TensorRT (symmetric only)
    symmetric: bool = False
    fp32_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {METHODS}, not {self.method!r}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, not {self.placement!r}")
        if self.activation_type not in {"u8", "s8"}:
            raise ConfigError("activation_type must be u8 (CPU) or s8 (TensorRT)")
        if self.activation_type == "s8" and not self.symmetric:
            raise ConfigError("s8 activations are for TensorRT, which takes symmetric ones only")

    @property
    def calibration_key(self) -> tuple[str, float, int, bool]:
        """Recipes with the same key share one calibration (the ranges do not depend on placement)."""
        return (self.method, self.percentile if self.method == "percentile" else 0.0,
                self.calib_rows, self.symmetric)

    def label(self) -> str:
        cal = f"{self.method}{'-' + format(self.percentile, 'g') if self.method == 'percentile' else ''}"
        fb = f", FP32 {'+'.join(self.fp32_blocks)}" if self.fp32_blocks else ""
        sym = "sym" if self.symmetric else "asym"
        return f"{cal}, {self.calib_rows} rows, {self.placement}, {self.activation_type} {sym}{fb}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp32_blocks"] = list(self.fp32_blocks)
        return d


def block_of(node_name: str) -> str:
    """Which block a node of a torch.onnx export belongs to (torch.onnx names nodes by module
    path: /bert/encoder/layer.3/..., /distilbert/transformer/layer.3/...)."""
    m = re.search(r"/layer\.(\d+)/", node_name)
    if m:
        return f"layer.{m.group(1)}"
    if "/embeddings/" in node_name:
        return "embeddings"
    return "head"


@dataclass(frozen=True)
class Node:
    name: str
    block: str
    kind: str  # linear | attention | ffn-out | gather


def ffn_out_pattern(ffn_out: str) -> re.Pattern[str]:
    """Matches the node names of the feed-forward output Linear inside a layer, e.g.
    "/bert/encoder/layer.3/output/dense/MatMul" for ffn_out "output.dense"."""
    return re.compile(r"/layer\.\d+/" + re.escape(ffn_out.replace(".", "/")) + "/")


def quantizable_nodes(model_path: Path, ffn_out: str) -> list[Node]:
    """MatMul and embedding Gather nodes of the layer stack and embeddings, with their kind.
    `ffn_out`: the feed-forward output Linear's path inside a layer (common.arch), e.g.
    "output.dense" (BERT) or "ffn.lin2" (DistilBERT). The head is never quantized."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    ffn_re = ffn_out_pattern(ffn_out)
    out = []
    for n in m.graph.node:
        block = block_of(n.name)
        if block == "head":
            continue
        if n.op_type == "MatMul":
            weight = any(i in init for i in n.input)
            kind = ("ffn-out" if ffn_re.search(n.name) else "linear") if weight else "attention"
            out.append(Node(n.name, block, kind))
        elif n.op_type == "Gather" and n.input[0] in init:  # embedding tables, not shape Gathers
            out.append(Node(n.name, block, "gather"))
    return out


def select(nodes: list[Node], recipe: Recipe) -> list[str]:
    skip = {"no-attention": {"attention"}, "no-ffn-out": {"ffn-out"}}.get(recipe.placement, set())
    return [n.name for n in nodes if n.kind not in skip and n.block not in recipe.fp32_blocks]


def preprocess(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # skip_symbolic_shape: symbolic shape inference stops on this export with "Incomplete
    # symbolic shape inference" (dynamic batch/sequence); ONNX shape inference suffices.
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def static_options(recipe: Recipe) -> tuple[Any, dict[str, object]]:
    """ONNX Runtime's calibration method and quantize_static extra_options for `recipe`: S8
    symmetric weights, Q/DQ on MatMul inputs only (module docstring)."""
    from onnxruntime.quantization import CalibrationMethod

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.method]
    extra: dict[str, object] = {"ActivationSymmetric": recipe.symmetric, "WeightSymmetric": True,
                                "OpTypesToExcludeOutputQuantization": ["MatMul"]}
    if recipe.method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    return method, extra


def quantize(pre: Path, dst: Path, calib: CalibrationSet, recipe: Recipe, nodes: list[str],
             per_channel: bool, cache: Path) -> None:
    """quantize_static (QDQ) of `nodes`. `cache`: the calibration ranges' file, shared by every
    recipe with the same calibration_key (ORT reuses it instead of calibrating again)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    act = QuantType.QUInt8 if recipe.activation_type == "u8" else QuantType.QInt8
    # Only inputs/outputs of the op types quantized are calibrated, so the additive attention
    # mask (-3.4e38 where padded), which breaks histogram calibrators ("Too many bins for data
    # range"), is never histogrammed: it only feeds an Add.
    method, extra = static_options(recipe)
    quantize_static(str(pre), str(dst), make_reader(calib), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gather"], per_channel=per_channel,
                    activation_type=act, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    calibrate_method=method, extra_options=extra,
                    calibration_cache_path=str(cache))


def onnx_logits(path: Path, enc: Any, names: list[str], idx: np.ndarray, threads: int = 0,
                batch_size: int = 64) -> np.ndarray:
    """Logits of the rows `idx` of `enc`, in that order (batches formed by length for speed;
    static INT8 graphs, like FP32 ones, give the same predictions batched or not)."""
    import onnxruntime as ort

    from common.feeds import batches

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    idx = np.asarray(idx)
    perm = np.argsort(enc.lengths()[idx], kind="stable")  # positions within idx, by length
    out = np.concatenate([sess.run(["logits"], enc.batch(idx[perm[b]].tolist(), names))[0]
                          for b in batches(len(idx), batch_size)])
    logits = np.empty_like(out)
    logits[perm] = out
    return logits
