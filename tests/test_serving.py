"""A real Triton server (the nvidia-pytriton bundle) on free loopback ports serving the tiny
model: contract, agreement with the Runner, dynamic batching, hostile input, lifecycle."""

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, UserError
from common.feeds import InputError
from common.manifest import ArtifactError, Manifest
from common.task import load_split
from common.variants import find_variant
from deploy.service import ClassifierService, decode_texts

pytest.importorskip("tritonclient.http", reason="serving needs tritonclient (`serve` group)")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")

from deploy.bench import connect, goals, infer_texts, server_batches  # noqa: E402
from deploy.ngc_repo import write_ngc_repo  # noqa: E402
from deploy.triton_repo import ServeConfig, write_local_repo  # noqa: E402
from deploy.triton_server import Ports, ServerError, TritonServer, free_ports, ready  # noqa: E402

MAX_BATCH = 8


@pytest.fixture(scope="module")
def server(tiny_artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    # a long queue delay makes concurrent requests meet in one server batch reliably
    write_local_repo(repo, ServeConfig(max_batch=MAX_BATCH, queue_delay_us=100_000, threads=1),
                     tiny_artifacts)
    with TritonServer(repo, free_ports(), start_timeout_s=240) as s:
        yield s


def post(url: str, body: bytes, model: str = "classifier") -> tuple[int, str]:
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def kserve_json(texts, name="text", datatype="BYTES") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": [len(texts), 1], "datatype": datatype,
                                   "data": texts}]}).encode()


def good(server) -> None:
    """The server still answers a good request correctly."""
    code, body = post(server.url, kserve_json(["i feel wonderful today"]))
    assert code == 200, body
    outs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outs["label"]["data"][0] in {"sadness", "joy", "love", "anger", "fear", "surprise"}


def test_round_trip_equals_runner(server, tiny_artifacts, data_dir):
    texts = list(load_split(data_dir, "test").texts[:40])
    svc = ClassifierService(tiny_artifacts, "ort", "fp32", threads=1)
    ref = svc.predict(texts)
    svc.close()
    c = http.InferenceServerClient(server.url)
    g = grpc.InferenceServerClient(server.grpc_url)
    try:
        for mod, client in ((http, c), (grpc, g)):
            got = [infer_texts(mod, client, "classifier", texts[s:s + MAX_BATCH])
                   for s in range(0, 40, MAX_BATCH)]
            ids = np.concatenate([x["label_id"].reshape(-1) for x in got])
            probs = np.concatenate([x["probs"] for x in got])
            assert np.array_equal(ids, ref.label_ids)
            np.testing.assert_allclose(probs, ref.probs, atol=1e-4)
            assert [x.decode() for r in got for x in r["label"].reshape(-1)] == ref.labels
            assert probs.shape == (40, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)
        # the bench's bare client (KServe v2 JSON over http.client, one keep-alive connection)
        raw = connect("raw", server.url)
        try:
            got = [raw.infer("classifier", texts[s:s + MAX_BATCH]) for s in range(0, 40, MAX_BATCH)]
            assert np.array_equal(np.concatenate([x["label_id"].reshape(-1) for x in got]),
                                  ref.label_ids)
            np.testing.assert_allclose(np.concatenate([x["probs"] for x in got]), ref.probs,
                                       atol=1e-4)
            assert [x for r in got for x in r["label"].reshape(-1)] == ref.labels
            with pytest.raises(RuntimeError, match="HTTP 4"):  # unknown model: the server's code
                raw.infer("no-such-model", texts[:1])
            # the keep-alive connection still serves after the error response
            assert raw.infer("classifier", texts[:1])["label_id"].reshape(-1)[0] == ref.label_ids[0]
        finally:
            raw.close()
    finally:
        c.close()
        g.close()


