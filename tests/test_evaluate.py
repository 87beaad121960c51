import json

import numpy as np
import pytest

from common.metrics import classification_metrics, latency_stats
from evaluate.__main__ import main as evaluate_main


def test_metrics_hand_checked():
    y = np.array([0, 0, 1, 1, 2, 3, 4, 5])
    p = np.array([0, 1, 1, 1, 2, 3, 4, 4])
    m = classification_metrics(y, p, ("sadness", "joy", "love", "anger", "fear", "surprise"))
    assert m["accuracy"] == pytest.approx(6 / 8)
    # per class F1: sadness 2/3, joy 0.8, love 1, anger 1, fear 2/3, surprise 0
    assert m["per_class"]["sadness"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["joy"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["surprise"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1 + 1 + 2 / 3 + 0) / 6)
    assert m["confusion_matrix"][0] == [1, 1, 0, 0, 0, 0]
    assert m["confusion_matrix"][5] == [0, 0, 0, 0, 1, 0]
    assert m["per_class"]["joy"]["support"] == 2


def test_macro_f1_averages_over_the_labels_present():
    """A label neither in the rows nor predicted has no F1 to average (a slice of a many-label
    task); one in either counts, its F1 0 when missed. The bootstrap uses the same set."""
    from common.metrics import bootstrap_weights, macro_f1_resampled

    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    m = classification_metrics(y, p, 77)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2) and len(m["per_class"]) == 77
    assert m["per_class"]["76"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    p2 = np.array([0, 1, 1, 5])  # a wrong guess of a label absent from the rows counts (F1 0)
    assert classification_metrics(y, p2, 77)["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    w = np.ones((1, 4))  # the one resample that is the rows themselves
    assert macro_f1_resampled(w, y, p2)[0] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert bootstrap_weights(4, 3).shape == (3, 4)


def test_latency_stats():
    s = latency_stats([0.001] * 99 + [0.101])
    assert s["p50"] == pytest.approx(1.0) and s["n"] == 100 and s["p99"] > 1.0


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_evaluator_writes_reports(tiny_artifacts, data_dir, tmp_path, backend):
    out = tmp_path / "reports"
    rc = evaluate_main(["--backend", backend, "--data", str(data_dir), "--artifacts", str(tiny_artifacts),
                        "--out", str(out), "--threads", "1", "--batch-size", "16",
                        "--latency-samples", "30"])
    assert rc == 0
    r = json.loads((out / f"{backend}-fp32.json").read_text())
    for key in ("backend", "variant", "model", "device", "threads", "n_examples", "accuracy",
                "macro_f1", "per_class", "confusion_matrix", "size_mb", "latency_ms", "throughput",
                "versions"):
        assert key in r, key
    assert r["n_examples"] == 160 and r["threads"] == 1
    assert sum(map(sum, r["confusion_matrix"])) == 160
    assert set(r["latency_ms"]) >= {"p50", "p95", "p99"} and r["latency_ms"]["n"] == 30
    assert r["throughput"]["examples_per_s"] > 0 and r["size_mb"] > 0
    # metrics recomputed from the saved logits and the data agree with the report
    from common.task import load_split

    logits = np.load(out / r["logits_file"])
    y = np.array(load_split(data_dir, "test").labels)
    assert r["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).mean()))
    assert (out / f"{backend}-fp32.md").read_text().count("|") > 50
    assert (out / f"{backend}-fp32-confusion.png").stat().st_size > 1000


def test_evaluator_missing_artifacts_exit_2(tmp_path, data_dir, capsys):
    rc = evaluate_main(["--backend", "ort", "--data", str(data_dir), "--artifacts", str(tmp_path)])
    assert rc == 2
    assert "make engines" in capsys.readouterr().err
