"""Issue 3: calibration set and ONNX Runtime static QDQ PTQ."""

import dataclasses

import numpy as np
import onnx
import pytest

from calibration.calibset import CalibConfig, build_calibration_set
from calibration.ort_static import StaticConfig, block_of, build_static_ptq, quantizable_nodes
from common.calibset import CalibrationSet
from common.data import load_split
from common.feeds import encode
from common.manifest import Manifest, sha256_of
from common.modelsource import load_tokenizer
from deploy.registry import make_runner


def test_calibration_set_is_validation_rows_fixed_shape_and_seeded(tiny_artifacts, data_dir, tmp_path):
    tok = load_tokenizer(tiny_artifacts / "baseline")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    cfg = CalibConfig(size=64, seed=3)
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    info = build_calibration_set(str(data_dir), tok, names, 64, cfg, a)
    build_calibration_set(str(data_dir), tok, names, 64, cfg, b)
    build_calibration_set(str(data_dir), tok, names, 64, dataclasses.replace(cfg, seed=4), c)
    assert sha256_of(a) == sha256_of(b) != sha256_of(c)
    assert info["split"] == "validation" and info["rows"] == 64 and info["seq_len"] % 8 == 0
    val = load_split(data_dir, "validation")
    with np.load(a) as z:
        rows = z["rows"]
        ids = z["input_ids"]
    assert ids.shape == (64, info["seq_len"])
    # the stored ids are exactly the tokenized validation rows the indices name
    first = encode(tok, [val.texts[rows[0]]], 64).ids[0]
    assert ids[0, : len(first)].tolist() == first.tolist()
    fixed = build_calibration_set(str(data_dir), tok, names, 64, CalibConfig(size=16, seq_len="32"),
                                  tmp_path / "d.npz")
    assert fixed["seq_len"] == 32 and CalibrationSet(tmp_path / "d.npz", 4).seq_len == 32


def test_block_of_names():
    assert block_of("/bert/encoder/layer.11/attention/self/query/MatMul") == "layer.11"
    assert block_of("/bert/embeddings/word_embeddings/Gather") == "embeddings"
    assert block_of("/classifier/Gemm") == "head"


@pytest.mark.parametrize("variant, act_dtype, zero_point", [
    ("ptq", onnx.TensorProto.UINT8, None), ("ptq-s8", onnx.TensorProto.INT8, 0)])
def test_qdq_graph_structure(tiny_artifacts, variant, act_dtype, zero_point):
    m = onnx.load(str(tiny_artifacts / "onnx" / f"{variant}.onnx"))
    init = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    matmuls = [n for n in m.graph.node if n.op_type == "MatMul"]
    entry = Manifest(tiny_artifacts).get(f"onnx-{variant}")
    assert entry["blocks_quantized"], entry
    quantized_blocks = set(entry["blocks_quantized"])
    for n in matmuls:
        fed_by_dq = all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                        for i in n.input)
        assert fed_by_dq == (block_of(n.name) in quantized_blocks), n.name
    # activations: U8 (CPU flavour, asymmetric by default) or symmetric S8, zero point 0 (TensorRT)
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert qs
    for q in qs:
        zp = init[q.input[2]]
        assert zp.data_type == act_dtype
        if zero_point is not None:
            assert set(onnx.numpy_helper.to_array(zp).ravel().tolist()) == {zero_point}
    # weights: per-channel int8 DQ with an axis attribute
    weight_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
                 and init[n.input[0]].data_type == onnx.TensorProto.INT8 and len(init[n.input[0]].dims) == 2]
    assert any(a.name == "axis" for n in weight_dq for a in n.attribute)
    # Q/DQ on MatMul inputs only (quantize_matmul_outputs=False): no MatMul output is quantized
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            assert producers.get(n.input[0]) is None or producers[n.input[0]].op_type != "MatMul", n.name
    # LayerNorm / Softmax / Erf are never fed by a DequantizeLinear
    for n in m.graph.node:
        if n.op_type in {"LayerNormalization", "Softmax", "Erf"}:
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in n.input), n.name


def test_ptq_runs_is_smaller_and_agrees_with_fp32(tiny_artifacts, data_dir):
    man = Manifest(tiny_artifacts)
    # the tiny graph is mostly Q/DQ scales and structure; on MiniLM the ratio is ~0.26
    assert man.get("onnx-ptq")["size_bytes"] < man.get("onnx-fp32")["size_bytes"]
    enc = encode(load_tokenizer(tiny_artifacts / "baseline"), load_split(data_dir, "test").texts, 64)
    got = {}
    for v in ("fp32", "ptq"):
        with make_runner("ort", v, tiny_artifacts, threads=1) as r:
            got[v] = np.concatenate([r.infer(enc.batch([i], r.input_names)) for i in range(len(enc))])
    assert got["ptq"].shape == (160, 6) and np.isfinite(got["ptq"]).all()
    # INT8 noise is there (not an FP32 copy) and small against the logits' own spread
    diff = np.abs(got["ptq"] - got["fp32"])
    assert diff.max() > 0 and diff.mean() < 0.1 * got["fp32"].std()
    assert (got["ptq"].argmax(-1) == got["fp32"].argmax(-1)).mean() >= 0.95


def test_sensitivity_pass_keeps_blocks_fp32(tiny_artifacts, data_dir, tmp_path):
    """With a budget no quantization can meet, the pass ranks every block and keeps blocks in
    FP32 one by one (never all of them)."""
    man = Manifest(tiny_artifacts)
    calib = tiny_artifacts / man.get("calibration")["path"]
    val = load_split(data_dir, "validation")
    enc = encode(load_tokenizer(tiny_artifacts / "baseline"), val.texts, 64)
    # impossible budget: forces the pass; symmetric U8 must come out with zero point 128
    cfg = StaticConfig(max_f1_drop_pt=-100.0, symmetric_activations=True, method="minmax")
    out = tmp_path / "q.onnx"
    info = build_static_ptq(tiny_artifacts / "onnx" / "fp32.onnx", out, calib,
                            ["input_ids", "attention_mask", "token_type_ids"], 16, cfg, enc,
                            np.asarray(val.labels))
    blocks = set(quantizable_nodes(tiny_artifacts / "onnx" / "fp32.onnx", cfg.op_types))
    assert set(info["sensitivity_drop_pt"]) == blocks
    assert len(info["blocks_fp32"]) == len(blocks) - 1 and len(info["blocks_quantized"]) == 1
    assert info["within_budget"] is False
    m = onnx.load(str(out))
    init = {i.name: i for i in m.graph.initializer}
    zps = {int(onnx.numpy_helper.to_array(init[n.input[2]])) for n in m.graph.node
           if n.op_type == "QuantizeLinear"}
    assert zps == {128}
