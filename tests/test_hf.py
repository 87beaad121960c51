"""Hugging Face ecosystem: every built ONNX Runtime variant as a folder optimum's
ORTModelForSequenceClassification and a transformers pipeline load (the real libraries), giving
the OrtRunner's predictions; model cards whose numbers are the report's; Optimum's own exporter
and quantizers as reference rows."""

import json
import re

import numpy as np
import pytest
import yaml

from common.manifest import Manifest
from common.task import load_split
from common.variants import hf_folders

pytestmark = pytest.mark.filterwarnings("ignore")


def pipeline_labels(folder, texts):
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(folder)
    if (folder / "model.onnx").is_file():
        from optimum.onnxruntime import ORTModelForSequenceClassification

        model = ORTModelForSequenceClassification.from_pretrained(folder)
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder)
    clf = pipeline("text-classification", model=model, tokenizer=tok, truncation=True)
    return [r["label"] for r in clf(list(texts), batch_size=1)]


@pytest.mark.parametrize("variant", [v for v, _ in hf_folders()])
def test_folder_loads_in_optimum_and_pipeline_like_the_runner(tiny_artifacts, data_dir, variant):
    spec = dict(hf_folders())[variant]
    from common.task import task_of
    from deploy.service import ClassifierService

    labels = task_of(tiny_artifacts).labels

    folder = tiny_artifacts / "hf" / variant
    assert Manifest(tiny_artifacts).built(f"hf-{variant}")
    texts = load_split(data_dir, "test").texts  # 160 sentences (the whole test slice)
    got = pipeline_labels(folder, texts)
    backend, v = spec.backend, spec.variant
    svc = ClassifierService(tiny_artifacts, backend, v, threads=1)
    try:
        want = [name for t in texts for name in svc.predict([t]).labels]
    finally:
        svc.close()
    assert got == want  # 100% top-1 agreement, labels by name from config.json's id2label
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["id2label"] == {str(i): n for i, n in enumerate(labels)}
    assert (folder / "README.md").is_file()
    if variant in {"ptq", "qat", "dynamic", "ptq-s8", "qat-s8", "dynamic-fused",
                   "optimum-dynamic", "optimum-static"}:
        assert "quantization" in json.loads((folder / "ort_config.json").read_text())


def card_front_matter(path) -> dict:
    text = path.read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert m, text[:200]
    return yaml.safe_load(m.group(1))


def test_card_numbers_are_the_report_numbers(tiny_artifacts, tiny_model_dir, data_dir, tmp_path):
    import shutil

    from engines.pipeline import build_all
    from evaluate.__main__ import main as evaluate_main
    from tests.conftest import tiny_build_config

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    reports = tmp_path / "reports"
    before = card_front_matter(art / "hf" / "ptq" / "README.md")
    assert "model-index" not in before  # not scored yet: the card says so
    assert "make report" in (art / "hf" / "ptq" / "README.md").read_text()
    assert evaluate_main(["--backend", "ort", "--variant", "ptq", "--data", str(data_dir),
                          "--artifacts", str(art), "--out", str(reports), "--threads", "1",
                          "--latency-samples", "10"]) == 0
    b = build_all(tiny_build_config(tiny_model_dir, data_dir, art, stages=("hf",),
                                    reports=str(reports)))
    assert b.built == ["hf-ptq"]  # only the card whose report changed
    report = json.loads((reports / "ort-ptq.json").read_text())
    card = card_front_matter(art / "hf" / "ptq" / "README.md")
    metrics = {m["type"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert metrics["f1"] == round(report["macro_f1"], 4)
    assert metrics["accuracy"] == round(report["accuracy"], 4)
    # a local folder is no Hub dataset: the card names it in its text, not in `datasets`
    assert card["pipeline_tag"] == "text-classification" and "datasets" not in card
    assert card["model-index"][0]["results"][0]["dataset"]["name"] == data_dir.name
    body = (art / "hf" / "ptq" / "README.md").read_text()
    for c, x in report["per_class"].items():
        assert f"| {c} | {x['precision']:.3f} | {x['recall']:.3f} | {x['f1']:.3f} |" in body
    assert f"p50 {report['latency_ms']['p50']:.2f} ms" in body and "make engines" in body
    assert f"{report['size_mb']:.1f} MB" in body
    assert "on the test split (160 rows)" in body and "a slice" not in body
    # a --limit slice is never the split's result: no model-index, and the card says it is one
    assert evaluate_main(["--backend", "ort", "--variant", "ptq", "--limit", "20",
                          "--artifacts", str(art), "--out", str(reports), "--threads", "1",
                          "--latency-samples", "10"]) == 0
    assert build_all(tiny_build_config(tiny_model_dir, data_dir, art, stages=("hf",),
                                       reports=str(reports))).built == ["hf-ptq"]
    card = card_front_matter(art / "hf" / "ptq" / "README.md")
    body = (art / "hf" / "ptq" / "README.md").read_text()
    assert "model-index" not in card
    assert "a slice: the first 20 of the 160 rows of the test split" in body


def test_optimum_reference_rows(tiny_artifacts):
    from common.onnx_graph import op_counts

    man = Manifest(tiny_artifacts)
    ex = man.get("onnx-optimum-fp32")["optimum_exporter"]
    assert ex["max_abs_logit_diff"] < 1e-3 and ex["top1_agreement"] == 1.0  # same graph maths
    dyn = op_counts(tiny_artifacts / "onnx" / "optimum-dynamic.onnx")
    assert "DynamicQuantizeLinear" in dyn or "MatMulInteger" in dyn
    static = op_counts(tiny_artifacts / "onnx" / "optimum-static.onnx")
    assert static.get("QuantizeLinear", 0) + static.get("QLinearMatMul", 0) > 0
    s = man.get("onnx-optimum-static")["optimum"]
    rows = man.get("onnx-ptq")["static"]["calib_rows"]
    assert f"on {rows} validation rows" in s["how"]
    # the same evaluator scores them
    from deploy.factories import make_runner

    with make_runner("ort", "optimum-static", tiny_artifacts, threads=1) as r:
        x = {n: np.ones((2, 8), np.int64) for n in r.input_names}
        assert np.isfinite(r.infer(x)).all()


@pytest.mark.parametrize("name", ["baseline", "ptq-fused"])
def test_card_follows_hub_conventions_and_its_snippet_runs(tiny_artifacts, name, capsys):
    """Hub metadata (language, datasets, metrics, base_model), intended use and limitations, and
    a usage snippet that runs as written once `path` names the folder."""
    folder = tiny_artifacts / "hf" / name
    card = card_front_matter(folder / "README.md")
    assert card["language"] == ["en"] and "datasets" not in card
    assert card["metrics"] == ["f1", "accuracy"] and card["base_model"]
    assert ("onnx" in card["tags"]) is (name != "baseline")
    body = (folder / "README.md").read_text()
    assert "## Intended use and limitations" in body and "Kept FP32: ." not in body
    if name == "ptq-fused":
        assert "QAttention" in body
        assert "Attention" in json.loads((folder / "ort_config.json").read_text())[
            "quantization"]["operators_to_quantize"]
    code = re.search(r"```python\n(.*?)```", body, flags=re.S).group(1)
    assert 'path = "artifacts/hf/' in code
    code = re.sub(r'path = "[^"]+"', f"path = {str(folder)!r}", code)
    exec(compile(code, "card-snippet", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"'label': '(sadness|joy|love|anger|fear|surprise)'", out), out
