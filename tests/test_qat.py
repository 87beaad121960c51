"""QAT: fake-quant insertion/removal, QAT training, Q/DQ export, ONNX Runtime on the result."""

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from common.calibset import CalibrationSet
from common.env import int8_weights_for_this_cpu
from common.errors import ConfigError
from common.feeds import encode
from common.manifest import Manifest
from common.modelsource import load_tokenizer
from common.qat_model import (
    ActQuant,
    FakeQuantEmbedding,
    FakeQuantLinear,
    act_quantizers,
    fake_quant_tensor,
    fake_quant_weight,
    insert_fake_quant,
    load_qat_model,
    remove_fake_quant,
    upper_quantile,
)
from common.task import load_split
from common.torch_infer import torch_fn
from deploy.factories import make_runner
from export.qat_export import (
    QdqStructureError,
    check_structure,
    expected_structure,
    fold_and_flavour,
    qdq_structure,
)
from train.finetune import class_weights
from train.loop import train_step
from train.qat import calibrate


def _feed(tiny_artifacts, data_dir, n=8):
    ckpt = tiny_artifacts / "baseline"
    enc = encode(load_tokenizer(ckpt), load_split(data_dir, "test").texts[:n], 64)
    names = json.loads((ckpt / "recipe.json").read_text())["input_names"]
    return enc.batch(list(range(n)), names)


class _NoStep:
    """Optimizer and scheduler stand-in: train_step's loss without moving the weights."""

    def step(self):
        pass

    def zero_grad(self, set_to_none=True):
        pass


def _calibrated(tiny_artifacts, **kw):
    ckpt = tiny_artifacts / "baseline"
    model = AutoModelForSequenceClassification.from_pretrained(ckpt, attn_implementation="eager").eval()
    counts = insert_fake_quant(model, **kw)
    calib = tiny_artifacts / Manifest(tiny_artifacts).get("calibration")["path"]
    names = json.loads((ckpt / "recipe.json").read_text())["input_names"]
    calibrate(model, CalibrationSet(calib, 16, names))
    return model, counts


def test_insert_and_remove_fake_quant(tiny_artifacts, data_dir):
    feed = {k: torch.from_numpy(v) for k, v in _feed(tiny_artifacts, data_dir).items()}
    ref_model = AutoModelForSequenceClassification.from_pretrained(
        tiny_artifacts / "baseline", attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(**feed).logits
    model, counts = _calibrated(tiny_artifacts)
    layers = model.base_model.encoder.layer
    assert counts == {"linear": 6 * len(layers), "attention": len(layers), "embedding": 1}
    # the attention module is the model's own, with its forward wrapped: no re-implementation
    assert all(type(layer.attention.self).__name__ == "BertSelfAttention"
               and "forward" in vars(layer.attention.self) for layer in layers)
    assert all(isinstance(layer.intermediate.dense, FakeQuantLinear) for layer in layers)
    assert isinstance(model.base_model.embeddings.word_embeddings, FakeQuantEmbedding)
    assert not isinstance(model.classifier, FakeQuantLinear)  # the head stays FP32
    # 6 Linear inputs + 4 attention operands per layer, every one calibrated to a positive amax
    qs = act_quantizers(model)
    assert len(qs) == 10 * len(layers) and all(float(q.amax) > 0 for q in qs.values())
    with torch.no_grad():
        fq = model(**feed).logits
    assert not torch.equal(fq, ref)  # quantization noise is really there...
    assert torch.allclose(fq, ref, atol=0.5)  # ...and small
    remove_fake_quant(model)
    assert not any(isinstance(m, ActQuant | FakeQuantLinear | FakeQuantEmbedding)
                   for m in model.modules())
    assert not any("forward" in vars(layer.attention.self) for layer in layers)
    with torch.no_grad():
        assert torch.equal(model(**feed).logits, ref)  # removal restores the FP32 model exactly


def test_insert_without_attention_or_embeddings(tiny_artifacts):
    model, counts = _calibrated(tiny_artifacts, attention_matmuls=False, embeddings=False)
    assert counts == {"linear": 12, "attention": 0, "embedding": 0}
    assert len(act_quantizers(model)) == 12


def test_weight_fake_quant_is_on_a_per_channel_int8_grid():
    torch.manual_seed(0)
    w = torch.randn(5, 7) * torch.arange(1, 6).unsqueeze(1)  # channels of different ranges
    q = fake_quant_weight(w, axis=0)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().max() <= 127 + 1e-4
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6
    # straight-through estimator: the gradient reaches the FP32 weights
    w.requires_grad_(True)
    fake_quant_weight(w, axis=0).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))


