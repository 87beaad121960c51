"""The variant registry (common/variants.py): everything about a variant is derived from its one
declaration. A toy variant registered here, with its build handler and no other file changed, is
built by `make engines`, skipped with a reason where it cannot run, scored, compared and listed."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import variants


@dataclass(frozen=True)
class ToyConfig:
    copies: int = 1


@pytest.fixture
def toy(monkeypatch):
    """Two toy variants on one artifact (a copy of the FP32 graph, made by its own step): one the
    ort runner scores anywhere, one that needs a GPU."""
    from engines import steps
    from engines.pipeline import Step, fixed

    def toy_step(b):
        def build(tmp: Path):
            shutil.copy(b.path("onnx-fp32"), tmp)
            return {"toy": True}
        return Step("onnx-toy", fixed("onnx/toy.onnx"), ToyConfig(), ("onnx-fp32",), dict, build)

    added = [variants.register(variants.Variant("ort", "toy", "onnx-toy", "a copy of the FP32 graph",
                                                variants.FP32, speedup=variants.LISTED,
                                                serve=("triton", "ngc"))),
             variants.register(variants.Variant("torch", "toy-gpu", "onnx-toy", "a GPU-only toy",
                                                variants.FP32, device="cuda", gpu_row=True))]
    monkeypatch.setitem(steps.STEP_FACTORIES, "dynamic", [*steps.STEP_FACTORIES["dynamic"], toy_step])
    yield added
    for v in added:
        variants.unregister(v.key)


def test_toy_variant_is_built_skipped_scored_and_listed(toy, tiny_artifacts, tiny_model_dir,
                                                        data_dir, tmp_path, capsys):
    from engines.pipeline import build_all
    from evaluate.__main__ import main, parser
    from evaluate.gpu_check import plan
    from tests.conftest import tiny_build_config

    arts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, arts)
    b = build_all(tiny_build_config(tiny_model_dir, data_dir, arts,
                                    stages=("baseline", "onnx", "dynamic")))
    assert b.built == ["onnx-toy"]  # everything else was up to date
    assert json.loads((arts / "manifest.json").read_text())["onnx-toy"]["toy"] is True

    out = tmp_path / "reports"
    assert main(["--all", "--data", str(data_dir), "--artifacts", str(arts), "--out", str(out),
                 "--threads", "1", "--limit", "16", "--latency-samples", "4"]) == 0
    c = json.loads((out / "comparison.json").read_text())
    assert ("ort", "toy") in {(r["backend"], r["variant"]) for r in c["rows"]}
    missing = {(m["backend"], m["variant"]): m["reason"] for m in c["missing"]}
    assert missing[("torch", "toy-gpu")].startswith("runs on a CUDA GPU only")  # no library needed
    # derived lists: GPU rows, speed-up list, servable lists, README table, CLI help
    from common.manifest import Manifest

    assert "torch/toy-gpu" in [v.key for v, _ in plan("cuda", Manifest(arts))]
    assert "toy" in variants.speedup_variants("ort")
    assert "ort/toy" in [v.key for v in variants.servable("ngc")]
    assert "| `ort/toy` | a copy of the FP32 graph |" in variants.variants_table()
    assert "ort/toy" in parser().format_help()


def test_every_variant_has_a_step(tiny_artifacts, tiny_model_dir, data_dir):
    """Each registered variant's artifact is made by a registered step, and every source a
    TensorRT engine names is one too."""
    from engines.pipeline import Builder, steps_for
    from tests.conftest import tiny_build_config

    b = Builder(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts))
    made = {s.name for s in steps_for(b)}
    for v in variants.variants():
        assert v.artifact in made, v.key
        if v.backend == "trt":
            assert v.param("source") in made, v.key


def test_variant_facts_are_read_from_the_registry():
    """The lists and references other modules once restated are the registry's, and a fact of
    the wrong kind is refused when a variant is declared."""
    from deploy.ort_runner import provider_options
    from evaluate import op_profile, saturation
    from evaluate.speedup import SpeedupConfig

    assert op_profile.OpProfileConfig().variants == ("fp32-fused", "dynamic-fused", "ptq-fused")
    assert saturation.SaturationConfig().variants == ("dynamic-fused", "ptq", "ptq-fused", "qat")
    assert SpeedupConfig().variants == variants.speedup_variants("ort")
    assert SpeedupConfig().variants[0] == "fp32-fused"  # the reference first
    assert variants.fp32_references("ort") == (("ort", "fp32"), ("ort", "fp32-fused"))
    assert variants.fp32_references("qlora") == (("torch", "fp32"),)
    assert [v.variant for v in variants.listed("seed-reference")] == ["fp32", "ptq", "ptq-fused"]
    fp32 = {v.key for v in variants.variants() if v.precision is variants.FP32}
    assert {"ort/fp32", "ort/student-fused", "torch/student", "trt/fp32"} <= fp32
    assert not {"ort/ptq", "ort/qat", "trt/fp16", "qlora/nf4"} & fp32
    # CUDA keeps FP32 graphs in FP32 (TF32 off), by the registry's precision, not the name
    assert provider_options("cuda", "student-fused") == {"use_tf32": "0"}
    assert provider_options("cuda", "student-ptq-fused") == {}
    with pytest.raises(ValueError, match="precision is a Precision"):
        variants.Variant("ort", "bad", "onnx-fp32", "x", "fp32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision is a Precision"):
        variants.Variant("ort", "bad", "onnx-fp32", "x", variants.FP32,
                         speedup="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lists are among"):
        variants.Variant("ort", "bad", "onnx-fp32", "x", variants.FP32, lists=("nope",))


def test_variant_names_and_their_errors():
    assert variants.find_variant("", "ort/ptq").key == "ort/ptq"
    assert variants.find_variant("ort", "ptq") is variants.find_variant("", "ort/ptq")
    with pytest.raises(variants.UnknownVariant, match="unknown variant ort/nope; known: .*ort/ptq"):
        variants.find_variant("ort", "nope")
    with pytest.raises(variants.UnknownVariant, match="disagree"):
        variants.find_variant("torch", "ort/ptq")
    with pytest.raises(ValueError, match="registered twice"):
        variants.register(variants.find_variant("ort", "ptq"))


def test_cli_takes_backend_slash_variant(tiny_artifacts, data_dir, tmp_path, capsys):
    from evaluate.__main__ import main, parse

    cfg, _ = parse(["--variant", "ort/ptq"])
    assert (cfg.backend, cfg.variant) == ("ort", "ptq")
    cfg, _ = parse(["--backend", "ort", "--variant", "ptq"])
    assert (cfg.backend, cfg.variant) == ("ort", "ptq")
    assert main(["--variant", "ort/nope"]) == 2
    assert "unknown variant ort/nope" in capsys.readouterr().err
    assert main(["--backend", "ort", "--variant", "ptq", "--limit", "-5"]) == 2
    assert "--limit must be >= 0" in capsys.readouterr().err