def test_overhead_headline_is_the_bare_clients_where_measured():
    """goals(): the serving layer's 1-client overhead is read from the bare http.client client
    (the least client work) when the sweep measured it, tritonclient's HTTP otherwise, and every
    protocol's figure stays in the report."""
    def row(protocol, overhead):
        return {"server": "s", "protocol": protocol, "concurrency": 1, "failed": 0, "requests": 5,
                "p50_overhead_ms": overhead}

    g = goals([row("http", 2.3), row("grpc", 2.1), row("raw", 1.4)], None, None)
    assert g["p50_overhead_ms_1_client"] == 1.4 and g["p50_overhead_headline_protocol"] == "raw"
    assert g["p50_overhead_ms_1_client_by_protocol"] == {"http": 2.3, "grpc": 2.1, "raw": 1.4}
    g = goals([row("grpc", 2.1), row("http", 2.3)], None, None)
    assert g["p50_overhead_ms_1_client"] == 2.3 and g["p50_overhead_headline_protocol"] == "http"


def test_dynamic_batching_groups_concurrent_requests(server, data_dir):
    texts = list(load_split(data_dir, "test").texts[:32])
    stats = http.InferenceServerClient(server.url)
    before = server_batches(stats, "classifier")
    errors = []

    def one(i):
        c = http.InferenceServerClient(server.url)
        try:
            infer_texts(http, c, "classifier", [texts[i]])
        except Exception as exc:
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server_batches(stats, "classifier")
    stats.close()
    assert not errors
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16 and executions < 16  # a server batch larger than 1


