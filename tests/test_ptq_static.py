"""Calibration set and ONNX Runtime static QDQ PTQ, chosen by the accuracy-aware search."""

import dataclasses

import numpy as np
import onnx
import pytest

from calibration.calibset import CalibConfig, build_calibration_set
from calibration.ort_static import block_of, quantizable_nodes
from calibration.ptq_search import StaticConfig, agreement, search_static_ptq
from common.calibset import CalibrationSet
from common.checkpoint import TextEncoder
from common.data import stratified_halves
from common.feeds import encode
from common.manifest import Manifest, sha256_of
from common.modelsource import load_tokenizer
from common.task import load_split
from deploy.factories import make_runner


def test_calibration_set_is_validation_rows_fixed_shape_and_seeded(tiny_artifacts, data_dir, tmp_path):
    tok = load_tokenizer(tiny_artifacts / "baseline")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    te = TextEncoder(tok, 64, tuple(names))
    cfg = CalibConfig(size=64, seed=3)
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    info = build_calibration_set(str(data_dir), te, cfg, a)
    build_calibration_set(str(data_dir), te, cfg, b)
    build_calibration_set(str(data_dir), te, dataclasses.replace(cfg, seed=4), c)
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
    fixed = build_calibration_set(str(data_dir), te, CalibConfig(size=16, seq_len="32"),
                                  tmp_path / "d.npz")
    assert fixed["seq_len"] == 32 and CalibrationSet(tmp_path / "d.npz", 4).seq_len == 32
    # rows are kept in draw order: a prefix is itself a seeded sample, served by rows=k
    assert not np.array_equal(rows, np.sort(rows))
    part = CalibrationSet(a, 8, names, rows=24)
    assert part.n == 24 and len(part) == 3
    np.testing.assert_array_equal(part.arrays["input_ids"], ids[:24])
    from common.manifest import ArtifactError

    with pytest.raises(ArtifactError, match="holds 64 rows, 65 asked for"):
        CalibrationSet(a, 8, names, rows=65)


def test_block_of_names():
    assert block_of("/bert/encoder/layer.11/attention/self/query/MatMul") == "layer.11"
    assert block_of("/distilbert/transformer/layer.2/ffn/lin2/MatMul") == "layer.2"
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
    chosen = entry["static"]
    kinds = {n.name: n for n in quantizable_nodes(tiny_artifacts / "onnx" / "fp32.onnx", "output.dense")}
    skip = {"no-attention": "attention", "no-ffn-out": "ffn-out"}.get(chosen["placement"])
    for n in matmuls:
        fed_by_dq = all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                        for i in n.input)
        node = kinds.get(n.name)
        want = node is not None and node.kind != skip and node.block not in chosen["fp32_blocks"]
        assert fed_by_dq == want, n.name
    # the TensorRT flavour reuses the recipe the search chose (symmetric S8)
    s8 = Manifest(tiny_artifacts).get("onnx-ptq-s8")["static"]
    u8 = Manifest(tiny_artifacts).get("onnx-ptq")["static"]
    assert {**s8, "activation_type": "u8", "symmetric": u8["symmetric"]} == u8
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


def test_halves_are_stratified_disjoint_and_seeded():
    y = np.array([0] * 50 + [1] * 30 + [5] * 7)
    a, b = stratified_halves(y, 0)
    assert set(a) & set(b) == set() and len(a) + len(b) == len(y)
    for c in (0, 1, 5):
        assert abs((y[a] == c).sum() - (y[b] == c).sum()) <= 1
    assert np.array_equal(stratified_halves(y, 0)[0], a) and not np.array_equal(stratified_halves(y, 1)[0], a)


def test_agreement_criterion():
    ref = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert agreement(ref, ref) == {"kl": 0.0, "top1": 1.0, "dlogit": 0.0}
    worse = agreement(ref, np.array([[0.0, 2.0], [0.0, 1.0]]))
    assert worse["top1"] == 0.5 and worse["kl"] > agreement(ref, ref + 0.1 * np.eye(2))["kl"] > 0


