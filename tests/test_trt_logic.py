"""The TensorRT code paths that need no TensorRT: profiles, cache naming, version gates, the
calibrator's batch iteration, engine identity checks, and the one-line skip in `make engines`.
Real engine tests are in test_trt_engines.py (marked trt)."""

import numpy as np
import pytest

from calibration.trt_calibrator import CalibrationFeeder, cache_name
from common.calibset import CalibrationSet
from common.trt import (
    TrtProfile,
    TrtUnavailable,
    check_engine_identity,
    require_implicit_int8,
    tensorrt_status,
)
from engines.trt_build import TrtConfig


def test_profile_shapes_and_bounds():
    p = TrtProfile(min_batch=1, opt_batch=8, max_batch=32, min_seq=4, opt_seq=64, max_seq=128)
    assert p.shapes() == ((1, 4), (8, 64), (32, 128))
    assert p.admits(1, 4) and p.admits(32, 128) and not p.admits(33, 10) and not p.admits(1, 129)
    with pytest.raises(ValueError):
        TrtProfile(min_batch=4, opt_batch=2)
    with pytest.raises(ValueError):
        TrtConfig(precision="int4")


def test_cache_name_changes_with_every_input():
    base = cache_name("a" * 64, "b" * 64, "10.13.0", 16)
    assert base.startswith("trt-calib-") and base.endswith(".cache")
    others = {cache_name("c" * 64, "b" * 64, "10.13.0", 16), cache_name("a" * 64, "c" * 64, "10.13.0", 16),
              cache_name("a" * 64, "b" * 64, "10.14.1", 16), cache_name("a" * 64, "b" * 64, "10.13.0", 8)}
    assert base not in others and len(others) == 4


def test_implicit_int8_refused_on_trt11_with_the_way_out():
    require_implicit_int8("10.13.0.35")  # allowed
    with pytest.raises(TrtUnavailable, match="removed in TensorRT 11.*--variant ptq"):
        require_implicit_int8("11.0.0")


def test_calibrator_feeder_walks_the_calibration_set(tiny_artifacts):
    from common.manifest import Manifest

    calib = tiny_artifacts / Manifest(tiny_artifacts).get("calibration")["path"]
    cs = CalibrationSet(calib, 8)
    feeder = CalibrationFeeder(calib, 8, ["input_ids", "attention_mask"],
                               {"input_ids": np.dtype(np.int32)})
    seen = []
    while (b := feeder.next()) is not None:
        assert b["input_ids"].dtype == np.int32 and b["attention_mask"].dtype == np.int64
        assert b["input_ids"].shape == feeder.shape
        seen.append(b["input_ids"])
    assert len(seen) == len(cs) == cs.n // 8
    np.testing.assert_array_equal(np.concatenate(seen), cs.arrays["input_ids"][: len(seen) * 8])
    assert feeder.next() is None  # stays exhausted


def test_engine_identity_mismatch_is_refused():
    built = {"tensorrt": "10.13.0", "name": "NVIDIA H100", "compute_capability": "9.0"}
    check_engine_identity(built, dict(built), "x.plan")
    with pytest.raises(TrtUnavailable, match="compute_capability.*make engines"):
        check_engine_identity(built, {**built, "compute_capability": "8.9"}, "x.plan")
    with pytest.raises(TrtUnavailable, match="tensorrt"):
        check_engine_identity(built, {**built, "tensorrt": "11.0.0"}, "x.plan")


def test_make_engines_skips_each_engine_in_one_line(tiny_artifacts, tiny_model_dir, data_dir,
                                                     capsys):
    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is usable here; the skip lines are for machines without it")
    from common.manifest import Manifest
    from engines.pipeline import build_all
    from tests.conftest import tiny_build_config

    build_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts, stages=("trt",)))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[skip]")]
    engines = ["fp32", "fp16", "int8", "ptq", "qat"]
    assert lines == [f"[skip] trt-{v}: TensorRT is not usable here: {why}" for v in engines]
    man = Manifest(tiny_artifacts)
    assert all(man.skipped(f"trt-{v}") == f"TensorRT is not usable here: {why}" for v in engines)


def test_trt_runner_without_tensorrt_says_why(tiny_artifacts):
    ok, _ = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is usable here")
    from deploy.trt_runner import TrtRunner

    r = TrtRunner(tiny_artifacts / "none.plan", ("input_ids",), {}, TrtProfile(), "fp16")
    with pytest.raises(TrtUnavailable, match="needs TensorRT and a CUDA GPU"):
        r.load()
