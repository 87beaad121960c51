import numpy as np
import onnxruntime as ort
import pytest

from common.feeds import encode
from common.manifest import Manifest
from common.modelsource import load_tokenizer
from common.onnx_graph import graph_inputs as onnx_input_names
from common.task import load_split
from common.torch_infer import torch_fn
from export.onnx_export import ExportValidationError, check_agreement, ort_fn


def test_export_is_validated_and_recorded(tiny_artifacts, data_dir):
    """The recorded check, and the graph itself run again against PyTorch on every test row."""
    import torch
    from transformers import AutoModelForSequenceClassification

    e = Manifest(tiny_artifacts).get("onnx-fp32")
    v = e["validation"]
    assert v["top1_agreement"] == 1.0 and v["max_abs_diff"] <= v["atol"] and v["n"] >= 48
    # what it was made from: the baseline, and the code that exported it (common.codehash)
    assert e["inputs"] == {"artifact:baseline": Manifest(tiny_artifacts).get("baseline")["sha256"],
                           "code": e["inputs"]["code"]} and len(e["inputs"]["code"]) == 64
    ckpt = tiny_artifacts / "baseline"
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    enc = encode(load_tokenizer(ckpt), load_split(data_dir, "test").texts, 64)
    path = tiny_artifacts / "onnx" / "fp32.onnx"
    names = onnx_input_names(path)
    for b in ([0], list(range(32)), list(range(40, 160))):  # batch 1, padded batches
        feed = enc.batch(b, names)
        with torch.inference_mode():
            ref = model(**{k: torch.from_numpy(x) for k, x in feed.items()}).logits.numpy()
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            ["logits"], feed)[0]
        assert (got.argmax(-1) == ref.argmax(-1)).all() and np.abs(got - ref).max() < 1e-4


def test_dynamic_batch_and_sequence(tiny_artifacts):
    path = tiny_artifacts / "onnx" / "fp32.onnx"
    names = onnx_input_names(path)
    assert names[:2] == ["input_ids", "attention_mask"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 5), (3, 17), (7, 64)]:
        feed = {n: np.ones((batch, seq), dtype=np.int64) for n in names}
        assert sess.run(["logits"], feed)[0].shape == (batch, 6)


def test_validation_fails_loudly_on_mismatch(tiny_artifacts, data_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    ckpt = tiny_artifacts / "baseline"
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():  # a model that is not the one exported
        model.classifier.bias += torch.tensor([5.0, 0, 0, 0, 0, -5.0])
    enc = encode(load_tokenizer(ckpt), load_split(data_dir, "test").texts[:20], 64)
    path = tiny_artifacts / "onnx" / "fp32.onnx"
    with pytest.raises(ExportValidationError, match="disagrees with PyTorch"):
        check_agreement(torch_fn(model), ort_fn(path), enc, onnx_input_names(path),
                        f"{path}: ONNX Runtime disagrees with PyTorch", 1e-3, 1.0)
