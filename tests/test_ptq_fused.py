"""ort/ptq-fused: static INT8 on ONNX Runtime's fused graph (calibration/ort_fused.py), built by the
real pipeline on the tiny BERT, and its construction checked on real graphs."""

import json

import numpy as np
import onnx
import pytest

from common.calibset import CalibrationSet
from common.feeds import batches, encode
from common.modelsource import load_tokenizer
from common.onnx_graph import op_counts
from common.task import load_split
from deploy.factories import make_runner
from tests.test_dynamic_variants import MIN_AGREEMENT


@pytest.fixture(scope="module")
def enc(tiny_artifacts, data_dir):
    return encode(load_tokenizer(tiny_artifacts / "baseline"), load_split(data_dir, "test").texts, 64)


def _logits(runner, enc, size):
    return np.concatenate([runner.infer(enc.batch(b, runner.input_names))
                           for b in batches(len(enc), size)])


def test_graph_is_static_fused_and_keeps_the_residual_float(tiny_artifacts):
    path = tiny_artifacts / "onnx" / "ptq-fused.onnx"
    counts = op_counts(path)
    fused = op_counts(tiny_artifacts / "onnx" / "fp32-fused.onnx")
    # every fused Attention became QAttention, and nothing computes a scale at run time
    assert counts.get("QAttention") == fused["Attention"] == 2
    assert "DynamicQuantizeLinear" not in counts and "Attention" not in counts
    assert counts.get("QEmbedLayerNormalization") == 1
    m = onnx.load(str(path))
    readers: dict[str, list[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    dq_out = [n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"]
    # Q/DQ only where ONNX Runtime fuses it into MatMulIntegerToFloat: no residual Add reads a
    # dequantized tensor
    assert dq_out and all(set(readers[o]) == {"MatMul"} for o in dq_out)
    # 2 layers x 3 layer MatMuls (attention output, feed-forward in and out), inputs only
    matmuls = [n for n in m.graph.node if n.op_type == "MatMul" and "/layer." in n.name]
    assert len(matmuls) == 6 and all(i in dq_out for n in matmuls for i in n.input)
    # the scales in front of QAttention are constants from calibration
    init = {i.name for i in m.graph.initializer}
    q_in = {n.input[0] for n in m.graph.node if n.op_type == "QAttention"}
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.output[0] in q_in]
    assert len(q_nodes) == 2 and all(n.input[1] in init and n.input[2] in init for n in q_nodes)


def test_manifest_records_the_recipe_ort_ptq_chose(tiny_artifacts):
    man = json.loads((tiny_artifacts / "manifest.json").read_text())
    step = man["onnx-ptq-fused"]
    assert step["static"] == man["onnx-ptq"]["static"]  # the search's choice, not a second one
    assert "artifact:onnx-ptq" in step["inputs"]  # a new choice rebuilds this graph
    assert step["static_qattention"] == 2 and step["float_residual_inputs"] >= 2
    assert step["agreement_vs_fp32"]["top1_agreement"] >= step["agreement_vs_fp32"]["min_top1"]


def test_batch_invariant_and_agrees_with_fp32(tiny_artifacts, enc):
    with make_runner("ort", "ptq-fused", tiny_artifacts, threads=1) as q, \
            make_runner("ort", "fp32-fused", tiny_artifacts, threads=1) as f:
        one, many = _logits(q, enc, 1), _logits(q, enc, 32)
        # static: the same answer alone or in a padded batch (dynamic-fused is not)
        assert (one.argmax(-1) == many.argmax(-1)).all()
        np.testing.assert_allclose(one, many, atol=1e-4)
        assert (one.argmax(-1) == _logits(f, enc, 32).argmax(-1)).mean() >= MIN_AGREEMENT


def test_refuses_a_graph_without_fused_attention_and_tensorrt_activations(tiny_artifacts,
                                                                         tmp_path):
    from calibration.ort_fused import FusedPtqError, quantize_fused
    from calibration.ort_static import Recipe

    calib = CalibrationSet(next((tiny_artifacts / "calibration").glob("calib-*.npz")), 8,
                           ["input_ids", "attention_mask", "token_type_ids"], 16)
    with pytest.raises(FusedPtqError, match="no fused Attention"):
        quantize_fused(tiny_artifacts / "onnx" / "fp32.onnx", tmp_path / "x.onnx", calib, Recipe(),
                       "output.dense")
    with pytest.raises(FusedPtqError, match="U8 asymmetric"):
        quantize_fused(tiny_artifacts / "onnx" / "fp32-fused.onnx", tmp_path / "x.onnx", calib,
                       Recipe(activation_type="s8", symmetric=True), "output.dense")


def test_blocks_the_search_kept_fp32_stay_fp32(tiny_artifacts, tmp_path):
    """A recipe from the search's block fallback keeps that layer's Attention and MatMuls FP32
    (and the embeddings' table when it names them)."""
    from calibration.ort_fused import quantize_fused
    from calibration.ort_static import Recipe

    calib = CalibrationSet(next((tiny_artifacts / "calibration").glob("calib-*.npz")), 8,
                           ["input_ids", "attention_mask", "token_type_ids"], 16)
    out = tmp_path / "fb.onnx"
    info = quantize_fused(tiny_artifacts / "onnx" / "fp32-fused.onnx", out, calib,
                          Recipe(calib_rows=16, fp32_blocks=("layer.0", "embeddings")),
                          "output.dense")
    counts = op_counts(out)
    assert counts["QAttention"] == 1 and counts["Attention"] == 1 and info["qdq_matmuls"] == 3
    assert counts.get("EmbedLayerNormalization") == 1 and "QEmbedLayerNormalization" not in counts
    m = onnx.load(str(out))
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    layer0 = [n for n in m.graph.node if n.op_type == "MatMul" and "/layer.0/" in n.name]
    layer1 = [n for n in m.graph.node if n.op_type == "MatMul" and "/layer.1/" in n.name]
    assert len(layer0) == 3 and not any(i in dq_out for n in layer0 for i in n.input)
    assert len(layer1) == 3 and all(i in dq_out for n in layer1 for i in n.input)


def test_placement_no_ffn_out_keeps_the_feed_forward_output_fp32(tiny_artifacts, tmp_path):
    from calibration.ort_fused import quantize_fused
    from calibration.ort_static import Recipe

    calib = CalibrationSet(next((tiny_artifacts / "calibration").glob("calib-*.npz")), 8,
                           ["input_ids", "attention_mask", "token_type_ids"], 16)
    out = tmp_path / "nf.onnx"
    info = quantize_fused(tiny_artifacts / "onnx" / "fp32-fused.onnx", out, calib,
                          Recipe(calib_rows=16, placement="no-ffn-out"), "output.dense")
    m = onnx.load(str(out))
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    mm = {n.name: n for n in m.graph.node if n.op_type == "MatMul" and "/layer." in n.name}
    ffn_out = [n for name, n in mm.items() if "/output/dense/" in name
               and "/attention/" not in name]
    assert len(ffn_out) == 2 and info["qdq_matmuls"] == 4
    assert not any(i in dq_out for n in ffn_out for i in n.input)
    assert op_counts(out)["QAttention"] == 2
