"""ONNX Runtime static PTQ in QDQ format over the saved calibration set, with an automatic
per-block sensitivity pass that keeps in FP32 the blocks that cost too much macro F1.

Order of work: quant_pre_process (shape inference; NO attention fusion, since fused ops are not
statically quantized) -> quantize_static(QDQ) -> validation macro F1 against the FP32 graph ->
if the drop exceeds the budget, quantize one block at a time, rank blocks by their own drop, and
keep the worst in FP32 until the whole model fits the budget.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calibration.ort_reader import make_reader
from common.errors import ConfigError
from common.onnx_graph import op_counts

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class StaticConfig:
    """Defaults chosen by measurement on all-MiniLM-L6 (validation split only; every MatMul and
    the embedding Gather quantized, nothing kept FP32 by hand).

    Where the Q/DQ pairs go matters most. With MatMul outputs quantized too (ONNX Runtime's
    default) the validation macro F1 drop was 3.85 pt (symmetric MinMax) and 1.17 (asymmetric
    MinMax) with an earlier baseline, 1.13 (asymmetric Percentile) with the current one, so the
    sensitivity pass kept layer.0 FP32 (0.32x size). With Q/DQ on MatMul inputs only (the
    placement TensorRT's guidance uses as well) every variant fits the budget; drop / top-1
    agreement with FP32 / mean |delta logit|: asymmetric Percentile 99.999 -0.08 pt / 99.25% /
    0.052, asymmetric MinMax -0.59 / 98.95% / 0.054, asymmetric Percentile 99.99 +0.74 / 96.35%
    / 0.191, symmetric MinMax -0.10 / 98.05% / 0.088, symmetric Percentile 99.999 -0.18 / 98.00%
    / 0.083. F1 moves within noise (a few dozen changed predictions), so the default is the one
    closest to FP32: asymmetric U8 Percentile 99.999 (U8 doubles the resolution of one-sided
    GELU outputs).
    Batch-1 p50, ORT, 2 threads, 300 test sentences, FP32 fused graph 3.2 ms in the same runs:
    outputs quantized with layer.0 FP32 2.07 ms; inputs only 1.58-1.65 ms, 23.5 MB = 0.26x:
    ONNX Runtime runs each MatMul as MatMulIntegerToFloat instead of QLinearMatMul -> DQ -> Add
    (one Q/DQ pair fewer per MatMul, no second rounding before the bias and residual Adds).
    Folding the bias Add into MatMulIntegerToFloat by hand was measured too: no gain."""

    VERSION = 1
    method: str = "percentile"
    per_channel: bool = True
    # "u8" (CPU): uint8 activations; ONNX Runtime on x86 runs S8 activations 2-10x slower.
    # "s8" (TensorRT): int8, symmetric (zero point 0), the only activation form TensorRT takes.
    # A symmetric quantizer is the same in both: U8 with zero point 128 == S8 with zero point 0.
    activation_type: str = "u8"
    # Asymmetric U8: the closest to FP32 on CPU targets (see above); the S8 flavour is always
    # built symmetric (see engines.pipeline.ptq_step).
    symmetric_activations: bool = False
    # MatMul: every projection and feed-forward matrix (and the two attention matmuls);
    # Gather: the embedding tables (most of the bytes: without it size stays ~0.65x).
    # Kept FP32 by construction: LayerNorm, Softmax, GELU (Erf), residual Adds, the pooler and
    # classifier Gemms (tiny; they write the logits).
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    # False: Q/DQ on MatMul inputs only (see above); True: ORT's default, outputs quantized too.
    quantize_matmul_outputs: bool = False
    # The two activation x activation MatMuls of each attention (Q.K^T and softmax.V).
    quantize_attention_matmuls: bool = True
    exclude_blocks: tuple[str, ...] = ()  # e.g. ("layer.5",): kept FP32 on purpose
    # regexes over node names kept FP32 everywhere, e.g. r"layer\.\d+/output/dense" (FFN down)
    exclude_nodes: tuple[str, ...] = ()
    auto_exclude: bool = True  # sensitivity pass when the validation drop exceeds the budget
    max_f1_drop_pt: float = 0.5
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {METHODS}, not {self.method!r}")
        if self.activation_type not in {"u8", "s8"}:
            raise ConfigError("activation_type must be u8 (CPU) or s8 (TensorRT)")
        if self.activation_type == "s8" and not self.symmetric_activations:
            raise ConfigError("s8 activations are for TensorRT, which takes symmetric ones only")


def block_of(node_name: str) -> str:
    """Which block a node of a torch.onnx export belongs to (torch.onnx names nodes by module
    path: /bert/encoder/layer.3/..., /distilbert/transformer/layer.3/...)."""
    m = re.search(r"/layer\.(\d+)/", node_name)
    if m:
        return f"layer.{m.group(1)}"
    if "/embeddings/" in node_name:
        return "embeddings"
    return "head"


def quantizable_nodes(model_path: Path, op_types: tuple[str, ...], attention_matmuls: bool = True,
                      exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    out: dict[str, list[str]] = {}
    for n in m.graph.node:
        if n.op_type not in op_types:
            continue
        if n.op_type == "MatMul" and not attention_matmuls and not any(i in init for i in n.input):
            continue
        if any(re.search(p, n.name) for p in exclude):
            continue
        # Gather nodes that index shape tensors (not embedding tables) stay as they are.
        if n.op_type == "Gather" and n.input[0] not in init:
            continue
        out.setdefault(block_of(n.name), []).append(n.name)
    return out


def preprocess(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # skip_symbolic_shape: symbolic shape inference stops on this export with "Incomplete
    # symbolic shape inference" (dynamic batch/sequence); ONNX shape inference suffices.
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def quantize(pre: Path, dst: Path, calib: Path, names: list[str], batch_size: int,
             cfg: StaticConfig, nodes: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    act = QuantType.QUInt8 if cfg.activation_type == "u8" else QuantType.QInt8
    # Only inputs/outputs of the op types quantized are calibrated, so the additive attention
    # mask (-3.4e38 where padded), which breaks histogram calibrators ("Too many bins for data
    # range"), is never histogrammed: it only feeds an Add.
    extra: dict[str, object] = {"ActivationSymmetric": cfg.symmetric_activations,
                                "WeightSymmetric": True}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if not cfg.quantize_matmul_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    quantize_static(str(pre), str(dst), make_reader(calib, batch_size, names),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(cfg.op_types),
                    per_channel=cfg.per_channel, activation_type=act, weight_type=QuantType.QInt8,
                    nodes_to_quantize=nodes, calibrate_method=method, extra_options=extra)


def macro_f1_onnx(path: Path, enc, names: list[str], labels: np.ndarray, threads: int = 0) -> float:
    import onnxruntime as ort

    from common.feeds import batches
    from common.metrics import classification_metrics

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], enc.batch(b, names))[0]
                             for b in batches(len(enc), 64)])
    return classification_metrics(labels, logits.argmax(-1))["macro_f1"]


def build_static_ptq(fp32: Path, out: Path, calib: Path, names: list[str], batch_size: int,
                     cfg: StaticConfig, val_enc, val_labels: np.ndarray) -> dict:
    """Returns what the manifest and report record: blocks quantized / kept FP32, F1s, sensitivity."""
    work = Path(tempfile.mkdtemp(prefix="ptq-"))
    try:
        pre = work / "pre.onnx"
        preprocess(fp32, pre)
        blocks = quantizable_nodes(pre, cfg.op_types, cfg.quantize_attention_matmuls,
                                   cfg.exclude_nodes)
        f1_fp32 = macro_f1_onnx(fp32, val_enc, names, val_labels)
        budget = cfg.max_f1_drop_pt / 100

        def run(keep_fp32: set[str], path: Path) -> float:
            nodes = [n for b, ns in blocks.items() if b not in keep_fp32 for n in ns]
            quantize(pre, path, calib, names, batch_size, cfg, nodes)
            return macro_f1_onnx(path, val_enc, names, val_labels)

        excluded = set(cfg.exclude_blocks)
        cand = work / "q.onnx"
        f1 = run(excluded, cand)
        print(f"  static INT8 ({cfg.method}): validation macro F1 {f1:.4f} vs FP32 {f1_fp32:.4f}")
        sensitivity: dict[str, float] = {}
        if f1_fp32 - f1 > budget and cfg.auto_exclude:
            for b in sorted(set(blocks) - excluded):
                only = set(blocks) - {b}
                sensitivity[b] = f1_fp32 - run(only, work / "one.onnx")
                print(f"  sensitivity: only {b} quantized -> drop {100 * sensitivity[b]:.2f} pt")
            for b in sorted(sensitivity, key=sensitivity.get, reverse=True):  # type: ignore[arg-type]
                if f1_fp32 - f1 <= budget or len(excluded) >= len(blocks) - 1:
                    break
                excluded.add(b)
                f1 = run(excluded, cand)
                print(f"  keeping {sorted(excluded)} in FP32 -> validation macro F1 {f1:.4f}")
        shutil.move(str(cand), str(out))
        return {
            "static": asdict(cfg), "blocks_quantized": sorted(set(blocks) - excluded),
            "blocks_fp32": sorted(excluded), "val_macro_f1_fp32": f1_fp32, "val_macro_f1_int8": f1,
            "val_drop_pt": 100 * (f1_fp32 - f1), "within_budget": f1_fp32 - f1 <= budget,
            "sensitivity_drop_pt": {k: 100 * v for k, v in sensitivity.items()},
            "kept_fp32_ops": ["LayerNormalization", "Softmax", "Erf (GELU)", "Add (residual/bias)",
                              "Gemm (pooler, classifier)"],
            "qdq_ops": {k: v for k, v in op_counts(out).items()
                        if k in {"QuantizeLinear", "DequantizeLinear"}},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
