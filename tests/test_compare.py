"""The comparison from a few tiny-model reports: ratios within one device, batch-1 F1 with its
batched twin, paired bootstrap intervals, not-measured rows, and the README's generated block."""

import json
import shutil

import pytest

from evaluate.__main__ import main as evaluate_main
from evaluate.compare import RESULTS_END, RESULTS_START, update_readme


@pytest.fixture(scope="module")
def reports(tiny_artifacts, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    common = ["--data", str(data_dir), "--artifacts", str(tiny_artifacts), "--out", str(out),
              "--threads", "1", "--batch-size", "16", "--latency-samples", "20", "--warmup", "2"]
    for backend, variant in [("torch", "fp32"), ("ort", "fp32"), ("ort", "dynamic")]:
        assert evaluate_main(["--backend", backend, "--variant", variant, *common]) == 0
    return out


def test_comparison_ratios_missing_rows_and_plots(reports, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(reports, out)
    # a report measured elsewhere (another device): no ratio may be formed with it
    r = json.loads((out / "ort-dynamic.json").read_text())
    r["device"] = {**r["device"], "name": "Some Other CPU"}
    (out / "ort-dynamic.json").write_text(json.dumps(r))
    assert evaluate_main(["--compare", "--out", str(out)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    rows = {(x["backend"], x["variant"]): x for x in c["rows"]}
    assert set(rows) == {("torch", "fp32"), ("ort", "fp32"), ("ort", "dynamic")}
    ort_fp32, dyn = rows[("ort", "fp32")], rows[("ort", "dynamic")]
    assert ort_fp32["vs_fp32"]["speedup_batch1"] == pytest.approx(1.0)
    assert ort_fp32["vs_fp32"]["reference"] == "ort-fp32"
    assert "refused" in dyn["vs_fp32"] and "speedup_batch1" not in dyn["vs_fp32"]
    # the torch row is never divided by an ort number
    assert rows[("torch", "fp32")]["vs_fp32"]["reference"] == "torch-fp32"
    assert rows[("torch", "fp32")]["agreement"]["top1_pct"] == 100.0
    assert ort_fp32["agreement"]["top1_pct"] == 100.0 and ort_fp32["agreement"]["max_abs_logit_diff"] < 1e-3
    md = (out / "comparison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant | backend | device"))
    for col in ("macro F1 (b=1)", "macro F1 (batched)", "batch-invariant", "accuracy", "size MB",
                "p50 ms (b=1)", "p95 ms (b=1)", "throughput", "speed-up b=1", "size ratio",
                "delta F1 pt [95% CI]", "top-1 agree %"):
        assert col in header
    # paired bootstrap: the FP32 row against itself is exactly 0 with a zero-width interval
    assert ort_fp32["delta_f1"]["delta"] == 0 and ort_fp32["delta_f1"]["ci95"] == [0.0, 0.0]
    assert ort_fp32["delta_f1"]["distinguishable"] is False
    lo, hi = dyn["delta_f1"]["ci95"]
    assert lo <= dyn["delta_f1"]["delta"] <= hi and dyn["delta_f1"]["resamples"] == 2000
    assert dyn["batch_invariance"]["differ"] >= 0 and "macro_f1" in dyn["batched"]
    for png in ("comparison-confusion.png", "comparison-per-class-f1.png", "comparison-f1-vs-latency.png"):
        assert (out / png).stat().st_size > 5000


def test_all_lists_what_was_not_measured(tiny_artifacts, data_dir, tmp_path):
    import shutil

    # a copy of the artifacts whose manifest lacks one variant: it must be listed as not built
    arts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, arts)
    manifest = json.loads((arts / "manifest.json").read_text())
    del manifest["onnx-qat-s8"]
    (arts / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "all"
    rc = evaluate_main(["--all", "--data", str(data_dir), "--artifacts", str(arts), "--out",
                        str(out), "--threads", "1", "--latency-samples", "5", "--warmup", "1",
                        "--limit", "32"])
    assert rc == 0
    c = json.loads((out / "comparison.json").read_text())
    missing = {(m["backend"], m["variant"]): m["reason"] for m in c["missing"]}
    measured = {(r["backend"], r["variant"]) for r in c["rows"]}
    assert {("ort", "ptq"), ("torch", "ptq-dynamic"), ("ort", "qat"), ("qlora", "nf4")} <= measured
    assert missing[("ort", "qat-s8")].startswith("not built (onnx-qat-s8)")
    from common.trt import tensorrt_status

    if not tensorrt_status()[0]:
        assert missing[("trt", "fp16")].startswith("backend unavailable")
    assert "## Not measured" in (out / "comparison.md").read_text()


def test_readme_results_block_is_generated(reports, tmp_path):
    import re

    assert evaluate_main(["--compare", "--out", str(reports)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n{RESULTS_START}\nold\n{RESULTS_END}\n\n## Methods\n")
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "stale.md").write_text("from an earlier run")
    (tmp_path / "docs" / "results" / "published.txt").write_text("stale.md\n")
    (tmp_path / "docs" / "results" / "baseline-seeds.md").write_text("not published by compare")
    update_readme(readme, reports / "comparison.md", tmp_path / "docs" / "results")
    text = readme.read_text()
    assert "old" not in text and "| ort/dynamic |" in text and text.endswith("## Methods\n")
    # every link of the block resolves inside the committed folder, nothing in reports/
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("docs/results/") and (tmp_path / link).is_file()
                         for link in links)
    published = {p.name for p in (tmp_path / "docs" / "results").iterdir()}
    assert "stale.md" not in published and "comparison.md" in published
    assert "baseline-seeds.md" in published  # not one of compare's: left alone
    assert not any(n.endswith((".npy", ".json")) for n in published)
    # the links inside the published comparison resolve next to it
    md = (tmp_path / "docs" / "results" / "comparison.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.(?:md|png))\)", md):
        assert (tmp_path / "docs" / "results" / link).is_file(), link
