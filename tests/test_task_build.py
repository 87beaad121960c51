"""Every stage follows the task, on data that is not emotion's six labels: a CSV task with three
string labels and renamed columns, a text-pair task (JSON Lines, two labels) through every CPU
stage, the scores, the Hugging Face folders and a real Triton server, and a 77-label task whose
reports stay readable. Tiny random models (no downloads); tasks made from the shared data slice."""

import csv
import json

import numpy as np
import pytest

from common.manifest import Manifest
from common.task import TaskSpec, task_of
from tests.conftest import tiny_build_config

# emotion ids 0 sadness, 1 joy, 2 love, 3 anger, 4 fear, 5 surprise, grouped into three
MOODS = {0: "negative", 1: "positive", 2: "positive", 3: "negative", 4: "negative", 5: "surprise"}
NAMES = ("sadness", "joy", "love", "anger", "fear", "surprise")


def rows(data_dir, split):
    return [json.loads(x) for x in (data_dir / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def csv_task(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("moods")
    for split in ("train", "validation", "test"):
        with open(d / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "sentence", "mood"])
            w.writerows([i, r["text"], MOODS[r["label"]]] for i, r in enumerate(rows(data_dir, split)))
    return d


def pair_rows(data_dir, split):
    """(text, an emotion's name) -> yes when it is the text's emotion: each text once with its
    own emotion and once with another, so the two labels are balanced."""
    out = []
    for i, r in enumerate(rows(data_dir, split)):
        other = (r["label"] + 1 + i % 5) % 6
        out += [{"text": r["text"], "emotion": NAMES[r["label"]], "answer": "yes"},
                {"text": r["text"], "emotion": NAMES[other], "answer": "no"}]
    return out


@pytest.fixture(scope="module")
def pair_task(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    for split in ("train", "validation", "test"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                  for r in pair_rows(data_dir, split)))
    return d


def build(tmp_path_factory, data_dir, name, task, num_labels, stages):
    from engines.pipeline import build_all
    from tests.tiny_models import build_tiny

    root = tmp_path_factory.mktemp(name)  # the model beside the artifacts: root/model, root/art
    model = build_tiny("bert", data_dir, root / "model", num_labels=num_labels)
    art = root / "art"
    build_all(tiny_build_config(model, data_dir, art, task=task, stages=stages))
    return art


@pytest.fixture(scope="module")
def csv_artifacts(csv_task, data_dir, tmp_path_factory):
    task = TaskSpec(data=str(csv_task), text_column="sentence", label_column="mood")
    return build(tmp_path_factory, data_dir, "moods", task, 3,
                 ("task", "baseline", "onnx", "dynamic", "calibration", "ptq", "hf"))


@pytest.fixture(scope="module")
def pair_artifacts(pair_task, data_dir, tmp_path_factory):
    task = TaskSpec(data=str(pair_task), text_pair_column="emotion", label_column="answer")
    return build(tmp_path_factory, data_dir, "pairs", task, 2,
                 ("task", "baseline", "onnx", "dynamic", "calibration", "ptq", "qat", "qlora",
                  "hf"))


def score(art, variant, out, *extra):
    from evaluate.__main__ import main as evaluate_main

    assert evaluate_main(["--variant", variant, "--artifacts", str(art), "--out", str(out),
                          "--threads", "1", "--latency-samples", "10", *extra]) == 0
    return json.loads((out / f"{variant.replace('/', '-')}.json").read_text())


def test_csv_task_with_string_labels_through_every_stage(csv_artifacts, tmp_path):
    names = ["negative", "positive", "surprise"]  # sorted distinct training labels
    man = Manifest(csv_artifacts)
    task = task_of(csv_artifacts)
    assert list(task.labels) == names and task.summary()["columns"]["text"] == "sentence"
    for name in ("baseline", "onnx-fp32", "onnx-ptq", "onnx-ptq-fused", "calibration"):
        recorded = man.get(name)["task"]  # every artifact says what it was made for
        assert recorded["labels"] == names and recorded["splits"]["test"]["rows"] == 160
        assert recorded["splits"]["train"]["label_counts"]["negative"] > 0
    cfg = json.loads((csv_artifacts / "baseline" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive", "2": "surprise"}
    hf = json.loads((csv_artifacts / "hf" / "ptq-fused" / "config.json").read_text())
    assert hf["id2label"] == cfg["id2label"]
    card = (csv_artifacts / "hf" / "ptq-fused" / "README.md").read_text()
    assert "3-way classifier of texts (`sentence`) into negative, positive, surprise" in card
    assert "label column `mood`" in card and "train 320 / validation 160 / test 160" in card
    for variant in ("ort/fp32", "ort/ptq", "ort/dynamic-fused"):
        r = score(csv_artifacts, variant, tmp_path)
        assert list(r["per_class"]) == names and r["task"]["labels"] == names
        assert np.array(r["confusion_matrix"]).shape == (3, 3)
        assert r["rows"] == {"scored": 160, "split_rows": 160, "slice": False}
        md = (tmp_path / f"{variant.replace('/', '-')}.md").read_text()
        assert "| negative |" in md and "`sentence`" in md and "label `mood`" in md


def test_task_change_rebuilds_what_is_made_from_it(csv_artifacts, csv_task, data_dir):
    """The same folder declared with the label names in another order is another task: the
    task artifact and everything made from it are rebuilt (the dry run says so)."""
    from engines.pipeline import plan_all

    stages = ("task", "baseline", "onnx", "calibration", "ptq")
    same = TaskSpec(data=str(csv_task), text_column="sentence", label_column="mood")
    model = csv_artifacts.parent / "model"
    plan = plan_all(tiny_build_config(model, data_dir, csv_artifacts, task=same, stages=stages))
    assert set(plan.values()) == {"up to date"}
    other = TaskSpec(data=str(csv_task), text_column="sentence", label_column="mood",
                     labels="surprise,positive,negative")
    plan = plan_all(tiny_build_config(model, data_dir, csv_artifacts, task=other, stages=stages))
    assert plan["task"].startswith("build: recipe field(s) changed: labels")
    assert plan["baseline"] == "build: its input task is rebuilt in this run"
    assert plan["onnx-ptq"].startswith("build:")


def test_pairs_are_encoded_as_pairs_everywhere(pair_artifacts, pair_task):
    from common.checkpoint import TextEncoder

    te = TextEncoder.from_checkpoint(pair_artifacts / "baseline")
    assert te.pair
    enc = te.encode(["i feel fine"], ["joy"])
    # [CLS] i feel fine [SEP] joy [SEP]: the second segment's token type is 1 (BERT uses them)
    ids, types = enc.ids[0].tolist(), enc.type_ids[0].tolist()
    first_sep = ids.index(te.tokenizer.sep_token_id)
    assert ids[0] == te.tokenizer.cls_token_id and ids[-1] == te.tokenizer.sep_token_id
    assert set(types[:first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
    # the calibration set (TensorRT's and ONNX Runtime's) holds pairs too
    man = Manifest(pair_artifacts)
    with np.load(man.verify("calibration")) as z:
        assert (z["token_type_ids"] == 1).any()
    # the exported graph was validated on pairs against PyTorch
    assert man.get("onnx-fp32")["validation"]["top1_agreement"] == 1.0
    from common.feeds import InputError

    with pytest.raises(InputError, match="send `text_pair` beside `text`"):
        te.encode(["i feel fine"])


def test_pair_task_scores_in_every_runner(pair_artifacts, tmp_path):
    for variant in ("ort/fp32", "ort/ptq", "ort/qat", "torch/fp32", "qlora/nf4"):
        r = score(pair_artifacts, variant, tmp_path)
        assert list(r["per_class"]) == ["no", "yes"] and r["task"]["pair"]
        assert r["n_examples"] == 320 and r["task"]["columns"]["text_pair"] == "emotion"
    card = (pair_artifacts / "hf" / "ptq" / "README.md").read_text()
    assert "text pairs (`text`, `emotion`)" in card and '"text_pair"' in card


def test_served_pair_task_answers_with_label_names(pair_artifacts, tmp_path):
    """A real Triton server: a two-text request gets a label name; a request without its
    text_pair, or with one for a single-text model, is refused on its own (400), and the server
    still serves."""
    pytest.importorskip("tritonclient.http", reason="serving needs tritonclient (`serve` group)")
    import urllib.error
    import urllib.request

    from deploy.service import ClassifierService
    from deploy.triton_repo import ServeConfig, write_local_repo
    from deploy.triton_server import TritonServer, free_ports

    def post(url, inputs):
        body = json.dumps({"inputs": [{"name": n, "shape": [len(v), 1], "datatype": "BYTES",
                                       "data": v} for n, v in inputs.items()]}).encode()
        req = urllib.request.Request(f"http://{url}/v2/models/classifier/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    texts, pairs = ["i feel so happy today", "i am scared"], ["joy", "love"]
    svc = ClassifierService(pair_artifacts, "ort", "ptq", threads=1)
    want = svc.predict(texts, pairs)
    svc.close()
    repo = tmp_path / "repo"
    write_local_repo(repo, ServeConfig(variant="ptq", threads=1), pair_artifacts)
    with TritonServer(repo, free_ports(), start_timeout_s=240) as s:
        code, body = post(s.url, {"text": texts, "text_pair": pairs})
        assert code == 200, body
        out = {o["name"]: o["data"] for o in body["outputs"]}
        assert out["label"] == want.labels and set(out["label"]) <= {"yes", "no"}
        assert out["label_id"] == want.label_ids.tolist()
        code, body = post(s.url, {"text": texts})
        assert code == 400 and "text_pair" in body["error"]
        code, body = post(s.url, {"text": texts, "text_pair": pairs[:1]})
        assert code == 400, body
        assert post(s.url, {"text": texts, "text_pair": pairs})[0] == 200


def test_ngc_repository_carries_the_task(pair_artifacts, csv_artifacts, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="writing Triton configs needs tritonclient")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    from deploy.ngc_repo import write_ngc_repo
    from deploy.triton_repo import ServeConfig

    def parse(path):
        return text_format.Parse(path.read_text(), pb.ModelConfig())

    for art, pair, labels in ((pair_artifacts, True, ["no", "yes"]),
                              (csv_artifacts, False, ["negative", "positive", "surprise"])):
        repo = tmp_path / ("pair" if pair else "single")
        write_ngc_repo(repo, art, ServeConfig(variant="ptq"), gpu=False)
        ens = parse(repo / "classifier" / "config.pbtxt")
        assert [i.name for i in ens.input] == (["text", "text_pair"] if pair else ["text"])
        assert [list(o.dims) for o in ens.output if o.name == "probs"] == [[len(labels)]]
        tok = parse(repo / "tokenizer" / "config.pbtxt")
        assert [i.name for i in tok.input] == [i.name for i in ens.input]
        assert json.loads((repo / "tokenizer" / "1" / "settings.json").read_text())["pair"] is pair
        assert json.loads((repo / "postprocess" / "1" / "labels.json").read_text()) == labels


def test_triton_tokenizer_truncates_pairs_as_the_evaluator(pair_artifacts):
    """deploy/triton_tokenizer.py (the `tokenizers` library only) and common.feeds.encode give
    the same ids for pairs, over-long ones included (longest_first keeps both texts)."""
    from tokenizers import Tokenizer

    from common.feeds import encode
    from common.modelsource import load_tokenizer
    from deploy.triton_tokenizer import encode_rows

    base = pair_artifacts / "baseline"
    hf = load_tokenizer(base)
    raw = Tokenizer.from_file(str(base / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    texts = ["i feel " + "very " * 40 + "happy", "short one", "i am " + "so " * 30 + "tired"]
    pairs = ["joy", "it is " + "really " * 50 + "sad", "fear " * 20]
    a = encode(hf, texts, 24, pairs)
    b = encode_rows(raw, texts, 24, hf.pad_token_id, pairs)
    assert a.truncated == b.truncated == 3
    for x, y, types in zip(a.ids, b.ids, a.type_ids, strict=True):
        assert x.tolist() == y.tolist() and len(x) == 24
        assert (types == 1).sum() >= 2  # the second text kept some of its tokens


def test_seventy_seven_labels_reports_stay_readable(data_dir, tmp_path_factory, tmp_path):
    from evaluate.compare import write_comparison

    d = tmp_path_factory.mktemp("intents")
    names = [f"intent_{i:02d}" for i in range(77)]
    for split in ("train", "validation", "test"):
        (d / f"{split}.jsonl").write_text("".join(
            json.dumps({"text": r["text"], "label": names[(i + 3 * r["label"]) % 77]}) + "\n"
            for i, r in enumerate(rows(data_dir, split) + rows(data_dir, split))))
    art = build(tmp_path_factory, data_dir, "intents", TaskSpec(data=str(d)), 77,
                ("task", "baseline", "onnx"))
    r = score(art, "ort/fp32", tmp_path)
    assert len(r["per_class"]) == 77 and np.array(r["confusion_matrix"]).shape == (77, 77)
    md = (tmp_path / "ort-fp32.md").read_text()
    assert "## The 10 classes with the lowest F1 (of 77" in md
    assert "## The 10 most-confused pairs" in md and "| true | predicted | rows |" in md
    # 10 class rows, 10 pair rows of two names each; no 77-column matrix
    assert md.count("| intent_") == 10 + 2 * 10 and "## Confusion matrix" not in md
    assert (tmp_path / "ort-fp32-confusion.png").stat().st_size > 0
    score(art, "torch/fp32", tmp_path)
    paths = write_comparison(tmp_path, [], artifacts=art)
    cmp = (tmp_path / "comparison.md").read_text()
    header = next(x for x in cmp.splitlines() if x.startswith("| variant | backend | intent_"))
    assert header.count("intent_") == 12 and "of 77 classes whose F1 changes most" in cmp
    assert paths["per_class"].stat().st_size > 0
    assert len(json.loads(paths["json"].read_text())["rows"][0]["per_class_f1"]) == 77
