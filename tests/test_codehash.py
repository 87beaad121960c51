"""Each step's key holds a fingerprint of the code that builds it (common.codehash): comments and
docstrings do not count, a change to a module a step uses rebuilds that step and not the others,
and a recipe edited inside the manifest is caught."""

import json
import textwrap

import pytest

from common.codehash import code_fingerprint, code_modules, normalised
from evaluate.__main__ import main as evaluate_main


def edit_module(monkeypatch, tmp_path, module: str) -> None:
    """The fingerprinting reads `module` from an edited copy (one line added), as if its source
    had been changed; the fingerprints' cache is cleared (callers clear it again when done)."""
    import shutil

    import common.codehash as ch

    changed = tmp_path / "edited" / (module.replace(".", "/") + ".py")
    changed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ch._module_file(module), changed)
    changed.write_text(changed.read_text() + "\n\nCHANGED = 1\n")
    real = ch._module_file
    monkeypatch.setattr(ch, "_module_file", lambda name: changed if name == module else real(name))
    ch._closure.cache_clear()


def test_comments_docstrings_and_blank_lines_do_not_count():
    a = textwrap.dedent('''
        def f(x):
            """Doc."""
            # why
            return x + 1  # trailing
        ''')
    b = textwrap.dedent('''
        def f(x):
            """Another doc,
            on two lines."""

            return x + 1
        ''')
    c = a.replace("x + 1", "x + 2")
    assert normalised(a) == normalised(b) != normalised(c)
    assert normalised(a) == "def f(x):\n    return x + 1"


def test_a_step_depends_on_its_own_code_only():
    from engines import steps

    base = code_modules(steps.baseline_step)
    onnx = code_modules(steps.onnx_step)
    qlora = code_modules(steps.qlora_step)
    assert "train.finetune" in base and "export.onnx_export" not in base
    assert "export.onnx_export" in onnx and "train.finetune" not in onnx
    assert "train.qlora" in qlora and "export.onnx_export" not in qlora
    # helpers the step module calls count through their imports (trt steps use engines.trt_build)
    assert "engines.trt_build" in code_modules(steps.trt_steps)
    assert code_fingerprint(steps.onnx_step) != code_fingerprint(steps.baseline_step)


def test_a_fingerprint_is_the_same_in_a_fresh_process_elsewhere(tmp_path):
    """What a key needs: the same code gives the same fingerprint in another process (another
    hash seed) from a checkout at another path, as on another machine; a checkout whose builder
    differs gives another."""
    import shutil
    import subprocess
    import sys

    import common.codehash as ch
    from engines import steps

    copy = tmp_path / "elsewhere"
    for pkg in ch.PROJECT:
        shutil.copytree(ch.ROOT / pkg, copy / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    prog = ("from common.codehash import code_fingerprint\n"
            "from engines import steps\n"
            "print(code_fingerprint(steps.onnx_step), code_fingerprint(steps.fused_step))")

    def there() -> list[str]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy), "PYTHONHASHSEED": "12345",
               "HF_HUB_OFFLINE": "1"}
        out = subprocess.run([sys.executable, "-c", prog], cwd=copy, env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        return out

    assert there() == [code_fingerprint(steps.onnx_step), code_fingerprint(steps.fused_step)]
    f = copy / "export" / "ort_graphs.py"
    f.write_text(f.read_text() + "\n\nCHANGED = 1\n")
    onnx_fp, fused_fp = there()
    assert onnx_fp == code_fingerprint(steps.onnx_step)  # the export does not use ort_graphs
    assert fused_fp != code_fingerprint(steps.fused_step)


def test_changed_code_rebuilds_what_it_affects(tiny_artifacts, tiny_model_dir, data_dir, tmp_path,
                                               monkeypatch):
    """A change to export/onnx_export.py marks the ONNX export (and what is made from it) stale,
    with that reason; the baseline stays up to date."""

    import common.codehash as ch
    from engines.pipeline import plan_all
    from tests.conftest import tiny_build_config

    edit_module(monkeypatch, tmp_path, "export.onnx_export")
    try:
        plan = plan_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts))
    finally:
        ch._closure.cache_clear()
    assert plan["baseline"] == "up to date" and plan["qlora"] == "up to date"
    assert plan["onnx-fp32"] == "build: the code that builds it changed"
    assert plan["onnx-dynamic"] == "build: its input onnx-fp32 is rebuilt in this run"


def test_an_edited_recipe_in_the_manifest_is_refused(tiny_artifacts, tmp_path):
    import shutil

    from common.manifest import ArtifactError, Manifest

    arts = tmp_path / "a"
    shutil.copytree(tiny_artifacts, arts)
    man = json.loads((arts / "manifest.json").read_text())
    man["onnx-fp32"]["recipe"]["fields"]["opset"] = 13
    (arts / "manifest.json").write_text(json.dumps(man))
    m = Manifest(arts)
    with pytest.raises(ArtifactError, match="manifest entry was edited"):
        m.verify("onnx-fp32")
    e = man["onnx-fp32"]
    assert m.why_stale("onnx-fp32", e["recipe"], e["inputs"]) == (
        "its manifest entry was edited (what it records does not match its key)")