def test_search_tries_the_space_chooses_on_a_confirms_on_b_and_never_reads_test(
        tiny_artifacts, data_dir, tmp_path, monkeypatch):
    import common.data

    man = Manifest(tiny_artifacts)
    val = load_split(data_dir, "validation")
    real = common.data.READERS[".jsonl"]  # every local JSON Lines file is read through it
    asked = []
    monkeypatch.setitem(common.data.READERS, ".jsonl", lambda p: asked.append(p) or real(p))
    tok = load_tokenizer(tiny_artifacts / "baseline")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    enc = encode(tok, val.texts, 64)
    cfg = StaticConfig(calib_rows=(32, 64), percentiles=(99.99, 99.999), spread_seeds=(7,),
                       placements=("all", "no-attention", "no-ffn-out"), latency_rounds=2,
                       max_size_ratio=1.0)
    from calibration.calibset import sample_calibration

    info = search_static_ptq(tiny_artifacts / "onnx" / "fp32.onnx", tmp_path / "q.onnx",
                             tiny_artifacts / man.get("calibration")["path"], names, 16, cfg, enc,
                             np.asarray(val.labels), "output.dense",
                             lambda rows, seed: sample_calibration(
                                 val, TextEncoder(tok, 64, tuple(names)), rows, seed)[0])
    s = info["search"]
    labels = [r["label"] for r in s["tried"]]
    # every calibration (minmax; percentile 99.99 and 99.999; 32 and 64 rows) with every MatMul,
    # then the best calibration with the two other placements
    assert len(labels) == 3 * 2 + 2 and len(set(labels)) == len(labels)
    best_cal = min(s["tried"][:6], key=lambda r: (r["kl"], -r["top1"]))
    assert {r["recipe"]["placement"] for r in s["tried"][6:]} == {"no-attention", "no-ffn-out"}
    assert all(r["recipe"]["method"] == best_cal["recipe"]["method"] for r in s["tried"][6:])
    chosen = next(r for r in s["tried"] if r.get("chosen"))
    within = [r for r in s["tried"] if r["val_b_drop_pt"] <= cfg.tolerable_loss and r["eligible"]]
    assert chosen == min(within, key=lambda r: (r["kl"], -r["top1"]))
    assert all(r["latency_ms_b1"] > 0 and r["size_bytes"] > 0 for r in s["tried"])
    assert s["halves"]["a"] + s["halves"]["b"] == len(val)
    assert [x["seed"] for x in s["calibration_seed_spread"]["rows"]] == [7]
    # the search reads no split at all: it sees only the validation rows it is given
    assert asked == [] and (tmp_path / "q.onnx").is_file()


def test_block_fallback_when_nothing_fits(tiny_artifacts, data_dir, tmp_path, monkeypatch):
    """With a budget no recipe can meet, the worst blocks (ranked on A) are kept FP32 one at a
    time, never all of them."""
    from calibration.ptq_search import Search

    monkeypatch.setattr(Search, "within", lambda self, row: False)
    man = Manifest(tiny_artifacts)
    val = load_split(data_dir, "validation")
    enc = encode(load_tokenizer(tiny_artifacts / "baseline"), val.texts, 64)
    cfg = StaticConfig(methods=("minmax",), calib_rows=(32,), placements=("all",),
                       spread_seeds=(), latency_rounds=1, max_size_ratio=1.0)
    info = search_static_ptq(tiny_artifacts / "onnx" / "fp32.onnx", tmp_path / "q.onnx",
                             tiny_artifacts / man.get("calibration")["path"],
                             ["input_ids", "attention_mask", "token_type_ids"], 16, cfg, enc,
                             np.asarray(val.labels), "output.dense")
    blocks = {n.block for n in quantizable_nodes(tiny_artifacts / "onnx" / "fp32.onnx", "output.dense")}
    singles = [r for r in info["search"]["tried"] if len(r["recipe"]["fp32_blocks"]) == 1]
    assert {r["recipe"]["fp32_blocks"][0] for r in singles} == blocks
    assert max(len(r["recipe"]["fp32_blocks"]) for r in info["search"]["tried"]) == len(blocks) - 1
    assert info["search"]["within_tolerable_loss"] is False