def test_uncalibrated_quantizer_refuses():
    with pytest.raises(RuntimeError, match="before calibration"):
        ActQuant()(torch.ones(3))


def test_qat_steps_change_weights_and_keep_loss_finite(tiny_artifacts, data_dir):
    model, _ = _calibrated(tiny_artifacts)
    feed = {k: torch.from_numpy(v) for k, v in _feed(tiny_artifacts, data_dir, 16).items()}
    labels = torch.tensor(load_split(data_dir, "test").labels[:16])
    before = model.base_model.encoder.layer[0].attention.self.query.linear.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**feed, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = model.base_model.encoder.layer[0].attention.self.query.linear.weight
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not torch.equal(before, after)


def test_qat_artifact_recipe_and_selection(tiny_artifacts):
    e = Manifest(tiny_artifacts).get("qat")
    recipe = json.loads((tiny_artifacts / "qat" / "recipe.json").read_text())
    assert recipe["steps"] == 10  # 1 epoch of 320 rows at batch 32
    scores = [h["val_macro_f1"] for h in recipe["history"]]
    assert recipe["best_val_macro_f1"] == max(scores) == e["best_val_macro_f1"]
    assert [h["step"] for h in recipe["history"]] == [0, 5, 10]
    # its rows come from the task artifact: a change of the task rebuilds it
    assert set(e["inputs"]) == {"artifact:baseline", "artifact:calibration", "artifact:task",
                                "code"}
    # it trained with the baseline's loss: the class weights the baseline's recipe names
    baseline = json.loads((tiny_artifacts / "baseline" / "recipe.json").read_text())
    assert recipe["class_weights"] == baseline["config"]["fields"]["class_weights"] == "sqrt-inverse"
    assert "classification head" in recipe["quantization"]["fp32"]
    assert recipe["quantizers"]["attention_matmuls"] is True and recipe["model_type"] == "bert"
    # the saved weights are the selected step's: the baseline's only if no QAT step beat it
    best_step = max(recipe["history"], key=lambda h: h["val_macro_f1"])["step"]
    assert recipe["best_step"] == best_step
    base = AutoModelForSequenceClassification.from_pretrained(tiny_artifacts / "baseline")
    qat = AutoModelForSequenceClassification.from_pretrained(tiny_artifacts / "qat")
    assert torch.equal(base.classifier.weight, qat.classifier.weight) == (best_step == 0)
    amax = json.loads((tiny_artifacts / "qat" / "qat_amax.json").read_text())
    assert len(amax) == 20 and all(v > 0 for v in amax.values())


