"""Each step's key holds a fingerprint of the code that builds it (common.codehash): comments and
docstrings do not count, a change to a module a step uses rebuilds that step and not the others,
and a recipe edited inside the manifest is caught."""

import json
import textwrap

import pytest

from common.codehash import code_fingerprint, code_modules, normalised


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
    assert code_fingerprint(steps.onnx_step) == code_fingerprint(steps.onnx_step)
    assert code_fingerprint(steps.onnx_step) != code_fingerprint(steps.baseline_step)


def test_changed_code_rebuilds_what_it_affects(tiny_artifacts, tiny_model_dir, data_dir, tmp_path,
                                               monkeypatch):
    """A change to export/onnx_export.py marks the ONNX export (and what is made from it) stale,
    with that reason; the baseline stays up to date."""
    import shutil

    import common.codehash as ch
    from engines.pipeline import plan_all
    from tests.conftest import tiny_build_config

    changed = tmp_path / "export" / "onnx_export.py"
    changed.parent.mkdir()
    shutil.copy(ch.ROOT / "export" / "onnx_export.py", changed)
    changed.write_text(changed.read_text() + "\n\nCHANGED = 1\n")
    real = ch._module_file
    monkeypatch.setattr(ch, "_module_file",
                        lambda name: changed if name == "export.onnx_export" else real(name))
    ch._closure.cache_clear()
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
        "its manifest entry was edited (the stored recipe does not match its key)")
