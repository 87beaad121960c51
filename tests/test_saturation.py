"""The saturation check: the exact twin holds the same integers and runs exact sums on every CPU
(real ONNX Runtime sessions), the check over the tiny build's graphs, its report and CLI."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluate.saturation import SaturationConfig, check_saturation, exact_twin, write_saturation


def _session(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _matmul_integer(b: np.ndarray):
    k, n = b.shape
    return helper.make_model(helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, n])],
        [numpy_helper.from_array(b, "B")]), opset_imports=[helper.make_opsetid("", 17)])


def test_twin_computes_exact_sums_where_u8s8_would_saturate():
    # 255 x 127 in every pair: 64,770 per pair, twice what a 16-bit lane holds; without VNNI the
    # shipped form is clipped (ONNX Runtime here: 6,291,264 for 12,435,840), the twin never is
    k = 384
    b = np.full((k, 4), 127, np.int8)
    b[:, 1] = -128
    b[:, 2] = np.arange(k) % 256 - 128
    a = np.full((1, k), 255, np.uint8)
    model = _matmul_integer(b)
    assert exact_twin(model) == 1
    (w,) = [i for i in model.graph.initializer if i.name == model.graph.node[0].input[1]]
    assert w.data_type == TensorProto.UINT8
    np.testing.assert_array_equal(numpy_helper.to_array(w), b.astype(np.int16) + 128)
    zp = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[model.graph.node[0].input[3]]
    assert zp.dtype == np.uint8 and int(zp) == 128
    y = _session(model).run(None, {"A": a})[0]
    np.testing.assert_array_equal(y, a.astype(np.int64) @ b.astype(np.int64))
    assert [i.name for i in model.graph.initializer] == [w.name, model.graph.node[0].input[3]]


def test_twin_of_a_qdq_graph_dequantizes_to_the_same_values():
    # per-channel S8 weight shared by two DequantizeLinear nodes (one rewritten initializer), an
    # activation Q/DQ left alone, a U8 weight left alone
    rng = np.random.default_rng(0)
    w8 = rng.integers(-128, 128, (8, 3), dtype=np.int8)
    u8 = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    inits = [numpy_helper.from_array(w8, "w"), numpy_helper.from_array(np.full(3, 0.02, np.float32), "ws"),
             numpy_helper.from_array(np.array([0, 3, -5], np.int8), "wz"),
             numpy_helper.from_array(u8, "u"), numpy_helper.from_array(np.float32(0.01), "us"),
             numpy_helper.from_array(np.uint8(128), "uz"),
             numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w1"], axis=1),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w2"], axis=1),
             helper.make_node("DequantizeLinear", ["u", "us", "uz"], ["u1"]),
             helper.make_node("MatMul", ["xd", "w1"], ["y1"]),
             helper.make_node("MatMul", ["X", "w2"], ["y2"]),
             helper.make_node("MatMul", ["X", "u1"], ["y3"])]
    vi = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(
        nodes, "g", [vi("X", TensorProto.FLOAT, [2, 8])],
        [vi(y, TensorProto.FLOAT, [2, 3]) for y in ("y1", "y2", "y3")], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    x = {"X": rng.normal(size=(2, 8)).astype(np.float32)}
    before = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, x)
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    assert exact_twin(twin) == 2
    names = {i.name: i for i in twin.graph.initializer}
    assert "w" not in names and names["w_u8"].data_type == TensorProto.UINT8
    assert {"u", "uz", "xs", "xz"} <= set(names)  # U8 weight and the activation's Q/DQ untouched
    np.testing.assert_array_equal(numpy_helper.to_array(names["wz_u8"]), [128, 131, 123])
    after = _session(twin, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, x)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _int8_weights(path) -> int:
    m = onnx.load(str(path))
    inits = {i.name: i.data_type for i in m.graph.initializer}
    idx = {"DequantizeLinear": 0, "QAttention": 1, "DynamicQuantizeMatMul": 1,
           "MatMulIntegerToFloat": 1, "MatMulInteger": 1}
    return sum(1 for n in m.graph.node if n.op_type in idx
               and inits.get(n.input[idx[n.op_type]]) == TensorProto.INT8)


def test_check_over_the_tiny_build(tiny_artifacts, data_dir, tmp_path):
    from evaluate.compare import published_files, write_comparison

    r = check_saturation(SaturationConfig(variants=("ptq-fused", "dynamic-fused"), data=str(data_dir),
                                          sentences=12, threads=1, artifacts=str(tiny_artifacts),
                                          out=str(tmp_path)))
    rows = {x["variant"]: x for x in r["rows"]}
    assert r["sentences"] == 12
    for v, x in rows.items():
        # every S8 weight of the file was rewritten: the file's own count, read independently
        assert x["weights_rewritten"] == _int8_weights(tiny_artifacts / "onnx" / f"{v}.onnx") > 0
        assert 0 <= x["predictions_differ"] <= 12 and 0 <= x["macro_f1_exact"] <= 1
        assert x["right_only_shipped"] + x["right_only_exact"] <= x["predictions_differ"]
        lo, hi = x["delta_f1"]["ci95"]
        assert lo <= x["delta_f1"]["delta"] + 1e-9 and x["delta_f1"]["delta"] <= hi + 1e-9
        if not r["u8s8_saturates"]:
            # VNNI (or ARM dot-product) sums are exact: the twin must give the same logits
            assert x["predictions_differ"] == 0 and x["max_abs_dlogit"] < 1e-4
    md = write_saturation(r, tmp_path)["md"].read_text()
    assert "| ptq-fused |" in md and "exact twin" in md
    # listed and published by the comparison; stale once its graph changes
    c = json.loads(write_comparison(tmp_path, [], artifacts=tiny_artifacts)["json"].read_text())
    assert [x["variant"] for x in c["saturation"][0]["rows"]] == ["ptq-fused", "dynamic-fused"]
    assert "saturation-ort.md" in {p.name for p in published_files(c, tmp_path)}
    r["made_by"]["ptq-fused"] = {**r["made_by"]["ptq-fused"], "sha256": "0" * 64}
    write_saturation(r, tmp_path)
    c = json.loads(write_comparison(tmp_path, [], artifacts=tiny_artifacts)["json"].read_text())
    assert c["saturation"] == [] and [x["report"] for x in c["stale"]] == ["saturation-ort.json"]


def test_cli_checks_ort_graphs_only(tiny_artifacts, data_dir, tmp_path, capsys):
    from evaluate.__main__ import main

    with pytest.raises(SystemExit):
        main(["--backend", "torch", "--saturation", "default", "--artifacts", str(tiny_artifacts)])
    assert "give --backend ort" in capsys.readouterr().err
    assert main(["--backend", "ort", "--saturation", "ptq-fused", "--data", str(data_dir),
                 "--saturation-sentences", "4", "--threads", "1", "--artifacts", str(tiny_artifacts),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ort/ptq-fused:" in out and "of 4 answers differ" in out
    assert (tmp_path / "saturation-ort.json").is_file()
    rc = main(["--backend", "ort", "--saturation", "nope", "--artifacts", str(tiny_artifacts),
               "--out", str(tmp_path)])
    assert rc == 2 and "unknown variant ort/nope" in capsys.readouterr().err  # with the list


def test_a_graph_with_u8_weights_is_not_checked(tiny_artifacts, data_dir, tmp_path):
    """A graph whose INT8 weights are already U8 (here ptq-fused replaced by its own exact twin,
    re-recorded in the manifest) cannot differ from exact sums: it is listed as not checked with
    the reason, not published as "0 differ"."""
    import shutil

    from common.manifest import Manifest
    from evaluate.compare import comparison_markdown, write_comparison

    arts = tmp_path / "a"
    shutil.copytree(tiny_artifacts, arts)
    man = Manifest(arts)
    e = man.get("onnx-ptq-fused")
    model = onnx.load(str(arts / e["path"]))
    assert exact_twin(model) > 0
    onnx.save(model, str(arts / e["path"]))
    man.record("onnx-ptq-fused", e["path"], e["recipe"], e["inputs"], e["versions"], e["device"])
    assert _int8_weights(arts / e["path"]) == 0
    out = tmp_path / "r"
    r = check_saturation(SaturationConfig(variants=("ptq-fused", "dynamic-fused"),
                                          data=str(data_dir), sentences=8, threads=1,
                                          artifacts=str(arts), out=str(out)))
    rows = {x["variant"]: x for x in r["rows"]}
    assert rows["ptq-fused"]["weights_rewritten"] == 0 and "predictions_differ" not in rows["ptq-fused"]
    assert "already U8" in rows["ptq-fused"]["skipped"]
    assert rows["dynamic-fused"]["weights_rewritten"] > 0 and "skipped" not in rows["dynamic-fused"]
    md = write_saturation(r, out)["md"].read_text()
    assert "| ptq-fused |" not in md and "- ptq-fused: not checked" in md
    c = json.loads(write_comparison(out, [], artifacts=arts)["json"].read_text())
    sa = c["saturation"][0]
    assert [x["variant"] for x in sa["rows"]] == ["dynamic-fused"]
    assert sa["not_checked"] == ["ptq-fused"]
    assert "ptq-fused not checked (its weights are already U8)" in comparison_markdown(c)


def test_zero_points_given_by_constant_nodes_are_rewritten_too(tiny_artifacts):
    """torch's exporter writes the QAT graph's zero points as Constant nodes, not initializers:
    its S8 weights are rewritten all the same (the check once called such a graph "already U8"),
    and the twin dequantizes to the same values."""
    rng = np.random.default_rng(1)
    w8 = rng.integers(-128, 128, (8, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(w8, "w"),
             numpy_helper.from_array(np.full(3, 0.02, np.float32), "ws")]
    nodes = [helper.make_node("Constant", [], ["wz"], value=numpy_helper.from_array(
                 np.zeros(3, np.int8), "wz_value")),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["w1"], axis=1),
             helper.make_node("MatMul", ["X", "w1"], ["Y"])]
    vi = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(
        nodes, "g", [vi("X", TensorProto.FLOAT, [2, 8])], [vi("Y", TensorProto.FLOAT, [2, 3])],
        inits), opset_imports=[helper.make_opsetid("", 17)])
    x = {"X": rng.normal(size=(2, 8)).astype(np.float32)}
    before = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, x)[0]
    assert exact_twin(model) == 1
    names = {i.name: i for i in model.graph.initializer}
    assert names["w_u8"].data_type == TensorProto.UINT8
    np.testing.assert_array_equal(numpy_helper.to_array(names["wz_u8"]), [128, 128, 128])
    after = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    # the tiny build's QAT graph: every S8 weight it holds (none where its weights are U8) is one
    # the twin rewrites
    qat = onnx.load(str(tiny_artifacts / "onnx" / "qat.onnx"))
    assert exact_twin(qat) == _int8_weights(tiny_artifacts / "onnx" / "qat.onnx")
