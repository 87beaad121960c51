"""Real TensorRT engines from the tiny model (marked trt: run where TensorRT and a GPU exist,
e.g. inside docker/Dockerfile.gpu; skipped with the reason elsewhere)."""

import numpy as np
import pytest

from common.feeds import batches, encode
from common.modelsource import load_tokenizer
from common.task import load_split

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def trt_artifacts(tiny_artifacts, tiny_model_dir, data_dir):
    from engines.pipeline import build_all
    from tests.conftest import tiny_build_config

    b = build_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts, stages=("trt",)))
    assert {"trt-fp32", "trt-fp16", "trt-ptq", "trt-qat"} <= set(b.built) | set(b.skipped)
    return tiny_artifacts


@pytest.mark.parametrize("variant, reference, min_agreement", [
    ("fp32", "fp32", 1.0), ("fp16", "fp32", 0.97), ("ptq", "ptq-s8", 0.95), ("int8", "fp32", 0.9),
    ("qat", "qat-s8", 0.95)])
def test_engine_agrees_with_onnx_runtime(trt_artifacts, data_dir, variant, reference, min_agreement):
    import tensorrt as trt

    from deploy.factories import make_runner

    if variant == "int8" and int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("implicit INT8 does not exist in TensorRT 11")
    enc = encode(load_tokenizer(trt_artifacts / "baseline"), load_split(data_dir, "test").texts, 64)
    with make_runner("trt", variant, trt_artifacts, device="cuda") as t, make_runner("ort", reference, trt_artifacts, threads=1) as o:
        a = np.concatenate([t.infer(enc.batch(b, t.input_names)) for b in batches(len(enc), 16)])
        r = np.concatenate([o.infer(enc.batch(b, o.input_names)) for b in batches(len(enc), 16)])
    assert (a.argmax(-1) == r.argmax(-1)).mean() >= min_agreement
    if variant == "fp32":
        assert np.abs(a - r).max() < 1e-2


def test_engine_from_another_gpu_is_refused(trt_artifacts, tmp_path):
    import json
    import shutil

    from deploy.factories import make_runner
    from deploy.runner import RunnerError

    art = tmp_path / "a"
    shutil.copytree(trt_artifacts, art)
    m = json.loads((art / "manifest.json").read_text())
    m["trt-fp16"]["device"]["compute_capability"] = "1.0"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunnerError, match="compute_capability.*make engines"):
        make_runner("trt", "fp16", art, device="cuda").load()


def test_runner_switches_between_the_single_and_batched_profiles(trt_artifacts, data_dir):
    """Profile 0 serves batch 1, profile 1 batches; alternating between them gives the same
    logits per row (padding is masked out; fp32 engine, TF32 cleared)."""
    from deploy.factories import make_runner

    texts = load_split(data_dir, "test").texts[:8]
    enc = encode(load_tokenizer(trt_artifacts / "baseline"), texts, 64)
    rows = list(range(len(texts)))
    with make_runner("trt", "fp32", trt_artifacts, device="cuda:0") as t:
        assert t.engine.num_optimization_profiles == len(t.profile.profiles()) == 2
        batched = t.infer(enc.batch(rows, t.input_names))
        assert t.active_profile == 1
        single = np.concatenate([t.infer(enc.batch([i], t.input_names)) for i in rows])
        assert t.active_profile == 0
        again = t.infer(enc.batch(rows, t.input_names))
    np.testing.assert_allclose(single, batched, atol=1e-3)
    np.testing.assert_allclose(again, batched, atol=1e-5)


def test_fp16_engine_records_what_its_layers_run_in(trt_artifacts):
    """10.x: the FP16 flag; 11.x: no flag, an FP16-typed ONNX with LayerNorm kept FP32."""
    import tensorrt as trt

    from common.manifest import Manifest
    from common.trt import trt_major

    p = Manifest(trt_artifacts).get("trt-fp16")["precision"]
    if trt_major(trt.__version__) >= 11:
        assert p["flags"] == [] and p["strongly_typed"] is True
        assert p["source_fp16_onnx"]["fp32_ops"] == ["LayerNormalization"]
    else:
        assert p["flags"] == ["FP16"] and "source_fp16_onnx" not in p
