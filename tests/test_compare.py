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
              "--threads", "1", "--batch-size", "16", "--latency-samples", "20"]
    for backend, variant in [("torch", "fp32"), ("ort", "fp32"), ("ort", "dynamic")]:
        assert evaluate_main(["--backend", backend, "--variant", variant, *common]) == 0
    return out


def test_comparison_ratios_missing_rows_and_plots(reports, tiny_artifacts, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(reports, out)
    # a report measured elsewhere (another device): no ratio may be formed with it
    r = json.loads((out / "ort-dynamic.json").read_text())
    r["device"] = {**r["device"], "name": "Some Other CPU"}
    (out / "ort-dynamic.json").write_text(json.dumps(r))
    assert evaluate_main(["--compare", "--out", str(out), "--artifacts", str(tiny_artifacts)]) == 0
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
    from evaluate.compare import FIGURES

    # no interleaved speed-up here: the headline says so in place of points (drawn in test_speedup)
    assert (out / FIGURES["headline"]).is_file()
    assert (out / FIGURES["per_class"]).stat().st_size > 5000


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
                        str(out), "--threads", "1", "--latency-samples", "5",
                        "--limit", "32"])
    assert rc == 0
    c = json.loads((out / "comparison.json").read_text())
    missing = {(m["backend"], m["variant"]): m["reason"] for m in c["missing"]}
    measured = {(r["backend"], r["variant"]) for r in c["rows"]}
    assert {("ort", "ptq"), ("torch", "ptq-dynamic"), ("ort", "qat"), ("qlora", "nf4")} <= measured
    assert missing[("ort", "qat-s8")].startswith("onnx-qat-s8 is not built here")
    from common.trt import tensorrt_status

    if not tensorrt_status()[0]:
        assert missing[("trt", "fp16")].startswith("TensorRT is not usable here")
    assert "## Not measured" in (out / "comparison.md").read_text()


def test_readme_results_block_is_generated(reports, tiny_artifacts, tmp_path):
    import re

    assert evaluate_main(["--compare", "--out", str(reports), "--artifacts", str(tiny_artifacts)]) == 0
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
    assert not any(n.endswith(".npy") for n in published)
    assert {n for n in published if n.endswith(".json")} == {"comparison.json"}
    # the links inside the published comparison resolve next to it
    md = (tmp_path / "docs" / "results" / "comparison.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.(?:md|png))\)", md):
        assert (tmp_path / "docs" / "results" / link).is_file(), link


def test_stale_reports_are_left_out_and_never_published(reports, tiny_artifacts, tmp_path):
    """A report whose artifact hash no longer matches the manifest (altered, or measured on an
    earlier build) is listed as stale with the fix and its numbers are left out; so is one with
    no hash at all; what is published is exactly what the comparison lists, with no path of the
    machine that measured it."""
    out = tmp_path / "r"
    shutil.copytree(reports, out)
    r = json.loads((out / "ort-dynamic.json").read_text())
    r["made_by"]["sha256"] = "0" * 64
    (out / "ort-dynamic.json").write_text(json.dumps(r))
    r = json.loads((out / "torch-fp32.json").read_text())
    del r["made_by"]
    (out / "torch-fp32.json").write_text(json.dumps(r))
    (out / "serve-ort-fp32.json").write_text('{"backend": "ort"')  # truncated
    assert evaluate_main(["--compare", "--out", str(out), "--artifacts", str(tiny_artifacts)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert {(x["backend"], x["variant"]) for x in c["rows"]} == {("ort", "fp32")}
    stale = {s["report"]: s for s in c["stale"]}
    assert "another build of onnx-dynamic" in stale["ort-dynamic.json"]["why"]
    assert "no artifact hash" in stale["torch-fp32.json"]["why"]
    assert "unreadable" in stale["serve-ort-fp32.json"]["why"]
    assert all(s["fix"] == "make report" for s in c["stale"])
    md = (out / "comparison.md").read_text()
    assert "## Stale reports (left out)" in md and "| dynamic | ort |" not in md
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:start (generated) -->\n<!-- results:end -->\n")
    update_readme(readme, out / "comparison.md", tmp_path / "docs" / "results", tiny_artifacts)
    published = {p.name for p in (tmp_path / "docs" / "results").iterdir()}
    assert "ort-dynamic.md" not in published and "ort-fp32.md" in published
    assert "torch-fp32.md" not in published and "build-record.md" in published
    assert "| ort/dynamic |" not in readme.read_text() and "make report" in readme.read_text()
    for p in (tmp_path / "docs" / "results").iterdir():
        text = p.read_text(errors="replace") if p.suffix in {".md", ".json", ".txt"} else ""
        assert str(tiny_artifacts.parent) not in text and str(tmp_path) not in text, p.name


def test_other_rows_and_lost_logits_are_stale(reports, tiny_artifacts, data_dir, tmp_path):
    """A report scored on other test rows (--limit) is not compared with the full-split ones, and a
    report whose logits file is gone or was rewritten by another run is not either."""
    out = tmp_path / "r"
    shutil.copytree(reports, out)
    assert evaluate_main(["--variant", "ort/ptq", "--data", str(data_dir), "--artifacts",
                          str(tiny_artifacts), "--out", str(out), "--threads", "1",
                          "--limit", "40", "--latency-samples", "5"]) == 0
    (out / "ort-dynamic.batched-logits.npy").unlink()
    shutil.copy(out / "ort-ptq.logits.npy", out / "ort-fp32.logits.npy")
    assert evaluate_main(["--compare", "--out", str(out), "--artifacts", str(tiny_artifacts)]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert {(x["backend"], x["variant"]) for x in c["rows"]} == {("torch", "fp32")}
    stale = {s["report"]: s["why"] for s in c["stale"]}
    assert "other rows" in stale["ort-ptq.json"]
    assert "batched_logits file ort-dynamic.batched-logits.npy is missing" in stale["ort-dynamic.json"]
    assert "rewritten" in stale["ort-fp32.json"]


def test_build_record_keeps_the_full_build_behind_later_short_runs(tmp_path):
    """`make report` rebuilds the hf folders; that short run is appended to the record, and the
    published build record still shows the last run of every stage."""
    from types import SimpleNamespace

    from engines.pipeline import STAGES, write_record
    from evaluate.build_record import build_record, markdown

    def run(stages, steps):
        b = SimpleNamespace(root=tmp_path, cfg=SimpleNamespace(stages=stages), background=None,
                            record=[{"step": s, "action": "built", "seconds": 1.0,
                                     "peak_rss_mb": 10.0} for s in steps])
        write_record(b, 90.0)

    run(STAGES, ["baseline", "onnx-fp32"])
    run(("hf",), ["hf-baseline"])
    r = build_record(tmp_path)
    assert r is not None
    assert r["last_full_run"]["steps"][0]["step"] == "baseline"
    assert r["last_run"]["stages"] == ["hf"]
    md = markdown(r)
    assert md.index("run of every stage") < md.index("| baseline | built |") < md.index(
        "## Last `make engines` run\n") < md.index("| hf-baseline | built |")
    for _ in range(30):
        run(("hf",), ["hf-baseline"])
    kept = json.loads((tmp_path / "build-record.json").read_text())["runs"]
    assert len(kept) == 20 and build_record(tmp_path)["last_full_run"] is None
