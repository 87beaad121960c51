"""The TensorRT code paths that need no TensorRT: profiles, cache naming, version gates, the
calibrator's batch iteration, engine identity checks, the one-line skip in `make engines`, the
builder against a fake `tensorrt` of 10.x and of 11.x (no FP16/INT8 flags), the FP16-typed ONNX
of 11.x, and the plan-vs-server TensorRT check. Real engine tests are in test_trt_engines.py
(marked trt)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.trt_calibrator import CalibrationFeeder, cache_name, read_cache, write_cache
from common.buckets import Buckets
from common.calibset import CalibrationSet
from common.trt import (
    OutsideProfiles,
    TrtProfile,
    TrtUnavailable,
    check_engine_identity,
    check_plan_for_server,
    require_implicit_int8,
    tensorrt_status,
    triton_trt_version,
)
from engines.trt_build import FP32_OPS, EngineBuildError, TrtConfig


def test_profiles_come_from_the_bucket_table():
    p = TrtProfile()  # Buckets() and max_seq 128
    assert p.profiles() == [((1, 1), (1, 32), (1, 128)), ((2, 1), (32, 64), (64, 128))]
    assert p.shapes() == ((1, 1), (32, 64), (64, 128))  # the envelope
    assert (p.min_seq, p.max_seq, p.max_batch) == (1, 128, 64)
    assert p.triton_profiles() == ["0", "1"]
    small = TrtProfile(Buckets(batches=(1, 2, 4, 8, 16, 32)), min_seq=4, max_seq=16)
    # tuning lengths above max_seq are clamped to it; the largest batch bucket is the max
    assert small.profiles() == [((1, 4), (1, 16), (1, 16)), ((2, 4), (32, 16), (32, 16))]
    assert TrtProfile(Buckets(batches=(1,), opt_batch=1), max_seq=64).profiles() == [
        ((1, 1), (1, 32), (1, 64))]
    with pytest.raises(ValueError, match="min_seq"):
        TrtProfile(min_seq=0)
    with pytest.raises(ValueError, match="min_seq"):
        TrtProfile(min_seq=64, max_seq=32)
    with pytest.raises(ValueError):
        TrtConfig(precision="int4")


def test_profile_for_picks_the_one_profile_admitting_a_shape():
    p = TrtProfile()
    assert [p.profile_for(b, s) for b, s in [(1, 1), (1, 128), (2, 1), (8, 20), (64, 128)]] == [
        0, 0, 1, 1, 1]
    assert p.admits(1, 2) and p.admits(64, 128) and not p.admits(65, 10) and not p.admits(1, 129)
    for batch, seq in [(1, 5), (7, 40), (64, 64)]:  # exactly one profile admits each shape
        assert sum(lo[0] <= batch <= hi[0] and lo[1] <= seq <= hi[1]
                   for lo, _, hi in p.profiles()) == 1


@pytest.mark.parametrize("batch, seq, flag", [
    (65, 10, "--trt-profile-buckets-batches 1,2,4,8,16,32,64,128`"),
    (1, 129, "--trt-profile-max-seq 129`"),
    (300, 200, "--trt-profile-buckets-batches 1,2,4,8,16,32,64,300 --trt-profile-max-seq 200`"),
    (0, 10, "batch and sequence must be at least 1"),
])
def test_shape_outside_every_profile_names_the_flag_to_widen_it(batch, seq, flag):
    with pytest.raises(OutsideProfiles, match="outside the engine's optimization profiles") as e:
        TrtProfile().profile_for(batch, seq)
    assert str(e.value).endswith(flag) and "\n" not in str(e.value)
    with pytest.raises(OutsideProfiles, match="--trt-profile-min-seq 2`"):
        TrtProfile(min_seq=4).profile_for(1, 2)


def test_profile_recipe_round_trips_and_its_flags_exist():
    from common.config import from_recipe, recipe
    from engines.__main__ import parse

    cfg, _ = parse(["--trt-profile-buckets-batches", "1,2,4,8,16,32,64,128",
                    "--trt-profile-max-seq", "256"])
    p = cfg.trt.profile
    assert p.max_batch == 128 and p.profiles()[1][2] == (128, 256)
    assert from_recipe(TrtProfile, recipe(p)) == p
    assert from_recipe(TrtConfig, recipe(cfg.trt)) == cfg.trt


def test_cache_name_changes_with_every_input():
    base = cache_name("a" * 64, "b" * 64, "10.13.0", 16)
    assert base.startswith("trt-calib-") and base.endswith(".cache")
    others = {cache_name("c" * 64, "b" * 64, "10.13.0", 16), cache_name("a" * 64, "c" * 64, "10.13.0", 16),
              cache_name("a" * 64, "b" * 64, "10.14.1", 16), cache_name("a" * 64, "b" * 64, "10.13.0", 8)}
    assert base not in others and len(others) == 4


def test_the_calibration_cache_is_verified_and_its_leftovers_cleaned(tmp_path, capsys):
    """The cache is read only as written (its sha256 beside it); a truncated, edited or unhashed
    one is not read (TensorRT calibrates again); a killed write's temporary file is one the next
    build removes."""
    from common.workdir import clean_leftovers

    trt_dir = tmp_path / "trt"
    cache = trt_dir / cache_name("a" * 64, "b" * 64, "10.13.0", 16)
    assert read_cache(cache) is None  # none yet
    write_cache(cache, b"TRT-8601-EntropyCalibration2\ninput_ids: 3c010a14\n")
    assert read_cache(cache) == b"TRT-8601-EntropyCalibration2\ninput_ids: 3c010a14\n"
    assert sorted(p.name for p in trt_dir.iterdir()) == [cache.name, cache.name + ".sha256"]
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")  # truncated
    assert read_cache(cache) is None
    assert "does not match its sha256: not read, calibrating again" in capsys.readouterr().out
    (trt_dir / (cache.name + ".sha256")).unlink()
    assert read_cache(cache) is None
    assert "has no sha256 beside it" in capsys.readouterr().out
    # what a write killed mid-way leaves (pid 999999: gone) is cleaned like every other leftover
    left = trt_dir / f".{cache.name}.999999-abc123.tmp"
    left.write_bytes(b"partial")
    assert clean_leftovers(tmp_path) == [f"removed {left} (left by a killed build)"]
    assert not left.exists()


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
    from common.variants import variants

    # every engine the registry declares, the student's among them
    engines = [v.variant for v in variants() if v.backend == "trt"]
    assert {"fp32", "fp16", "int8", "ptq", "qat", "student-fp16", "student-ptq"} == set(engines)
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


class _BuilderFlag10:
    """tensorrt.BuilderFlag as TensorRT 10.x has it (the flags our code touches)."""

    FP16, INT8, TF32 = "FP16", "INT8", "TF32"


class _BuilderFlag11:
    """TensorRT 11 removed FP16, INT8, BF16, FP8 and the precision-constraint flags: touching
    them raises AttributeError, as the real module does."""

    TF32 = "TF32"


def _flags_of(version):
    return _BuilderFlag11 if int(version.split(".")[0]) >= 11 else _BuilderFlag10


class _Config:
    """Stands in for an IBuilderConfig: records flags, profiles and the calibrator."""

    def __init__(self):
        self.on = {"TF32"}  # TensorRT's default
        self.profiles, self.int8_calibrator, self.calibration_profile = [], None, None

    def set_flag(self, f):
        self.on.add(f)

    def clear_flag(self, f):
        self.on.discard(f)

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile


@pytest.mark.parametrize("precision, version, on, strong", [
    ("fp32", "10.8.0", set(), False),  # TF32 cleared: an fp32 engine computes in FP32
    ("fp16", "10.8.0", {"TF32", "FP16"}, False),
    ("int8-implicit", "10.8.0", {"TF32", "INT8", "FP16"}, False),
    ("int8-explicit", "10.8.0", {"TF32", "INT8", "FP16"}, False),  # unquantized layers may be FP16
    ("fp32", "11.0.0", set(), True),  # TF32 still exists in 11
    ("fp16", "11.0.0", {"TF32"}, True),  # no FP16 flag: the FP16-typed ONNX decides
    ("int8-explicit", "11.2.0", {"TF32"}, True),  # no such flags in 11: strongly typed
])
def test_builder_flags_per_precision(precision, version, on, strong):
    from engines.trt_build import configure, strongly_typed

    trt = SimpleNamespace(BuilderFlag=_flags_of(version))
    config = _Config()
    cfg = TrtConfig(precision=precision)
    info = configure(trt, config, cfg, version)
    assert config.on == on and strongly_typed(cfg, version) == strong
    assert info["unquantized_layers"]
    assert strongly_typed(TrtConfig(precision="int8-explicit", explicit_fp16=False), "10.8.0")


def test_builder_refuses_implicit_int8_on_trt11_before_touching_a_flag():
    from engines.trt_build import configure

    trt = SimpleNamespace(BuilderFlag=_BuilderFlag11)
    with pytest.raises(TrtUnavailable, match="removed in TensorRT 11"):
        configure(trt, _Config(), TrtConfig(precision="int8-implicit"), "11.0.0")
    with pytest.raises(AttributeError):  # the fake is faithful: 11 has no FP16 flag
        _ = trt.BuilderFlag.FP16


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
        return {"input_ids": np.full((4, 8), self.i, np.int32),
                "attention_mask": np.ones((4, 8), np.int32)}


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


# --- trt/fp16 on TensorRT 11: the FP16-typed ONNX -------------------------------------------

def _mini_encoder(path: Path, vocab=50, hidden=16, labels=6, seed=0) -> Path:
    """An encoder-shaped graph built with onnx.helper: embedding Gather, LayerNormalization,
    masked self-attention (MatMul, Softmax), a first-token head; int64 inputs, FP32 logits."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("emb", vocab, hidden), init("ln_g", hidden), init("ln_b", hidden),
             init("w_qk", hidden, hidden), init("bias", hidden), init("w_head", hidden, labels),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
             numpy_helper.from_array(np.array(0, np.int64), "first")]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"]),
        n("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h", "w_qk"], ["q0"]), n("Add", ["q0", "bias"], ["q"]),
        n("Transpose", ["h"], ["ht"], perm=[0, 2, 1]), n("MatMul", ["q", "ht"], ["scores0"]),
        n("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        n("Sub", ["one", "mf"], ["inv"]), n("Mul", ["inv", "neg"], ["bias_m0"]),
        n("Unsqueeze", ["bias_m0", "axis1"], ["bias_m"]), n("Add", ["scores0", "bias_m"], ["scores"]),
        n("Softmax", ["scores"], ["probs"], axis=-1), n("MatMul", ["probs", "h"], ["ctx"]),
        n("Gather", ["ctx", "first"], ["cls"], axis=1), n("MatMul", ["cls", "w_head"], ["logits"]),
    ]
    ins = [helper.make_tensor_value_info(x, TensorProto.INT64, ["batch", "seq"])
           for x in ("input_ids", "attention_mask")]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])]
    model = helper.make_model(helper.make_graph(nodes, "mini", ins, out, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by the ONNX Runtime in the venv
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _io_types(g):
    return ({i.name: i.type.tensor_type.elem_type for i in g.input},
            {o.name: o.type.tensor_type.elem_type for o in g.output})


def _float_initializers_by_consumer(g):
    """float initializer name -> (type, set of op types reading it)."""
    readers: dict[str, set[str]] = {}
    for node in g.node:
        for i in node.input:
            readers.setdefault(i, set()).add(node.op_type)
    return {i.name: (i.data_type, readers.get(i.name, set())) for i in g.initializer
            if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}


def _run(path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], feed)[0]


def _check_fp16_typed(src: Path, dst: Path):
    from engines.trt_build import fp16_typed_onnx

    info = fp16_typed_onnx(src, dst)
    m32, m16 = onnx.load(str(src)), onnx.load(str(dst))
    onnx.checker.check_model(m16, full_check=True)
    assert _io_types(m16.graph) == _io_types(m32.graph)  # inputs and outputs keep their types
    inits = _float_initializers_by_consumer(m16.graph)
    assert inits
    for name, (dtype, readers) in inits.items():
        # FP32 only where every reader is kept FP32 (LayerNorm's scale and bias)
        want = TensorProto.FLOAT if readers and readers <= set(FP32_OPS) else TensorProto.FLOAT16
        assert dtype == want, (name, readers)
    # every MatMul and the Softmax compute in FP16; LayerNormalization reads FP32 through a Cast
    typed = onnx.shape_inference.infer_shapes(m16)
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    types.update({i.name: i.data_type for i in typed.graph.initializer})
    for node in typed.graph.node:
        if node.op_type in {"MatMul", "Softmax"}:
            assert types[node.output[0]] == TensorProto.FLOAT16, node.name
        if node.op_type == "LayerNormalization":
            assert all(types[i] == TensorProto.FLOAT for i in node.input), node.name
    assert info["fp32_ops"] == sorted({n.op_type for n in m32.graph.node} & set(FP32_OPS))
    return m16


def test_fp16_typed_onnx_of_a_small_graph(tmp_path):
    src = _mini_encoder(tmp_path / "fp32.onnx")
    _check_fp16_typed(src, tmp_path / "fp16.onnx")
    rng = np.random.default_rng(1)
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    feed = {"input_ids": rng.integers(0, 50, (3, 7)).astype(np.int64), "attention_mask": mask}
    a, b = _run(src, feed), _run(tmp_path / "fp16.onnx", feed)  # ORT CPU has these FP16 kernels
    assert b.dtype == np.float32 and np.abs(a - b).max() < 5e-2 * max(1.0, np.abs(a).max())


@pytest.fixture(scope="module")
def tiny_bert_onnx(tmp_path_factory) -> Path:
    """A random 2-layer BERT exported as the project exports (TorchScript exporter, opset 17)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=6)).eval()
    path = tmp_path_factory.mktemp("tiny-bert-onnx") / "fp32.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    dyn = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    torch.onnx.export(model, sample, str(path), input_names=names, output_names=["logits"],
                      dynamic_axes={**dyn, "logits": {0: "batch_size"}}, opset_version=17,
                      do_constant_folding=True, dynamo=False)
    return path


def test_fp16_typed_onnx_of_a_real_bert_export(tiny_bert_onnx, tmp_path):
    m16 = _check_fp16_typed(tiny_bert_onnx, tmp_path / "fp16.onnx")
    assert "LayerNormalization" in {n.op_type for n in m16.graph.node}
    rng = np.random.default_rng(0)
    mask = np.ones((4, 12), np.int64)
    mask[1:, 5:] = 0  # padded rows: the mask's large negative bias must survive FP16 (clamped)
    feed = {"input_ids": rng.integers(0, 100, (4, 12)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((4, 12), np.int64)}
    a, b = _run(tiny_bert_onnx, feed), _run(tmp_path / "fp16.onnx", feed)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-2


# --- build_engine against a fake `tensorrt` module -------------------------------------------

def _fake_tensorrt(version, result=b"plan"):
    """A `tensorrt` module with the attributes build_engine uses, as present in `version` (11.x:
    no FP16/INT8 flags, no IInt8EntropyCalibrator2). `rec` records what the build did."""
    rec = SimpleNamespace(parsed=None, network_flags=None, config=None)

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Network:
        def __init__(self, flags):
            rec.network_flags, self.inputs = flags, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            rec.parsed = onnx.load_from_string(data)
            self.network.inputs = [SimpleNamespace(name=i.name, dtype="int32")
                                   for i in rec.parsed.graph.input]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            rec.config = _Config()
            return rec.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.int8_calibrator is not None:  # TensorRT pulls batches until None
                names = [network.get_input(i).name for i in range(network.num_inputs)]
                while config.int8_calibrator.get_batch(names) is not None:
                    pass
            return result

    trt = SimpleNamespace(
        __version__=version, BuilderFlag=_flags_of(version), Logger=Logger, Builder=Builder,
        OnnxParser=OnnxParser, NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=SimpleNamespace(WORKSPACE=0), nptype=lambda dtype: np.int32)
    if int(version.split(".")[0]) < 11:
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
    return trt, rec


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version, result=b"plan"):
        trt, rec = _fake_tensorrt(version, result)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr("common.trt.gpu_identity", lambda: {"tensorrt": version})
        return rec
    return install


@pytest.mark.parametrize("version", ["10.8.0.43", "11.0.0"])
def test_build_engine_fp16_on_10_and_11(fake_trt, tmp_path, version):
    """10.x: the FP16 flag on the ONNX as it is; 11.x: no flag touched, an FP16-typed ONNX
    (written beside the plan, then removed) parsed strongly typed. Both: every profile added."""
    from engines.trt_build import build_engine

    rec = fake_trt(version)
    src = _mini_encoder(tmp_path / "fp32.onnx")
    plan = tmp_path / "trt" / "fp16.plan"
    plan.parent.mkdir()
    out = build_engine(src, plan, TrtConfig(precision="fp16"))
    assert plan.read_bytes() == b"plan" and sorted(p.name for p in plan.parent.iterdir()) == ["fp16.plan"]
    want = TrtProfile().profiles()
    assert [p.shapes for p in rec.config.profiles] == [
        {"input_ids": w, "attention_mask": w} for w in want]
    emb = next(i for i in rec.parsed.graph.initializer if i.name == "emb")
    if version.startswith("10."):
        assert rec.config.on == {"TF32", "FP16"} and rec.network_flags == 0
        assert emb.data_type == TensorProto.FLOAT and "source_fp16_onnx" not in out["precision"]
    else:
        assert rec.config.on == {"TF32"} and rec.network_flags == 0  # STRONGLY_TYPED is implied
        assert emb.data_type == TensorProto.FLOAT16
        assert out["precision"]["strongly_typed"] is True
        assert out["precision"]["source_fp16_onnx"]["fp32_ops"] == ["LayerNormalization"]
        assert "fp16" in out["precision"]["unquantized_layers"]


def test_build_engine_explicit_int8_on_11_sets_no_flag(fake_trt, tmp_path):
    from engines.trt_build import build_engine

    rec = fake_trt("11.1.0")
    out = build_engine(_mini_encoder(tmp_path / "q.onnx"), tmp_path / "q.plan",
                       TrtConfig(precision="int8-explicit"))
    assert rec.config.on == {"TF32"} and out["precision"]["strongly_typed"] is True


def test_failed_build_shows_the_calibrators_error(fake_trt, monkeypatch, tmp_path):
    """TensorRT takes an exception in get_batch as the end of the data and then may return None:
    the build error must carry the calibrator's own error and how far it got."""
    import calibration.trt_calibrator as tc
    from engines.trt_build import build_engine

    rec = fake_trt("10.8.0", result=None)
    monkeypatch.setattr(tc, "CalibrationFeeder", lambda *a, **k: _FakeFeeder(5, fail_at=2))
    monkeypatch.setattr(tc, "torch_to_device", _host)
    with pytest.raises(EngineBuildError, match=r"int8-implicit engine .*the INT8 calibrator served "
                       r"2 of 5 batches and stopped on OSError: disk read failed") as e:
        build_engine(_mini_encoder(tmp_path / "fp32.onnx"), tmp_path / "i.plan",
                     TrtConfig(precision="int8-implicit"), tmp_path / "calib", tmp_path / "c.cache")
    assert isinstance(e.value.__cause__, OSError)
    assert rec.config.calibration_profile.shapes["input_ids"] == ((4, 8),) * 3
    assert not (tmp_path / "i.plan").exists()


def test_serialize_failure_without_calibration_points_at_the_log():
    from calibration.trt_calibrator import BatchStream
    from engines.trt_build import serialize

    class NoneBuilder:
        def build_serialized_network(self, network, config):
            return None

    with pytest.raises(EngineBuildError, match=r"failed to build x \(see the TensorRT log above\)$"):
        serialize(NoneBuilder(), None, None, "x")
    s = BatchStream(_FakeFeeder(5), _host)
    with pytest.raises(EngineBuildError, match="served 0 of 5 batches$"):
        serialize(NoneBuilder(), None, None, "x", s)


# --- the runner's profile selection, without a GPU -------------------------------------------

def test_runner_takes_its_gpu_from_the_device():
    """cuda:N is the GPU the runner loads and runs on (TensorRT uses the current CUDA device:
    the runner makes N current around load and inference); cuda is torch's current device,
    resolved at load; anything else is refused in one line."""
    from deploy.runner import RunnerError
    from deploy.trt_runner import TrtRunner

    assert TrtRunner(Path("x.plan"), ("input_ids",), {}, TrtProfile(), "fp16", "cuda:1").index == 1
    assert TrtRunner(Path("x.plan"), ("input_ids",), {}, TrtProfile(), "fp16", "cuda").index is None
    for bad in ("cpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cudafoo"):
        with pytest.raises(RunnerError, match="the trt backend runs on a CUDA GPU: not a CUDA"):
            TrtRunner(Path("x.plan"), ("input_ids",), {}, TrtProfile(), "fp16", bad)


def test_runner_selects_the_profile_before_setting_shapes():
    from deploy.runner import RunnerError
    from deploy.trt_runner import TrtRunner

    r = TrtRunner(Path("x.plan"), ("input_ids",), {}, TrtProfile(), "fp16")
    calls = []
    r.context = SimpleNamespace(set_optimization_profile_async=lambda i, s: calls.append((i, s)) or True)
    r.stream = SimpleNamespace(cuda_stream=7)
    got = [r.select_profile(b, s) for b, s in [(1, 5), (1, 128), (8, 20), (64, 128), (1, 3)]]
    assert got == [0, 0, 1, 1, 0]
    assert calls == [(0, 7), (1, 7), (0, 7)]  # only on a change, on the runner's stream
    with pytest.raises(RunnerError, match="--trt-profile-buckets-batches 1,2,4,8,16,32,64,128"):
        r.select_profile(65, 10)
    with pytest.raises(RunnerError, match="--trt-profile-max-seq 129"):
        r.select_profile(1, 129)
    r.context = SimpleNamespace(set_optimization_profile_async=lambda i, s: False)
    with pytest.raises(RunnerError, match="refused optimization profile 1 of x.plan"):
        r.select_profile(2, 2)


def test_runner_refuses_an_engine_with_other_profiles():
    from deploy.runner import RunnerError
    from deploy.trt_runner import check_profiles

    def engine(profiles):
        return SimpleNamespace(num_optimization_profiles=len(profiles),
                               get_tensor_profile_shape=lambda name, i: [list(d) for d in profiles[i]])

    p = TrtProfile()
    check_profiles(engine(p.profiles()), p, "input_ids", "x.plan")
    old = [((1, 1), (32, 64), (64, 128))]  # the single profile of earlier builds
    with pytest.raises(RunnerError, match="x.plan has optimization profiles.*make engines"):
        check_profiles(engine(old), p, "input_ids", "x.plan")


# --- the Triton image's TensorRT against the plan's -------------------------------------------

def test_plan_for_server_needs_the_same_major_minor():
    check_plan_for_server("10.8.0.43", "10.8", "trt/fp16.plan")
    check_plan_for_server("10.8.0", "10.8.1.2", "trt/fp16.plan")
    for built, server in [("10.13.0.35", "10.8"), ("11.0.0", "10.8"), ("10.8.0", "11.8")]:
        with pytest.raises(TrtUnavailable, match=rf"trt/fp16.plan was built with TensorRT {built}.*"
                           r"rebuild the engine .*or serve the ONNX variant") as e:
            check_plan_for_server(built, server, "trt/fp16.plan")
        assert "\n" not in str(e.value)
    with pytest.raises(TrtUnavailable, match="not a TensorRT version"):
        check_plan_for_server("unknown", "10.8", "p")


def test_triton_trt_version_from_the_dockerfile(tmp_path):
    assert triton_trt_version() == "10.13"  # docker/Dockerfile.triton: tritonserver 25.10

    def dockerfile(*args):
        f = tmp_path / "Dockerfile"
        f.write_text("".join(f"ARG {a}\n" for a in args) + "FROM ${BASE_IMAGE}\n")
        return f

    base = "BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3"
    assert triton_trt_version(dockerfile(base, "TENSORRT_MAJOR=10")) == "10.8"
    assert triton_trt_version(dockerfile(base, "TENSORRT_VERSION=10.9")) == "10.9"  # stated wins
    with pytest.raises(TrtUnavailable, match="add `ARG TENSORRT_VERSION="):
        triton_trt_version(dockerfile("BASE_IMAGE=nvcr.io/nvidia/tritonserver:26.04-py3"))
    with pytest.raises(TrtUnavailable, match="TENSORRT_MAJOR 11 disagrees"):
        triton_trt_version(dockerfile(base, "TENSORRT_MAJOR=11"))
    with pytest.raises(TrtUnavailable, match="missing"):
        triton_trt_version(tmp_path / "none")