@pytest.mark.parametrize("variant, zp_type", [("qat", "UINT8"), ("qat-s8", "INT8")])
def test_exported_qdq_counts_match_config(tiny_artifacts, variant, zp_type):
    path = tiny_artifacts / "onnx" / f"{variant}.onnx"
    got = qdq_structure(path)
    # 2 layers: 12 Linear MatMuls (activation + per-channel INT8 weight) + 4 attention MatMuls
    assert got["matmul_quantized"] == 16 and got["matmul_weight_quantized"] == 12
    assert got["weight_dq_per_channel"] == 12 and got["weight_dq_axes"] == [1]
    e = Manifest(tiny_artifacts).get(f"onnx-{variant}")
    # the CPU flavour's weights follow the build machine (U8 on x86 without VNNI), TensorRT's: S8
    weights = int8_weights_for_this_cpu() if variant == "qat" else "s8"
    assert e["weights"] == weights and e["recipe"]["fields"]["weights"] == weights
    assert got["gather_quantized"] == 1 and got["weight_dtype"] == [{"s8": "INT8", "u8": "UINT8"}[weights]]
    assert list(got["activation_zero_point_types"]) == [zp_type]
    m = onnx.load(str(path))
    assert m.opset_import[0].version >= 13
    # CPU flavour: embedding rows are gathered from the INT8 table, then dequantized
    int8 = {i.name for i in m.graph.initializer
            if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert any(n.op_type == "Gather" and n.input[0] in int8 for n in m.graph.node) == (variant == "qat")
    # no FP32 copy of a quantized weight is left in the file
    fp32_2d = [i.name for i in m.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and "encoder" in i.name]
    assert fp32_2d == []
    assert e["agreement_vs_fakequant"]["top1_agreement"] >= 0.99


def test_structure_check_fails_when_config_differs(tiny_artifacts):
    got = qdq_structure(tiny_artifacts / "onnx" / "qat.onnx")
    w = int8_weights_for_this_cpu()
    with pytest.raises(QdqStructureError, match="matmul_quantized"):
        check_structure(got, expected_structure(12, 0, True, "u8", w), tiny_artifacts)
    with pytest.raises(QdqStructureError, match="activation_zero_point_types"):
        check_structure(got, expected_structure(12, 2, True, "s8", w), tiny_artifacts)
    with pytest.raises(QdqStructureError, match="weight_dtype"):
        check_structure(got, expected_structure(12, 2, True, "u8", "s8" if w == "u8" else "u8"),
                        tiny_artifacts)
    check_structure(got, expected_structure(12, 2, True, "u8", w), tiny_artifacts)


def test_ort_runs_qat_graph_and_agrees_with_fake_quant_torch(tiny_artifacts, data_dir):
    feed = _feed(tiny_artifacts, data_dir, 32)
    model = load_qat_model(tiny_artifacts / "qat")
    ref = torch_fn(model)(feed)
    for variant in ("qat", "qat-s8"):
        with make_runner("ort", variant, tiny_artifacts, threads=1) as r:
            got = r.infer(feed)
        assert got.shape == (32, 6) and np.isfinite(got).all()
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
        assert np.abs(got - ref).max() < 0.1


def test_fold_keeps_the_numbers(tmp_path):
    """Folding a weight's QuantizeLinear into an INT8 initializer gives the same outputs, and so
    does gathering embedding rows from the INT8 table before dequantizing them (CPU flavour)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    table = rng.normal(size=(10, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(3, np.int8), "zp"),
             numpy_helper.from_array(np.float32(0.05), "xs"),
             numpy_helper.from_array(np.int8(0), "xzp"),
             numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.float32(np.abs(table).max() / 127), "ts")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=1),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["table", "ts", "xzp"], ["tq"]),
             helper.make_node("DequantizeLinear", ["tq", "ts", "xzp"], ["td"]),
             helper.make_node("Gather", ["td", "ids"], ["e"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                       helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 5, 3])], inits)
    src = tmp_path / "src.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    feed = {"x": rng.normal(size=(2, 4)).astype(np.float32),
            "ids": rng.integers(0, 10, size=(2, 5)).astype(np.int64)}

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)

    for flavour, weights, swapped in (("u8", "s8", 1), ("u8", "u8", 1), ("s8", "s8", 0)):
        dst = tmp_path / f"{flavour}-{weights}.onnx"
        info = fold_and_flavour(src, dst, flavour, weights)
        assert info == {"weights_folded": 2, "activation_qdq": 1, "flavour": flavour,
                        "weights": weights, "gathers_before_dequantize": swapped}
        dtype = {"s8": onnx.TensorProto.INT8, "u8": onnx.TensorProto.UINT8}[weights]
        folded = [i for i in onnx.load(str(dst)).graph.initializer if i.name.endswith("_quantized")]
        assert len(folded) == 2 and {i.data_type for i in folded} == {dtype}
        for got, want in zip(run(dst), run(src), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)
        out = onnx.load(str(dst)).graph
        assert [n.op_type for n in out.node].count("QuantizeLinear") == 1
        gather = next(n for n in out.node if n.op_type == "Gather")
        # u8: the Gather reads the INT8 table itself; s8: it reads the dequantized table
        assert (gather.input[0] == "table_quantized") == (flavour == "u8")
    with pytest.raises(ValueError, match="s8 only"):
        fold_and_flavour(src, tmp_path / "bad.onnx", "s8", "u8")


def test_qat_export_weight_type_is_checked_and_in_the_recipe():
    from common.config import recipe
    from export.qat_export import QatExportConfig

    assert QatExportConfig().weights == int8_weights_for_this_cpu()
    assert recipe(QatExportConfig(weights="u8"))["fields"]["weights"] == "u8"
    with pytest.raises(ConfigError, match="S8 weights only"):
        QatExportConfig(flavour="s8", weights="u8")
    with pytest.raises(ConfigError, match="weights must be"):
        QatExportConfig(weights="int4")


def test_evaluate_ort_qat_reports_how_it_was_made(tiny_artifacts, data_dir, tmp_path):
    from evaluate.__main__ import main as evaluate_main

    out = tmp_path / "reports"
    rc = evaluate_main(["--backend", "ort", "--variant", "qat", "--data", str(data_dir),
                        "--artifacts", str(tiny_artifacts), "--out", str(out), "--threads", "1",
                        "--latency-samples", "10"])
    assert rc == 0
    r = json.loads((out / "ort-qat.json").read_text())
    assert r["made_by"]["artifact"] == "onnx-qat" and r["made_by"]["qat"]["lr"] == 1e-4
    assert r["made_by"]["qdq"]["matmul_quantized"] == 16
    md = (out / "ort-qat.md").read_text()
    for text in ("How this variant was made", "Kept FP32: LayerNorm", "per output channel",
                 "| lr | 0.0001 |", "| max_length | 64 |", "| freeze_layers | 0 |"):
        assert text in md, text


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 123_457])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.9999, 0.99999, 1.0])
def test_upper_quantile_equals_torch_quantile(n, q):
    a = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 10
    ref = float(torch.quantile(a.double(), q))  # float64: torch's own position is exact there
    assert upper_quantile(a, q) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_embedding_fake_quant_of_rows_equals_quantized_table():
    """The training path quantizes gathered rows; the export path the whole table: same values
    and the same gradient on the same rows."""
    emb = torch.nn.Embedding(50, 8, padding_idx=0)
    ids = torch.tensor([[3, 7, 7, 0], [49, 1, 2, 3]])
    fq = FakeQuantEmbedding(emb)
    rows = fq(ids)
    rows.square().sum().backward()
    g_rows = emb.weight.grad.clone()
    emb.weight.grad = None
    scale = emb.weight.detach().abs().max().clamp(min=1e-8) / 127
    table = fake_quant_tensor(emb.weight, scale)
    ref = torch.nn.functional.embedding(ids, table, 0)
    ref.square().sum().backward()
    assert torch.equal(rows, ref)
    assert torch.allclose(g_rows, emb.weight.grad) and g_rows[0].abs().sum() == 0


def test_qat_loss_carries_the_baselines_class_weights(tiny_artifacts, data_dir):
    """train_step with weights computes the weighted cross-entropy the baseline trained with."""
    model, _ = _calibrated(tiny_artifacts)
    feed = _feed(tiny_artifacts, data_dir, 16)
    labels = torch.tensor(load_split(data_dir, "test").labels[:16])
    w = class_weights("sqrt-inverse", np.asarray(load_split(data_dir, "train").labels), "cpu", 6)
    assert w is not None and w.mean().item() == pytest.approx(1.0) and w.max() > 1.5 * w.min()
    model.eval()  # no dropout: the loss is a function of the weights only
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=w).item()
    plain = torch.nn.functional.cross_entropy(logits, labels).item()
    assert expected != pytest.approx(plain)

    loss = train_step(model, feed, labels, "cpu", _NoStep(), _NoStep(), list(model.parameters()), "t", w)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_distillation_loss_and_the_step_that_mixes_it(tiny_artifacts, data_dir):
    from train.loop import distillation_loss, train_step

    x = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert distillation_loss(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(x, torch.flip(x, [1]), 2.0).item() > 0
    # T^2 scaling: at high temperatures KL shrinks as 1/T^2, so the scaled loss levels off
    # (without the factor, doubling T would quarter it)
    hot, hotter = (distillation_loss(x, torch.flip(x, [1]), t).item() for t in (20.0, 40.0))
    assert hotter / hot == pytest.approx(1.0, abs=0.05)

    model, _ = _calibrated(tiny_artifacts)
    model.eval()  # no dropout: the loss is a function of the weights only
    feed = _feed(tiny_artifacts, data_dir, 16)
    labels = torch.tensor(load_split(data_dir, "test").labels[:16])
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
    teacher = torch.randn_like(logits)
    want = (0.7 * torch.nn.functional.cross_entropy(logits, labels)
            + 0.3 * distillation_loss(logits, teacher, 2.0)).item()

    loss = train_step(model, feed, labels, "cpu", _NoStep(), _NoStep(), list(model.parameters()),
                      "t", teacher=(teacher, 0.3, 2.0))
    assert loss == pytest.approx(want, rel=1e-5)


def test_qat_with_distillation_trains_and_records_it(tiny_artifacts, data_dir, tmp_path):
    from train.qat import QatConfig, train_qat

    with pytest.raises(ConfigError, match="distill"):
        QatConfig(distill=1.0)
    cfg = QatConfig(data=str(data_dir), epochs=0.5, lr=1e-4, batch_size=32, eval_every=5,
                    seed=0, distill=0.5, limit_train=128, limit_eval=64)
    calib = tiny_artifacts / Manifest(tiny_artifacts).get("calibration")["path"]
    r = train_qat(cfg, tiny_artifacts / "baseline", calib, 16, tmp_path / "qat")
    assert r["config"]["fields"]["distill"] == 0.5 and r["steps"] == 2
    assert all(np.isfinite(h["val_macro_f1"]) for h in r["history"])
