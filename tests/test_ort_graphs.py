"""export.ort_graphs.unfuse_skip_layernorm on hand-built graphs, run in real ONNX Runtime sessions:
the rewritten graph computes what SkipLayerNormalization did, and the session keeps it unfused."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.ort_graphs import refused_skip_layernorm, session_op_counts, unfuse_skip_layernorm

H = 16


def _sln_model(bias: bool, extra_output: bool = False, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=H).astype(np.float32), n)
             for n in ("gamma", "beta", "bias")]
    outs = ["y", "", "", "sum"] if extra_output else ["y"]
    # no node name (it is optional in ONNX): the rewrite must not need one
    node = helper.make_node("SkipLayerNormalization",
                            ["x", "skip", "gamma", "beta"] + (["bias"] if bias else []), outs,
                            domain="com.microsoft", epsilon=1e-5)
    # "sum" as a graph output: a reader of the extra output the rewrite must keep fused
    graph_outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", H])]
    if extra_output:
        graph_outs.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["b", "s", H]))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT,
                                                                      ["b", "s", H])
                                        for n in ("x", "skip")], graph_outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["y"], feeds)[0]


def test_unfused_graph_computes_the_same_and_stays_unfused(tmp_path: Path):
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(size=(2, 5, H)).astype(np.float32) for n in ("x", "skip")}
    want = _run(_sln_model(bias=True), feeds)
    m = _sln_model(bias=True)
    assert unfuse_skip_layernorm(m) == 1
    assert [n.op_type for n in m.graph.node] == ["Add", "Add", "LayerNormalization"]
    np.testing.assert_allclose(_run(m, feeds), want, atol=1e-5)
    path = tmp_path / "unfused.onnx"
    onnx.save(m, str(path))
    ran = session_op_counts(path)
    assert "SkipLayerNormalization" not in ran and ran.get("LayerNormalization") == 1


def test_without_a_bias_the_fused_op_stays(tmp_path: Path):
    # Add(x, skip) -> LayerNormalization is what the session fuses back: rewriting it gains nothing
    m = _sln_model(bias=False)
    del m.graph.node[:]
    m.graph.node.extend([helper.make_node("Add", ["x", "skip"], ["s"]),
                         helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"],
                                          axis=-1, epsilon=1e-5)])
    path = tmp_path / "add-ln.onnx"
    onnx.save(m, str(path))
    assert session_op_counts(path).get("SkipLayerNormalization") == 1
    assert refused_skip_layernorm(path) == 1
    m = _sln_model(bias=False)
    assert unfuse_skip_layernorm(m) == 0
    assert [n.op_type for n in m.graph.node] == ["SkipLayerNormalization"]


def test_a_read_extra_output_keeps_the_fused_op():
    m = _sln_model(bias=True, extra_output=True)
    assert unfuse_skip_layernorm(m) == 0
    assert [n.op_type for n in m.graph.node] == ["SkipLayerNormalization"]


def test_below_opset_17_the_fused_op_stays():
    # ONNX has no LayerNormalization before opset 17: an older export keeps the fused op (and
    # still builds)
    m = _sln_model(bias=True, opset=14)
    assert unfuse_skip_layernorm(m) == 0
    assert [n.op_type for n in m.graph.node] == ["SkipLayerNormalization"]


def test_unnamed_nodes_in_a_chain_get_unique_names():
    """Two unnamed SkipLayerNormalization nodes in a row (a layer's two): the rewritten graph
    must stay in single-assignment form, which ONNX Runtime checks when it loads it."""
    rng = np.random.default_rng(2)
    m = _sln_model(bias=True)
    first = m.graph.node[0]
    first.output[0] = "h"
    m.graph.node.append(helper.make_node("SkipLayerNormalization",
                                         ["h", "skip", "gamma", "beta", "bias"], ["y"],
                                         domain="com.microsoft", epsilon=1e-5))
    feeds = {n: rng.normal(size=(1, 3, H)).astype(np.float32) for n in ("x", "skip")}
    want = _run(m, feeds)
    assert unfuse_skip_layernorm(m) == 2
    outs = [o for n in m.graph.node for o in n.output]
    assert len(outs) == len(set(outs)) == 6
    np.testing.assert_allclose(_run(m, feeds), want, atol=1e-5)


def test_a_kept_fused_node_is_not_counted_as_fused_back(tmp_path: Path):
    """A graph whose file keeps one SkipLayerNormalization (no bias) beside one unfused: the
    session runs one, which is the kept one, not one fused back."""
    m = _sln_model(bias=True)
    m.graph.node[0].output[0] = "h"
    m.graph.node.append(helper.make_node("SkipLayerNormalization", ["h", "skip", "gamma", "beta"],
                                         ["y"], domain="com.microsoft", epsilon=1e-5))
    assert unfuse_skip_layernorm(m) == 1
    path = tmp_path / "mixed.onnx"
    onnx.save(m, str(path))
    assert session_op_counts(path).get("SkipLayerNormalization") == 1
    assert refused_skip_layernorm(path) == 0