def test_a_recorded_recipe_is_checked_where_a_rebuild_reads_it(tiny_artifacts, tiny_model_dir,
                                                               data_dir, tmp_path):
    """ort/ptq's chosen recipe (recorded beside the key, read by ptq-s8, ptq-fused and the
    student's graphs) edited in manifest.json and ptq-s8's file deleted: the build does not
    rebuild ptq-s8 from the edited recipe; it rebuilds onnx-ptq (the search) and all made from
    it, and reading the edited entry is refused."""
    import shutil

    from common.manifest import ArtifactError, Manifest
    from engines.pipeline import plan_all
    from tests.conftest import tiny_build_config

    arts = tmp_path / "a"
    shutil.copytree(tiny_artifacts, arts)
    man = json.loads((arts / "manifest.json").read_text())
    assert "sealed" in man["onnx-ptq"]
    method = man["onnx-ptq"]["static"]["method"]
    man["onnx-ptq"]["static"]["method"] = "percentile" if method != "percentile" else "minmax"
    (arts / "manifest.json").write_text(json.dumps(man))
    (arts / man["onnx-ptq-s8"]["path"]).unlink()
    with pytest.raises(ArtifactError, match="onnx-ptq's manifest entry was edited"):
        Manifest(arts).get("onnx-ptq")
    plan = plan_all(tiny_build_config(tiny_model_dir, data_dir, arts))
    assert plan["onnx-ptq"] == "build: its manifest entry was edited (what it records does not " \
                               "match its key)"
    assert plan["onnx-ptq-s8"] == "build: its input onnx-ptq is rebuilt in this run"
    assert plan["onnx-student-ptq-fused"].startswith("build: its input")
    assert plan["onnx-fp32"] == "up to date"


def test_rewording_or_adding_a_variant_rebuilds_nothing(tiny_artifacts, tiny_model_dir, data_dir,
                                                       tmp_path, monkeypatch):
    """The registry is data: its text edited on disk, a variant reworded and one added in memory,
    `--dry-run` plans exactly what it planned before, plus the new variant's own folder."""
    import dataclasses

    import common.codehash as ch
    from common import variants as reg
    from engines.pipeline import plan_all
    from tests.conftest import tiny_build_config

    cfg = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts)
    before = plan_all(cfg)
    assert before["hf-fp32"] == "up to date" and before["onnx-fp32"] == "up to date"
    edited = tmp_path / "variants.py"
    text = (ch.ROOT / "common" / "variants.py").read_text()
    assert "FP32 ONNX export (plain graph)" in text
    edited.write_text(text.replace("FP32 ONNX export (plain graph)", "the FP32 graph, exported"))
    real = ch._module_file
    monkeypatch.setattr(ch, "_module_file",
                        lambda name: edited if name == "common.variants" else real(name))
    monkeypatch.setitem(reg._REGISTRY, "ort/fp32",
                        dataclasses.replace(reg._REGISTRY["ort/fp32"], about="reworded"))
    reg.register(reg.Variant("ort", "toy-fp32", "onnx-fp32", "a toy", reg.FP32, hf=True))
    ch._closure.cache_clear()
    try:
        after = plan_all(cfg)
    finally:
        reg.unregister("ort/toy-fp32")
        ch._closure.cache_clear()
    assert after.pop("hf-toy-fp32") == "build: not built yet"
    assert after == before


def test_publishing_leaves_out_what_changed_code_would_rebuild(tiny_artifacts, tiny_model_dir,
                                                               data_dir, tmp_path, monkeypatch):
    """Edit the fused graph's builder: `--dry-run` lists the fused graph (and what is made from
    it) for rebuild, and the comparison marks the report of the fused graph stale with that
    reason while the plain graph's report stays current; a model card quotes no score for it."""

    import common.codehash as ch
    from common.manifest import Manifest
    from engines.freshness import code_stale
    from engines.pipeline import Builder, plan_all
    from engines.steps import hf_steps
    from evaluate.compare import load_current
    from tests.conftest import tiny_build_config

    out = tmp_path / "reports"
    common = ["--data", str(data_dir), "--artifacts", str(tiny_artifacts), "--out", str(out),
              "--threads", "1", "--batch-size", "16", "--latency-samples", "5"]
    for variant in ("fp32", "fp32-fused"):
        assert evaluate_main(["--backend", "ort", "--variant", variant, *common]) == 0
    man = Manifest(tiny_artifacts)
    current, stale = load_current(out, man)
    assert {p.name for p, _ in current["variant"]} == {"ort-fp32.json", "ort-fp32-fused.json"}
    assert stale == []

    edit_module(monkeypatch, tmp_path, "export.ort_graphs")
    cfg = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts, reports=str(out))
    try:
        plan = plan_all(cfg)
        code = code_stale(man)
        current, stale = load_current(out, man)
        cards = {s.name: s.sources()["report"] for s in hf_steps(Builder(cfg))}
    finally:
        ch._closure.cache_clear()
    assert plan["onnx-fp32-fused"] == "build: the code that builds it changed"
    assert plan["onnx-fp32"] == "up to date"
    assert code["onnx-fp32-fused"] == "the code that builds it changed since it was built"
    assert code["onnx-ptq-fused"].startswith("it is made from onnx-fp32-fused")
    assert "onnx-fp32" not in code and "baseline" not in code
    # the dry run and the publishing rule agree on every artifact code would remake (hf-fp32's
    # card is remade too, for data: the reports above were written after it, so it has a score
    # to quote now)
    assert plan["hf-fp32"] == "build: input(s) changed: report"
    assert {n for n, v in plan.items() if v.startswith("build") and n != "hf-fp32"} == set(code)
    assert [p.name for p, _ in current["variant"]] == ["ort-fp32.json"]
    assert [s["report"] for s in stale] == ["ort-fp32-fused.json"]
    assert "onnx-fp32-fused would be rebuilt: the code that builds it changed" in stale[0]["why"]
    # the folders' cards: the plain graph's score, none for the graph a build would remake
    assert cards["hf-fp32-fused"] == "none" and cards["hf-fp32"] != "none"
