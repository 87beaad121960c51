"""The one-line PTQ reference rows: PyTorch dynamic INT8 and ONNX Runtime dynamic INT8, and the
fused FP32 graph they are compared with."""

import numpy as np
import pytest

from common.feeds import batches, encode
from common.modelsource import load_tokenizer
from common.onnx_graph import op_counts
from common.task import load_split
from deploy.factories import make_runner
from export.ort_graphs import session_op_counts

# Agreement floor for the tiny random model: its logits sit close together (trained 2 epochs on
# 320 rows), so INT8 noise flips more predictions than on the real model (100% top-1 on the
# fine-tuned MiniLM's 144 validation inputs); 0.9 still fails any broken quantization (chance
# agreement between unrelated 6-way classifiers is far lower).
MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def enc(tiny_artifacts, data_dir):
    return encode(load_tokenizer(tiny_artifacts / "baseline"), load_split(data_dir, "test").texts, 64)


def _top1(runner, enc):
    return np.concatenate([runner.infer(enc.batch(b, runner.input_names)).argmax(-1)
                           for b in batches(len(enc), 32)])


def test_torch_dynamic_has_quantized_linears_and_agrees(tiny_artifacts, enc):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    with make_runner("torch", "ptq-dynamic", tiny_artifacts, threads=1) as q, \
            make_runner("torch", "fp32", tiny_artifacts, threads=1) as f:
        mods = dict(q.model.named_modules())
        dyn = [n for n, m in mods.items() if isinstance(m, DynLinear)]
        assert len(dyn) == 2 * 6  # 2 layers x (q, k, v, attn out, ffn in, ffn out)
        assert all(".encoder." in f".{n}." for n in dyn)
        assert type(mods["classifier"]) is torch.nn.Linear  # head kept FP32
        assert (_top1(q, enc) == _top1(f, enc)).mean() >= MIN_AGREEMENT
        assert q.files()[0].name == "ptq-dynamic.pt"


@pytest.mark.parametrize("variant, ops", [
    ("dynamic", {"MatMulInteger", "DynamicQuantizeLinear"}),
    ("dynamic-fused", {"QAttention", "DynamicQuantizeLinear"}),
])
def test_ort_dynamic_ops_and_agreement(tiny_artifacts, enc, variant, ops):
    counts = op_counts(tiny_artifacts / "onnx" / f"{variant}.onnx")
    assert ops <= set(counts), counts
    if variant == "dynamic":
        # 2 layers x 6 weight MatMuls (+ 2 activation MatMuls each, left FP32 by quantize_dynamic
        # only when their inputs are not initializers: count just the weight ones)
        assert counts["MatMulInteger"] >= 12
    ref = "fp32-fused" if variant.endswith("fused") else "fp32"
    with make_runner("ort", variant, tiny_artifacts, threads=1) as q, \
            make_runner("ort", ref, tiny_artifacts, threads=1) as f:
        assert (_top1(q, enc) == _top1(f, enc)).mean() >= MIN_AGREEMENT


def test_fused_graph_has_fused_ops_and_matches_torch(tiny_artifacts, enc):
    """Count the fused ops in the graph itself and run it against PyTorch (batch 1 and padded
    batches), rather than re-reading what the build recorded."""
    path = tiny_artifacts / "onnx" / "fp32-fused.onnx"
    counts = op_counts(path)
    # the optimizer's SkipLayerNormalization written back as Add + LayerNormalization (its CPU
    # kernel is slow), and the session does not fuse it back
    assert counts.get("Attention") == 2 and counts.get("LayerNormalization") == 4
    assert "SkipLayerNormalization" not in counts
    ran = session_op_counts(path)
    assert ran.get("LayerNormalization") == 4 and "SkipLayerNormalization" not in ran
    assert "MatMul" not in counts or counts["MatMul"] < 12  # Q/K/V were folded into Attention
    with make_runner("ort", "fp32-fused", tiny_artifacts, threads=1) as f, \
            make_runner("torch", "fp32", tiny_artifacts, threads=1) as t:
        for plan in ([[i] for i in range(16)], batches(len(enc), 32)):
            a = np.concatenate([f.infer(enc.batch(b, f.input_names)) for b in plan])
            r = np.concatenate([t.infer(enc.batch(b, t.input_names)) for b in plan])
            assert (a.argmax(-1) == r.argmax(-1)).all()
            assert np.abs(a - r).max() < 2e-3
