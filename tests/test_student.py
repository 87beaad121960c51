"""The student (train/student.py, engines/student.py): which layers it keeps, that it starts as an
exact copy of those layers of every encoder family, that distillation lowers its loss, and that
the build takes it through the same later steps as the baseline (validated export, fused graph,
static INT8, TensorRT's S8 graph, registry rows that the evaluator scores)."""

import json

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.manifest import Manifest
from common.onnx_graph import op_counts
from tests.tiny_models import FAMILIES, build_tiny
from train.student import StudentConfig, kept_layers, shallow_copy


def test_layer_choice():
    assert kept_layers("every-other", 6) == [1, 3, 5]  # the top layer always kept
    assert kept_layers("every-other", 12) == [1, 3, 5, 7, 9, 11]
    assert kept_layers("every-other", 2) == [1] and kept_layers("every-other", 5) == [0, 2, 4]
    assert kept_layers("5,0,2", 6) == [0, 2, 5]
    with pytest.raises(ConfigError, match="layers 0..5"):
        kept_layers("1,6", 6)
    with pytest.raises(ConfigError, match="keeps every layer"):
        kept_layers("0,1", 2)
    for bad in ("", "1,1", "-1", "a,b"):
        with pytest.raises(ConfigError):
            StudentConfig(layers=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_is_the_kept_layers_of_every_family(family, data_dir, tmp_path, monkeypatch):
    """The copy holds exactly the kept layers' weights (the embeddings and head unchanged),
    found through the family spec, and round-trips through save_pretrained."""
    from transformers import AutoModelForSequenceClassification

    from common.arch import layer_stack
    from tests import tiny_models

    monkeypatch.setitem(tiny_models.SIZES, "layers", 4)
    src = build_tiny(family, data_dir, tmp_path / "model")
    full = AutoModelForSequenceClassification.from_pretrained(src).eval()
    ref = {k: v.clone() for k, v in full.state_dict().items()}
    layers = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in layer_stack(full)]
    student = shallow_copy(AutoModelForSequenceClassification.from_pretrained(src).eval(), [1, 3])
    assert len(layer_stack(student)) == 2 and student.config.num_hidden_layers == 2
    for mine, theirs in zip(layer_stack(student), (layers[1], layers[3]), strict=True):
        assert all(torch.equal(v, theirs[k]) for k, v in mine.state_dict().items())
    stack = f"{student.base_model_prefix}."
    outside = {k: v for k, v in student.state_dict().items() if ".layer." not in k}
    assert outside and all(torch.equal(v, ref[k]) for k, v in outside.items()), stack
    student.save_pretrained(tmp_path / "student")
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert len(layer_stack(back)) == 2
    x = {"input_ids": torch.tensor([[2, 10, 11, 12, 3]]),
         "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.inference_mode():
        assert torch.allclose(back(**x).logits, student(**x).logits, atol=1e-6)


def test_distillation_lowers_the_loss(tiny_artifacts, data_dir):
    """Steps of the student's loss (soft targets from the teacher's cached logits + labels) on a
    fixed batch bring it down."""
    from transformers import AutoModelForSequenceClassification

    from common.checkpoint import TextEncoder
    from common.task import task_of
    from train.loop import adamw, train_step
    from train.student import read_teacher

    man = Manifest(tiny_artifacts)
    train = task_of(tiny_artifacts).split("train")
    teacher = torch.from_numpy(read_teacher(man.verify("teacher-logits"), train.fingerprint, 32))
    te = TextEncoder.from_checkpoint(man.verify("baseline"))
    torch.manual_seed(0)
    model = shallow_copy(AutoModelForSequenceClassification.from_pretrained(
        man.verify("baseline")), [1])
    feed = te.encode_split(train.head(32)).batch(list(range(32)), te.input_names)
    y = torch.tensor(train.labels[:32])
    opt = adamw(model.parameters(), 5e-3, "cpu")

    class NoSchedule:
        def step(self):
            pass

    losses = [train_step(model, feed, y, "cpu", opt, NoSchedule(), list(model.parameters()),
                         "t", teacher=(teacher, 0.5, 2.0)) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0] and min(losses[-5:]) < min(losses[:5]), losses


def test_student_goes_through_the_same_steps(tiny_artifacts, tmp_path):
    from common.task import task_of
    from evaluate.__main__ import main as evaluate_main

    man = Manifest(tiny_artifacts)
    e = man.get("student")
    recipe = json.loads((tiny_artifacts / "student" / "recipe.json").read_text())
    assert e["layers_kept"] == recipe["layers_kept"] == [1] and recipe["baseline_layers"] == 2
    assert recipe["class_weights"] == "sqrt-inverse" and recipe["task"]["labels"]
    assert set(e["inputs"]) == {"artifact:baseline", "artifact:teacher-logits", "artifact:task",
                                "code"}
    with np.load(man.verify("teacher-logits")) as z:
        assert z["train"].shape == (len(task_of(tiny_artifacts).split("train")), 6)
    # the student's export was validated against the student in PyTorch
    assert man.get("onnx-student")["validation"]["top1_agreement"] == 1.0
    assert man.get("onnx-student-fused")["validation"]["top1_agreement"] == 1.0
    assert man.get("onnx-student-ptq-fused")["agreement_vs_fp32"]["n"] > 0
    # half the layers: half the fused attention nodes and layer MatMuls of the baseline's graphs
    base, stud = (op_counts(tiny_artifacts / "onnx" / f) for f in ("fp32-fused.onnx",
                                                                  "student-fused.onnx"))
    assert stud["Attention"] == base["Attention"] // 2 == 1
    assert op_counts(tiny_artifacts / "onnx" / "student-ptq-fused.onnx").get("QAttention") == 1
    s8 = op_counts(tiny_artifacts / "onnx" / "student-ptq-s8.onnx")
    assert s8.get("QuantizeLinear", 0) > 0
    # the registry's rows are scored by the evaluator like every other variant
    for variant in ("torch/student", "ort/student-fp32", "ort/student-ptq-fused"):
        assert evaluate_main(["--variant", variant, "--artifacts", str(tiny_artifacts), "--out",
                              str(tmp_path), "--threads", "1", "--latency-samples", "5",
                              "--limit", "24"]) == 0
    r = json.loads((tmp_path / "ort-student-ptq-fused.json").read_text())
    assert r["made_by"]["artifact"] == "onnx-student-ptq-fused" and r["n_examples"] == 24
    # its Hugging Face folder carries the student's config, not the baseline's
    cfg = json.loads((tiny_artifacts / "hf" / "student-ptq-fused" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1
    card = (tiny_artifacts / "hf" / "student" / "README.md").read_text()
    assert "A student: 1 of the fine-tuned baseline's 2 encoder layers (kept: 1)" in card


def test_registry_declares_the_student_rows():
    from common.variants import find_variant, speedup_variants

    for key in ("torch/student", "ort/student-fp32", "ort/student-fused",
                "ort/student-ptq-fused", "ort/student-ptq-s8", "trt/student-fp16",
                "trt/student-ptq", "torch/student-fp16-graphs"):
        v = find_variant("", key)
        assert v.backend == "torch" or v.checkpoint == "student", key
    assert {"student-fp32", "student-fused", "student-ptq-fused"} <= set(speedup_variants("ort"))
    assert find_variant("trt", "student-ptq").param("source") == "onnx-student-ptq-s8"
