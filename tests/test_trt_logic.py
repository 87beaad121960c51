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


class _Flags:
    """Stands in for tensorrt.BuilderFlag / an IBuilderConfig: records what is set."""

    FP16, INT8, TF32 = "FP16", "INT8", "TF32"

    def __init__(self):
        self.on = {"TF32"}  # TensorRT's default

    def set_flag(self, f):
        self.on.add(f)

    def clear_flag(self, f):
        self.on.discard(f)


@pytest.mark.parametrize("precision, version, on, strong", [
    ("fp32", "10.8.0", set(), False),  # TF32 cleared: an fp32 engine computes in FP32
    ("fp16", "10.8.0", {"TF32", "FP16"}, False),
    ("int8-implicit", "10.8.0", {"TF32", "INT8", "FP16"}, False),
    ("int8-explicit", "10.8.0", {"TF32", "INT8", "FP16"}, False),  # unquantized layers may be FP16
    ("int8-explicit", "11.2.0", {"TF32"}, True),  # no such flags in 11: strongly typed
])
def test_builder_flags_per_precision(precision, version, on, strong):
    from types import SimpleNamespace

    from engines.trt_build import configure, strongly_typed

    trt = SimpleNamespace(BuilderFlag=_Flags)
    config = _Flags()
    cfg = TrtConfig(precision=precision)
    info = configure(trt, config, cfg, version)
    assert config.on == on and strongly_typed(cfg, version) == strong
    assert info["unquantized_layers"]
    assert strongly_typed(TrtConfig(precision="int8-explicit", explicit_fp16=False), "10.8.0")


def test_default_profile_admits_the_shortest_text():
    """[CLS] [SEP] is 2 tokens, "hi" 3: the profile must start at 1, as Triton's TensorRT backend
    refuses any shape outside it."""
    p = TrtProfile()
    assert p.min_seq == 1 and p.admits(1, 2) and p.admits(1, 3) and p.admits(64, 128)


class _FakeFeeder:
    def __init__(self, n, fail_at=None):
        self.n, self.i, self.fail_at = n, 0, fail_at
        self.shape = (4, 8)

    def __len__(self):
        return self.n

    def next(self):
        if self.i == self.fail_at:
            raise OSError("disk read failed")
        if self.i >= self.n:
            return None
        self.i += 1
        return {"input_ids": np.full((4, 8), self.i, np.int32)}


def _host(a):
    return a, a.ctypes.data


def test_calibrator_counts_batches_and_keeps_errors():
    from calibration.trt_calibrator import BatchStream, CalibrationIncomplete

    s = BatchStream(_FakeFeeder(5), _host)
    while s.get_batch(["input_ids"]) is not None:
        pass
    assert s.check_complete() == {"batches_served": 5, "batches": 5, "cache_read": False}
    # an exception inside get_batch ends calibration for TensorRT: the build must fail
    bad = BatchStream(_FakeFeeder(5, fail_at=3), _host)
    while bad.get_batch(["input_ids"]) is not None:
        pass
    assert bad.served == 3
    with pytest.raises(CalibrationIncomplete, match="stopped after 3 of 5 batches: OSError"):
        bad.check_complete()
    # TensorRT stopping early (without an error) is refused too; a cache read instead is fine
    short = BatchStream(_FakeFeeder(5), _host)
    short.get_batch(["input_ids"])
    with pytest.raises(CalibrationIncomplete, match="saw 1 of 5 batches"):
        short.check_complete()
    cached = BatchStream(_FakeFeeder(5), _host)
    cached.cache_read = True
    assert cached.check_complete()["cache_read"] is True


@pytest.mark.parametrize("variant", ["ptq-s8", "qat-s8"])
def test_tensorrt_flavour_graphs_are_symmetric_int8(tiny_artifacts, variant):
    """What TensorRT takes: INT8 zero points equal to 0 everywhere, FP32 scales, INT8 weights;
    no UINT8 (the CPU flavour's type) anywhere."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(tiny_artifacts / "onnx" / f"{variant}.onnx")).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    qdq = [n for n in g.node if n.op_type in {"QuantizeLinear", "DequantizeLinear"}]
    assert qdq
    for n in qdq:
        scale, zp = consts[n.input[1]], consts[n.input[2]]
        assert scale.dtype == np.float32 and zp.dtype == np.int8 and not zp.any(), n.name
    assert not any(i.data_type == onnx.TensorProto.UINT8 for i in g.initializer)
