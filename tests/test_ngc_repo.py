"""The NGC Triton repository, loaded for real: the ensemble, tokenizer and postprocess as
written, in the bundled tritonserver, with the onnxruntime step replaced by a Python stand-in of
identical config running the same graph (tests/ngc_ort_standin.py). Load errors, shape
mismatches and batching are tested, not just parsing; refusals leave nothing half-written."""

import json
import shutil
import sys
import threading
import types

import numpy as np
import pytest

from common.task import load_split

http = pytest.importorskip("tritonclient.http", reason="serving needs tritonclient (`serve` group)")

from deploy.bench import infer_texts  # noqa: E402
from deploy.ngc_repo import RepoError, check_request, write_ngc_repo  # noqa: E402
from deploy.triton_repo import ServeConfig  # noqa: E402
from deploy.triton_server import TritonServer, free_ports  # noqa: E402
from tests.conftest import REPO  # noqa: E402

MAX_BATCH = 8
TARGET = "classifier_ort_fp32"


def parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def stand_in(repo):
    """Swap the onnxruntime backend for the Python stand-in; every other config field stays."""
    from google.protobuf import text_format

    folder = repo / TARGET
    cfg = parse(folder / "config.pbtxt")
    assert cfg.backend == "onnxruntime"
    cfg.backend = "python"
    cfg.ClearField("default_model_filename")
    (folder / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    shutil.copy(REPO / "tests" / "ngc_ort_standin.py", folder / "1" / "model.py")


@pytest.fixture(scope="module")
def ngc_server(tiny_artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ngc") / "repo"
    # a long queue window: concurrent requests meet in one execution reliably on a busy CI box
    write_ngc_repo(repo, tiny_artifacts, ServeConfig(max_batch=MAX_BATCH, queue_delay_us=200_000,
                                                     threads=1), gpu=False)
    stand_in(repo)
    with TritonServer(repo, free_ports(), start_timeout_s=240) as s:
        yield s


def test_repository_loads_and_answers_like_the_evaluator(ngc_server, tiny_artifacts, data_dir):
    from deploy.service import ClassifierService

    texts = list(load_split(data_dir, "test").texts[:24]) + ["hi", "word " * 300]
    svc = ClassifierService(tiny_artifacts, "ort", "fp32", threads=1)
    ref = svc.predict(texts)
    svc.close()
    c = http.InferenceServerClient(ngc_server.url)
    try:
        got = [infer_texts(http, c, "classifier", texts[s:s + 4]) for s in range(0, len(texts), 4)]
        stats = c.get_inference_statistics("postprocess")["model_stats"][0]
    finally:
        c.close()
    ids = np.concatenate([g["label_id"].reshape(-1) for g in got])
    probs = np.concatenate([g["probs"] for g in got])
    assert np.array_equal(ids, ref.label_ids)  # bucket padding changes no prediction
    np.testing.assert_allclose(probs, ref.probs, atol=1e-4)
    assert int(stats["inference_count"]) >= len(texts)


def test_concurrent_requests_of_different_lengths_are_batched(ngc_server, data_dir):
    texts = sorted(load_split(data_dir, "test").texts[:80], key=len)[::5][:16]  # 16 lengths
    c = http.InferenceServerClient(ngc_server.url)

    def model_stats():
        s = c.get_inference_statistics(TARGET)["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    before = model_stats()
    errors = []

    def one(t):
        cc = http.InferenceServerClient(ngc_server.url)
        try:
            infer_texts(http, cc, "classifier", [t])
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)
        finally:
            cc.close()

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = model_stats()
    c.close()
    assert not errors
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16 and executions < 16, (inferences, executions)
    assert len({len(t) for t in texts}) > 8  # they really had different lengths


def test_bad_input_is_refused_by_the_tokenizer_and_the_server_keeps_serving(ngc_server):
    c = http.InferenceServerClient(ngc_server.url)
    try:
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="empty or whitespace"):
            infer_texts(http, c, "classifier", ["   "])
        assert infer_texts(http, c, "classifier", ["i feel fine"])["probs"].shape == (1, 6)
    finally:
        c.close()


def test_configs_match_the_graph_and_the_request(tiny_artifacts, tmp_path):
    import onnx

    repo = tmp_path / "r"
    write_ngc_repo(repo, tiny_artifacts, ServeConfig(max_batch=16, threads=2,
                                                     dynamic_batching=False), gpu=True)
    assert sorted(p.name for p in repo.iterdir()) == sorted(["classifier", TARGET, "tokenizer",
                                                             "postprocess"])
    cfg = parse(repo / TARGET / "config.pbtxt")
    g = onnx.load(str(repo / TARGET / "1" / "model.onnx")).graph
    want = [(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
            for i in g.input]
    from tritonclient.grpc import model_config_pb2 as pb

    got = [(i.name, pb.DataType.Name(i.data_type).removeprefix("TYPE_").lower()) for i in cfg.input]
    assert got == want and [o.name for o in cfg.output] == [o.name for o in g.output] == ["logits"]
    assert not cfg.HasField("dynamic_batching")  # --no-dynamic-batching is written as asked
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    settings = json.loads((repo / "tokenizer" / "1" / "settings.json").read_text())
    assert settings["input_names"] == [n for n, _ in want] and settings["max_length"] == 64


def test_refusals_leave_the_old_repository_untouched(tiny_artifacts, tmp_path):
    repo = tmp_path / "r"
    write_ngc_repo(repo, tiny_artifacts, ServeConfig(variant="qat"), gpu=False)
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    with pytest.raises(RepoError, match="runs in PyTorch.*deploy serve"):
        write_ngc_repo(repo, tiny_artifacts, ServeConfig(backend="torch"), gpu=False)
    with pytest.raises(RepoError, match="runs in PyTorch"):
        write_ngc_repo(repo, tiny_artifacts, ServeConfig(backend="qlora", variant="nf4"), gpu=False)
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    # every ORT variant is servable, the static-INT8 fused graph (QAttention) included
    write_ngc_repo(repo, tiny_artifacts, ServeConfig(variant="ptq-fused"), gpu=False)
    assert (repo / "classifier_ort_ptq_fused" / "1" / "model.onnx").is_file()
    # a new variant replaces the repository whole: the older model does not stay behind
    write_ngc_repo(repo, tiny_artifacts, ServeConfig(variant="fp32"), gpu=False)
    assert not (repo / "classifier_ort_qat").exists() and (repo / TARGET).is_dir()
    assert not list(tmp_path.glob(".r.*"))  # no temporary folder left


def test_tensorrt_requests_are_checked_against_the_engine(tiny_artifacts, tmp_path):
    """Without TensorRT: a manifest entry as the builder writes it, for a placeholder plan."""
    from common.buckets import Buckets
    from common.config import recipe
    from common.manifest import Manifest
    from common.trt import TrtProfile, TrtUnavailable
    from engines.trt_build import TrtConfig

    art = tmp_path / "a"
    shutil.copytree(tiny_artifacts, art)
    (art / "trt").mkdir(exist_ok=True)
    (art / "trt" / "fp16.plan").write_bytes(b"plan")
    man = Manifest(art)
    built = {"tensorrt": "10.13.3.9", "name": "NVIDIA H200", "compute_capability": "9.0"}
    small = TrtProfile(Buckets(batches=(1, 2, 4, 8, 16, 32)), max_seq=128)
    man.record("trt-fp16", "trt/fp16.plan", {}, {}, {}, built, {"trt": recipe(TrtConfig(profile=small))})
    with pytest.raises(RepoError, match="GPUs only"):
        check_request(ServeConfig(backend="trt", variant="fp16"), Manifest(art), gpu=False)
    with pytest.raises(RepoError, match="--max-batch 64 is above the engine's profile.*32"):
        check_request(ServeConfig(backend="trt", variant="fp16", max_batch=64), Manifest(art), True)
    assert check_request(ServeConfig(backend="trt", variant="fp16", max_batch=32),
                         Manifest(art), True)["profile"].max_batch == 32
    # both profiles are listed for Triton to choose from
    write_ngc_repo(tmp_path / "repo", art, ServeConfig(backend="trt", variant="fp16", max_batch=32))
    group = parse(tmp_path / "repo" / "classifier_trt_fp16" / "config.pbtxt").instance_group[0]
    assert list(group.profile) == ["0", "1"]
    # a plan built by another TensorRT than the Triton image's is refused
    man.record("trt-fp16", "trt/fp16.plan", {}, {}, {}, {**built, "tensorrt": "10.8.0.43"},
               {"trt": recipe(TrtConfig(profile=small))})
    with pytest.raises(TrtUnavailable, match="built with TensorRT 10.8.0.43.*runs TensorRT 10.13"):
        check_request(ServeConfig(backend="trt", variant="fp16", max_batch=32), Manifest(art), True)
    man.record("trt-fp16", "trt/fp16.plan", {}, {}, {}, built,
               {"trt": recipe(TrtConfig(profile=TrtProfile(min_seq=4, max_seq=16)))})
    with pytest.raises(RepoError, match="admits sequences of 4..16"):
        check_request(ServeConfig(backend="trt", variant="fp16"), Manifest(art), True)


def test_postprocess_refuses_non_finite_logits(monkeypatch, tmp_path):
    """postprocess answers an error, not NaN probabilities (a fake of the Python backend's
    utility module: the real one exists only inside the Triton stub)."""
    import importlib.util

    class Tensor:
        def __init__(self, name, a):
            self.name, self.a = name, a

        def as_numpy(self):
            return self.a

    class TritonError:
        INTERNAL = "INTERNAL"

        def __init__(self, msg, code=None):
            self.msg, self.code = msg, code

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.outputs, self.error = output_tensors, error

    fake = types.SimpleNamespace(Tensor=Tensor, TritonError=TritonError, InferenceResponse=Response,
                                 get_input_tensor_by_name=lambda r, n: r[n])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    # laid out as the repository lays it out: model.py, the task's labels.json, project/common
    version = tmp_path / "postprocess" / "1"
    (version / "project" / "common").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "triton_postprocess.py", version / "model.py")
    for rel in ("common/__init__.py", "common/probs.py"):
        shutil.copy(REPO / rel, version / "project" / rel)
    (version / "labels.json").write_text('["a", "b", "c", "d", "e", "f"]')
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model prepends its project/ copy
    spec = importlib.util.spec_from_file_location("post", version / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    good = {"logits": Tensor("logits", np.array([[0.1, 2.0, 0, 0, 0, 0]], np.float32))}
    bad = {"logits": Tensor("logits", np.array([[np.nan, 1, 0, 0, 0, 0]], np.float32))}
    ok, err = mod.TritonPythonModel().execute([good, bad])
    assert ok.error is None and ok.outputs[1].a.tolist() == [[1]]
    assert ok.outputs[0].a.tolist() == [[b"b"]]  # the task's name of label 1
    assert err.outputs is None and "non-finite" in err.error.msg and err.error.code == "INTERNAL"


def test_one_bucket_table_from_the_build(tiny_artifacts, tiny_model_dir, data_dir, tmp_path,
                                         monkeypatch):
    """The table given to the build (`--trt-profile-buckets-*`) is the one the TensorRT entries
    record (skipped here: no TensorRT), the CUDA-graph runner captures and the Triton tokenizer
    pads to; entries that disagree are refused."""
    import dataclasses
    import importlib.util
    import sys

    from common.buckets import Buckets
    from common.config import recipe
    from common.manifest import Manifest
    from common.trt import TrtProfile
    from common.variants import find_variant
    from deploy.factories import _FACTORIES, RunnerRequest, build_buckets
    from deploy.runner import RunnerError
    from engines.pipeline import build_all
    from engines.trt_build import TrtConfig
    from tests.conftest import tiny_build_config

    monkeypatch.setattr(sys, "path", list(sys.path))  # the tokenizer model prepends its copy
    art = tmp_path / "a"
    shutil.copytree(tiny_artifacts, art)
    assert build_buckets(Manifest(art)) == Buckets()  # the default build: the default table
    table = Buckets(lengths=(8, 24, 48), batches=(1, 4, 16), opt_length_b1=24, opt_batch=16,
                    opt_length_batched=48)
    base = tiny_build_config(tiny_model_dir, data_dir, art, stages=("trt",))
    cfg = dataclasses.replace(base, trt=dataclasses.replace(
        base.trt, profile=dataclasses.replace(base.trt.profile, buckets=table)))
    build_all(cfg)
    man = Manifest(art)
    assert build_buckets(man) == table

    # the graphs runner, made by its factory (capture needs CUDA; the table is set at creation)
    spec = find_variant("torch", "fp16-graphs")
    runner = _FACTORIES[spec.runner_key](RunnerRequest(
        spec, man.verify(spec.artifact), man.get(spec.artifact), man,
        ("input_ids", "attention_mask", "token_type_ids"), 1, "cuda", True))
    assert runner.buckets == table

    # the Triton tokenizer: settings carry the table's lengths, and it pads to them
    write_ngc_repo(tmp_path / "ngc", art, ServeConfig(backend="ort", variant="fp32"))
    tok = tmp_path / "ngc" / "tokenizer" / "1"
    saved = json.loads((tok / "settings.json").read_text())["buckets"]
    assert saved["lengths"] == [8, 24, 48] and saved["batches"] == [1, 4, 16]
    mod_spec = importlib.util.spec_from_file_location("ngc_tokenizer_buckets", tok / "model.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)  # type: ignore[union-attr]
    # below the max length of 64 its buckets, then 64
    assert [mod.bucket(n, 64, saved) for n in (1, 8, 9, 25, 49, 64)] == [8, 8, 24, 48, 64, 64]

    # one TensorRT entry from another table: refused, naming both
    other = next(n for n in man.entries if n.startswith("trt-"))
    man.record_skip(other, recipe(TrtConfig(profile=TrtProfile(Buckets()))), "no TensorRT")
    with pytest.raises(RunnerError, match=r"record different bucket tables.*rebuild them"):
        build_buckets(Manifest(art))
