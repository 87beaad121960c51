"""`python -m engines.seeds`: the seed spread of QLoRA and QAT as `make engines` trains them,
scored at batch 1 as deployed, against the FP32 and static-PTQ graphs of the same artifacts."""

import json

from common.manifest import Manifest


def test_seed_spread_of_qlora_and_qat(tiny_artifacts, tiny_model_dir, data_dir, tmp_path, capsys):
    from engines.seeds import main

    common = ["--out", str(tmp_path), "--data", str(data_dir), "--artifacts", str(tiny_artifacts),
              "--model", str(tiny_model_dir), "--limit-train", "64"]
    assert main(["--variant", "qlora", "--seeds", "0,1", *common, "--qlora-max-length", "64"]) == 0
    assert main(["--variant", "qat", "--seeds", "0", *common, "--qat-eval-every", "1"]) == 0
    report = json.loads((tmp_path / "variant-seeds.json").read_text())
    runs = {(r["variant"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == {("qlora", 0), ("qlora", 1), ("qat", 0)}
    assert all(len(r["test_pred"]) == 160 for r in runs.values())
    summary = {s["variant"]: s for s in report["summary"]}
    q = summary["qlora"]
    assert q["seeds"] == [0, 1] and q["test_mean"] == (runs[("qlora", 0)]["test_macro_f1"]
                                                        + runs[("qlora", 1)]["test_macro_f1"]) / 2
    lo, hi = q["vs"]["fp32"]["ci95_pt"]
    assert lo <= q["vs"]["fp32"]["delta_pt"] <= hi
    assert set(report["references"]) >= {"fp32", "ptq-fused", "ptq"}
    md = (tmp_path / "variant-seeds.md").read_text()
    assert "| qlora | default | 0,1 |" in md and "| qat | default | 0 |" in md
    # a run already in the report is not repeated; another recipe under the same name is refused
    capsys.readouterr()
    assert main(["--variant", "qlora", "--seeds", "0", *common, "--qlora-max-length", "64"]) == 0
    assert "in the report already" in capsys.readouterr().out
    assert main(["--variant", "qlora", "--seeds", "0", *common, "--qlora-max-length", "64",
                 "--qlora-lr", "5e-4"]) == 2
    assert "pick another --name" in capsys.readouterr().err


def test_seed_spread_of_the_student(tiny_artifacts, tiny_model_dir, data_dir, tmp_path):
    """A student run is built by the build's own student steps (on the artifacts folder's other
    artifacts) and scored twice: its INT8 fused graph (`student`) and its FP32 graph."""
    from engines.seeds import main

    assert main(["--variant", "student", "--seeds", "3", "--out", str(tmp_path),
                 "--artifacts", str(tiny_artifacts), "--model", str(tiny_model_dir),
                 "--student-epochs", "1"]) == 0
    report = json.loads((tmp_path / "variant-seeds.json").read_text())
    runs = {(r["variant"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == {("student", 3), ("student-fp32", 3)}
    assert runs[("student", 3)]["recipe"]["fields"]["seed"] == 3
    assert {s["variant"] for s in report["summary"]} == {"student", "student-fp32"}
    # the artifacts folder itself is untouched: its student is the build's
    assert Manifest(tiny_artifacts).get("student")["recipe"]["fields"]["seed"] == 42