# (body, expected HTTP codes, fragment of the message). Our model answers the text checks
# (400); Triton itself answers the input name, datatype and batch-size checks (400) and a body
# that is not JSON, which tritonserver 2.51 answers with 500 "failed to parse the request JSON
# buffer" before any model sees it (documented in the README).
@pytest.mark.parametrize("body, codes, fragment", [
    (kserve_json([""]), {400}, "empty or whitespace"),
    (kserve_json(["   \t "]), {400}, "empty or whitespace"),
    (kserve_json(["hello"], name="txt"), {400}, "txt"),
    (kserve_json([1, 2], datatype="INT64"), {400}, "INT64"),
    (kserve_json(["x"] * (MAX_BATCH + 1)), {400}, "batch"),
    (b"this is not json", {500}, "failed to parse the request JSON"),
    # a second text for a model of single texts (the tiny task is not a pair task)
    (json.dumps({"inputs": [{"name": n, "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}
                            for n in ("text", "text_pair")]}).encode(), {400}, "text_pair"),
])
def test_hostile_requests_get_clear_errors_and_server_keeps_working(server, body, codes, fragment):
    code, text = post(server.url, body)
    assert code in codes, (code, text)
    assert fragment.lower() in text.lower() and "Traceback" not in text
    good(server)


def test_invalid_utf8_is_rejected_with_400(server):
    c = http.InferenceServerClient(server.url)
    x = np.array([[b"caf\xe9 \xff\xfe"]], dtype=np.object_)
    inp = http.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(x)
    with pytest.raises(Exception, match="not valid UTF-8") as e:
        c.infer("classifier", [inp])
    assert "400" in str(e.value) and "Traceback" not in str(e.value)
    c.close()
    good(server)


def test_one_megabyte_text_is_truncated_and_served(server, tiny_artifacts):
    """~1 MB of text is truncated to the max length like the evaluator does: the answer equals
    the in-process prediction for the same text, which equals that of its first 62 tokens."""
    text = "so happy " * 116_000
    code, body = post(server.url, kserve_json([text]))
    assert code == 200, body[:300]
    outs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    svc = ClassifierService(tiny_artifacts, "ort", "fp32", threads=1)
    try:
        full = svc.predict([text])
        short = svc.predict(["so happy " * 31])  # 62 word tokens + [CLS] + [SEP] = max length 64
    finally:
        svc.close()
    assert full.truncated == 1 and short.truncated == 0
    assert outs["label_id"] == [int(full.label_ids[0])] == [int(short.label_ids[0])]
    np.testing.assert_allclose(outs["probs"], full.probs.ravel(), atol=1e-4)
    np.testing.assert_allclose(full.probs, short.probs, atol=1e-5)
    good(server)


def test_bad_request_does_not_fail_good_ones_batched_with_it(server, data_dir):
    texts = list(load_split(data_dir, "test").texts[:12])
    results: dict[int, tuple[int, str]] = {}

    def send(i, payload):
        results[i] = post(server.url, kserve_json([payload]))

    jobs = [(i, t) for i, t in enumerate(texts)] + [(100, ""), (101, " ")]
    threads = [threading.Thread(target=send, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i][0] == 200 for i in range(12)), results
    assert results[100][0] == 400 and results[101][0] == 400


def test_ready_only_while_serving_and_sigterm_lets_inflight_finish(tiny_artifacts, tmp_path, data_dir):
    repo = tmp_path / "repo"
    # a 2 s queue delay keeps the request in flight (queued in the dynamic batcher) when SIGTERM
    # arrives
    write_local_repo(repo, ServeConfig(max_batch=MAX_BATCH, queue_delay_us=2_000_000, threads=1),
                     tiny_artifacts)
    ports = free_ports()
    assert not ready(ports.http)
    s = TritonServer(repo, ports, start_timeout_s=240).start()
    assert ready(ports.http)
    texts = list(load_split(data_dir, "test").texts[:MAX_BATCH])
    out: dict[str, object] = {}

    def inflight():
        out["r"] = post(s.url, kserve_json(texts[:1]))

    t = threading.Thread(target=inflight)
    t.start()
    time.sleep(0.7)
    code = s.stop()
    t.join()
    assert out["r"][0] == 200  # type: ignore[index]
    assert code == 0 and not ready(ports.http)


def test_port_in_use_and_missing_artifact_get_one_line_errors(tiny_artifacts, tmp_path, server):
    repo = tmp_path / "repo"
    write_local_repo(repo, ServeConfig(), tiny_artifacts)
    other = free_ports()
    busy = TritonServer(repo, Ports(server.ports.http, other.grpc, other.metrics))
    with pytest.raises(ServerError, match=f"port {server.ports.http} is already in use"):
        busy.start()
    # a GPU-only engine is refused with what the local server can serve instead
    with pytest.raises(UserError, match="not served by the local server.*ort/qat"):
        write_local_repo(tmp_path / "r2", ServeConfig(backend="trt", variant="qat"), tiny_artifacts)
    # a servable variant whose artifact is gone: the manifest says so before any server starts
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    v = find_variant("ort", "qat")
    target = art / Manifest(art).entries[v.artifact]["path"]
    target.unlink()
    with pytest.raises(ArtifactError, match="not built|missing"):
        write_local_repo(tmp_path / "r3", ServeConfig(backend="ort", variant="qat"), art)


def test_decode_texts_rules():
    assert decode_texts([np.array([b"ok"], dtype=object), "fine"]) == ["ok", "fine"]
    for bad, msg in (([b""], "empty"), ([b"\xff"], "UTF-8"), ([3], "int"), ([], "no texts"),
                     ([b"a" * ((1 << 20) + 1)], "limit")):
        with pytest.raises(InputError, match=msg):
            decode_texts(bad)


def test_config_pbtxt_files_parse(tiny_artifacts, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    write_local_repo(tmp_path / "local", ServeConfig(instances=2), tiny_artifacts)
    info = write_ngc_repo(tmp_path / "ngc", tiny_artifacts, ServeConfig(backend="ort", variant="qat"))
    configs = {}
    for path in sorted(tmp_path.rglob("config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        configs[f"{path.parent.parent.name}/{cfg.name}"] = cfg
    local = configs["local/classifier"]
    assert local.backend == "python" and local.instance_group[0].count == 2
    assert local.dynamic_batching.max_queue_delay_microseconds == ServeConfig().queue_delay_us
    assert [(o.name, list(o.dims)) for o in local.output] == [("label", [1]), ("label_id", [1]),
                                                              ("probs", [6])]
    ens = configs["ngc/classifier"]
    assert ens.platform == "ensemble" and info["serves"] == "classifier_ort_qat"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["tokenizer", "classifier_ort_qat",
                                                                   "postprocess"]
    onnx_cfg = configs["ngc/classifier_ort_qat"]
    assert onnx_cfg.backend == "onnxruntime" and all(list(i.dims) == [-1] for i in onnx_cfg.input)
    assert onnx_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "ngc" / "classifier_ort_qat" / "1" / "model.onnx").is_file()
    assert (tmp_path / "ngc" / "tokenizer" / "1" / "tokenizer.json").is_file()
    # a typo in a config is a parse error here, not a failed deployment
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch_sise: 8\n', model_config_pb2.ModelConfig())


def test_ngc_tokenizer_encodes_like_the_project(tiny_artifacts, data_dir, tmp_path, monkeypatch):
    """The NGC tokenizer model (tokenizers library only) gives the evaluator's exact ids, padded
    with the tokenizer's pad id to one bucket width per execution."""
    import importlib.util
    import sys

    # the model puts its project/ copy first on sys.path: undone after the test, so processes
    # spawned by later tests (they inherit sys.path) import the real `common`
    monkeypatch.setattr(sys, "path", list(sys.path))

    from common.feeds import encode
    from common.modelsource import load_tokenizer

    write_ngc_repo(tmp_path / "ngc", tiny_artifacts, ServeConfig(backend="ort", variant="fp32"))
    path = tmp_path / "ngc" / "tokenizer" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("ngc_tokenizer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    texts = list(load_split(data_dir, "test").texts[:20]) + ["word " * 200]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ref_tok = load_tokenizer(Path(tiny_artifacts) / "baseline")
    got = mod.encode_rows(tok, texts, 64, ref_tok.pad_token_id)
    want = encode(ref_tok, texts, 64)
    assert got.truncated == want.truncated >= 1
    assert all(np.array_equal(a, b) for a, b in zip(got.ids, want.ids, strict=True))
    width = mod.bucket(int(got.lengths().max()), 64)
    # the length buckets of common/buckets.py (the CUDA-graph runner's and TensorRT's too)
    assert width == 64 and [mod.bucket(n, 64) for n in (1, 8, 16, 17, 33, 64)] == [16, 16, 16, 32, 64, 64]
    feed = got.batch(list(range(len(texts))), names, pad_to=width)
    ref = want.batch(list(range(len(texts))), names, pad_to=width)
    for n in names:
        assert np.array_equal(feed[n], ref[n]), n


def test_bench_sweeps_server_configs_measures_overhead_and_recommends(tiny_artifacts, data_dir,
                                                                        tmp_path):
    from deploy.bench import BenchConfig, label, run_bench, write_bench_report
    from evaluate.compare import write_comparison

    cfg = BenchConfig(serve=ServeConfig(max_batch=MAX_BATCH, threads=1), queue_delays_us=(0, 2000),
                      layouts=("1x2",), spins=(True, False), concurrency=(1, 8),
                      protocols=("http",), requests_per_point=24, seconds_per_point=20,
                      data=str(data_dir), artifacts=str(tiny_artifacts),
                      out=str(tmp_path), agreement_rows=64)
    assert [label(p) for p in cfg.points()] == [
        "1x2, no batcher", "1x2, batcher 0 us", "1x2, batcher 2000 us", "1x2 no spin, no batcher",
        "1x2 no spin, batcher 0 us", "1x2 no spin, batcher 2000 us"]
    r = run_bench(cfg)
    assert len(r["sweep"]) == 6 * 2  # server configs x clients
    # each server point is compared with an in-process runner of the same threads and spin
    assert {(v["threads"], v["spin"]) for v in r["in_process"].values()} == {(2, True), (2, False)}
    for row in r["sweep"]:
        assert row["requests"] == 24 and row["failed"] == 0 and row["throughput_rps"] > 0
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        # the server really worked: its processes spent CPU on these requests
        assert row["server_cpu_ms_per_request"] > 0 and row["server_cpu_over_in_process"] > 0
        if row["dynamic_batching"] is False:
            assert row["mean_server_batch"] == 1.0  # no batching without the dynamic batcher
        assert row["client_cpu_ms_per_request"] > 0  # the clients' own CPU, measured apart
        if row["concurrency"] == 1:
            # paired: the in-process reference timed on this point's own sentences, in blocks
            # between its requests, and the overhead taken against that
            ref = row["in_process_interleaved"]
            assert ref["n"] == row["requests"] and ref["cpu_ms_per_inference"] > 0
            assert row["p50_overhead_ms"] == pytest.approx(row["latency_ms"]["p50"] - ref["p50_ms"])
        else:
            assert "in_process_interleaved" not in row
        # Triton's own per-request phases: each positive, and together inside the request time
        ph = row["server_phase_ms"]
        assert all(ph[k] > 0 for k in ("success", "compute_input", "compute_infer", "compute_output"))
        assert ph["queue"] + ph["compute_input"] + ph["compute_infer"] + ph["compute_output"] \
            <= ph["success"] * 1.01
        assert ph["success"] < row["latency_ms"]["mean"]  # the client waits for more than that
    assert max(x["mean_server_batch"] for x in r["sweep"] if x["dynamic_batching"]) > 1.0
    best = r["recommended"]
    off_p50 = next(x["latency_ms"]["p50"] for x in r["sweep"]
                   if x["server"] == "1x2, no batcher" and x["concurrency"] == 1)
    assert best["reference"] == "1x2, no batcher"  # spinning (ORT's default) is the reference
    cands = {x["server"] for x in r["sweep"] if x["concurrency"] == 1
             and x["latency_ms"]["p50"] <= off_p50 + 1.0}
    assert best["server"] in cands and best["throughput_rps"] == max(
        x["throughput_rps"] for x in r["sweep"] if x["concurrency"] == 8 and x["server"] in cands)
    assert r["agreement"]["n"] == 64 and r["agreement"]["top1_pct"] == 100.0
    assert all(v["cpu_ms_per_inference"] > 0 for v in r["in_process"].values())
    paths = write_bench_report(r, tmp_path)
    saved = json.loads(paths["json"].read_text())
    for key in ("backend", "variant", "device", "sweep", "agreement", "recommended", "in_process"):
        assert key in saved
    md = paths["md"].read_text()
    assert paths["png"].stat().st_size > 0 and "## Recommended configuration" in md
    assert "| 1x2 no spin, batcher 2000 us | http | 8 |" in md and "2 thread(s) (no spin)" in md
    assert "| 1x2 no spin, no batcher | http | " in md.split("request's time goes")[1]
    from deploy.bench_report import plot_rows, plot_title

    protocol, rows = plot_rows(r)  # the plot names the protocol its bars were measured over
    assert protocol == "http" and {x["protocol"] for x in rows} == {"http"}
    assert "over HTTP" in plot_title(r, protocol) and "configuration" in plot_title(r, protocol)
    # listed by the comparison: it measured the artifact the manifest holds
    assert saved["made_by"]["artifact"] == "onnx-fp32"
    comparison = write_comparison(tmp_path, [], artifacts=tiny_artifacts)
    assert "[serve-ort-fp32.md](serve-ort-fp32.md)" in comparison["md"].read_text()


def test_serving_a_batch_dependent_variant_with_the_batcher_warns(tiny_artifacts, tmp_path, capsys,
                                                                  monkeypatch):
    import deploy.__main__ as cli

    class Stop(Exception):
        pass

    def no_server(*a, **k):
        raise Stop  # the warning is printed before any server starts

    monkeypatch.setattr(cli, "write_local_repo", no_server, raising=False)
    import deploy.triton_repo

    monkeypatch.setattr(deploy.triton_repo, "write_local_repo", no_server)
    for variant, warns in (("dynamic", True), ("ptq", False)):
        with pytest.raises(Stop):
            cli.main(["serve", "--variant", variant, "--dynamic-batching", "--artifacts",
                      str(tiny_artifacts), "--repo", str(tmp_path / "r")])
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
        assert (len(err) == 1 and "batch-dependent" in err[0]) == warns


@pytest.mark.parametrize("backend, variant", [("torch", "fp32"), ("ort", "qat"), ("qlora", "nf4")])
def test_other_backends_serve_the_same_contract(tiny_artifacts, data_dir, tmp_path, backend, variant):
    texts = list(load_split(data_dir, "test").texts[:MAX_BATCH])
    svc = ClassifierService(tiny_artifacts, backend, variant, threads=1)
    ref = svc.predict(texts)
    svc.close()
    repo = tmp_path / "repo"
    write_local_repo(repo, ServeConfig(backend=backend, variant=variant, max_batch=MAX_BATCH,
                                       threads=1), tiny_artifacts)
    with TritonServer(repo, free_ports(), start_timeout_s=240) as s:
        c = http.InferenceServerClient(s.url)
        try:
            got = infer_texts(http, c, "classifier", texts)
        finally:
            c.close()
    assert np.array_equal(got["label_id"].reshape(-1), ref.label_ids)
    np.testing.assert_allclose(got["probs"], ref.probs, atol=1e-4)


def test_spin_setting_reaches_the_ort_session_and_only_ort_takes_it(tiny_artifacts, tmp_path, data_dir):
    """spin=False is ONNX Runtime's allow_spinning=0 in the real session, predicts the same, is
    written into the served model's parameters, and is refused for backends without it."""
    from deploy.bench import BenchConfig, label
    from deploy.factories import make_runner
    from deploy.runner import RunnerError
    from deploy.service import ClassifierService

    texts = load_split(data_dir, "test").texts[:16]
    preds = {}
    for spin in (True, False):
        svc = ClassifierService(tiny_artifacts, "ort", "fp32", threads=2, spin=spin)
        opts = svc.runner.session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spin))
        preds[spin] = svc.predict(texts).probs
        svc.close()
    np.testing.assert_allclose(preds[True], preds[False], atol=1e-6)
    with pytest.raises(RunnerError, match="ONNX Runtime setting"):
        make_runner("torch", "fp32", tiny_artifacts, spin=False)
    import argparse

    from deploy.__main__ import _serve_args, _serve_config

    p = argparse.ArgumentParser()
    _serve_args(p)
    with pytest.raises(ConfigError, match="ONNX Runtime setting"):
        _serve_config(p.parse_args(["--backend", "torch", "--no-spin"]))
    assert _serve_config(p.parse_args([])).spin is False  # the measured CPU default for ort
    assert _serve_config(p.parse_args(["--spin"])).spin is True
    cfg = write_local_repo(tmp_path / "repo", ServeConfig(spin=False), tiny_artifacts)
    assert 'key: "spin"\n  value {\n    string_value: "0"' in cfg.read_text()
    # other backends have no spin setting: their Runner is built with the default
    cfg = write_local_repo(tmp_path / "repo2", ServeConfig(backend="torch", spin=False), tiny_artifacts)
    assert 'key: "spin"\n  value {\n    string_value: "1"' in cfg.read_text()
    # one thread per instance has no intra-op pool to spin: not swept twice
    bc = BenchConfig(layouts=("1x2", "2x1"), queue_delays_us=(0,))
    assert [label(p) for p in bc.points()] == ["1x2, no batcher", "1x2, batcher 0 us",
                                               "1x2 no spin, no batcher", "1x2 no spin, batcher 0 us",
                                               "2x1, no batcher", "2x1, batcher 0 us"]
