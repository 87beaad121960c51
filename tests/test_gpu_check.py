"""`make gpu-check`: one line and exit 0 where there is no GPU; where there is one, a row per GPU
variant of the registry, each scored or skipped with the reason (planned here with the machine's
facts faked), each row isolated (a failing row is one line, the others still score)."""

import json
import shutil

import pytest

from common.variants import variants
from evaluate.gpu_check import plan, score_rows

GPU_ROWS = [v.key for v in variants() if v.gpu_row]


def test_without_a_gpu_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: the one-line path is for CPU machines")
    from evaluate.__main__ import main

    assert main(["--gpu-check", "--artifacts", str(tmp_path), "--out", str(tmp_path / "gpu")]) == 0
    out = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(out) == 1 and out[0].startswith("gpu-check: no CUDA GPU here")
    assert not (tmp_path / "gpu").exists()


def _machine(monkeypatch, cuda: bool, providers: list[str], trt: tuple[bool, str], bnb: bool):
    import importlib.util

    import onnxruntime
    import torch

    import common.trt

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(common.trt, "tensorrt_status", lambda: trt)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" and not bnb
                        else real_find_spec(name, *a))


def manifest_of(root, built, skipped=None):
    """A real Manifest holding entries for `built` (and skip records for `skipped`)."""
    from common.manifest import Manifest

    m = Manifest(root)
    m.entries = {n: {"path": n, "sha256": "0" * 64, "key": "k"} for n in built}
    m.entries.update({n: {"skipped": why} for n, why in (skipped or {}).items()})
    return m


def test_rows_and_reasons_on_a_gpu_machine(monkeypatch, tmp_path):
    everything = manifest_of(tmp_path, {v.artifact for v in variants()})
    _machine(monkeypatch, True, ["CUDAExecutionProvider", "CPUExecutionProvider"], (True, "ok"), True)
    rows = plan("cuda", everything)
    assert [v.key for v, _ in rows] == GPU_ROWS and all(w is None for _, w in rows)
    assert {"torch/fp16-graphs", "qlora/nf4", "ort/fp32", "trt/fp16"} <= set(GPU_ROWS)
    _machine(monkeypatch, True, ["CPUExecutionProvider"], (False, "no runtime"), False)
    rows = {v.key: w for v, w in plan("cuda", manifest_of(
        tmp_path, {v.artifact for v in variants()} - {"trt-int8"}))}
    assert "onnxruntime-gpu" in rows["ort/fp32"] and "CPUExecutionProvider" in rows["ort/fp32"]
    assert rows["trt/int8"] == "TensorRT is not usable here: no runtime"
    assert "bitsandbytes" in rows["qlora/nf4"]
    assert rows["torch/fp32"] is None and rows["torch/fp16"] is None
    _machine(monkeypatch, True, ["CUDAExecutionProvider"], (True, ""), True)
    rows = {v.key: w for v, w in plan("cuda", manifest_of(
        tmp_path, {"baseline"}, {"trt-fp16": "TensorRT 11 builds no FP16 here"}))}
    assert rows["trt/qat"] == "trt-qat is not built here: run `make engines`"
    # the manifest's own skip reason, as `--all` gives it
    assert rows["trt/fp16"] == "skipped by make engines: TensorRT 11 builds no FP16 here"


def test_a_failing_row_is_one_line_and_the_others_still_score(tiny_artifacts, data_dir, tmp_path):
    """Real rows on the CPU: a corrupt artifact fails its row only; the end is a table and the
    exit code says a row failed."""
    import dataclasses

    from common.variants import find_variant
    from evaluate.__main__ import run_one
    from evaluate.run import EvalConfig

    arts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, arts)
    (arts / "onnx" / "dynamic.onnx").write_bytes(b"not an onnx graph")
    base = EvalConfig(backend="ort", data=str(data_dir), artifacts=str(arts), out=str(tmp_path / "r"),
                      threads=1, limit=16)
    rows = [(find_variant("ort", "fp32"), None), (find_variant("ort", "dynamic"), None),
            (find_variant("torch", "fp32"), None), (find_variant("trt", "fp16"), "no TensorRT")]
    lines: list[str] = []
    check = score_rows(rows, lambda v: run_one(dataclasses.replace(
        base, backend=v.backend, variant=v.variant)), lines.append)
    status = {r["row"]: r["status"] for r in check.rows}
    assert status == {"ort/fp32": "scored", "ort/dynamic": "failed", "torch/fp32": "scored",
                      "trt/fp16": "skipped"}
    failed = [x for x in lines if x.startswith("[failed]")]
    assert len(failed) == 1 and "ort/dynamic" in failed[0] and "\n" not in failed[0]
    assert check.exit_code == 1
    table = check.table()
    assert "| ort/fp32 | scored |" in table and "| ort/dynamic | failed |" in table
    assert "| trt/fp16 | skipped |" in table and "no TensorRT" in table
    scored = json.loads((tmp_path / "r" / "torch-fp32.json").read_text())
    assert scored["n_examples"] == 16 and f"| torch/fp32 | scored | {scored['macro_f1']:.4f} |" in table


def test_a_row_process_that_crashes_hangs_or_fails_is_one_line(tmp_path):
    """Each row runs in its own process: a native crash (abort), a hang (killed at the timeout)
    and an error exit each end as one line naming how, with the log kept; a clean exit is None."""
    import sys

    from evaluate.gpu_check import run_row

    py = [sys.executable, "-c"]
    assert run_row(py + ["print('fine')"], tmp_path / "ok.log", 30) is None
    crash = run_row(py + ["import os; print('loading', flush=True); os.abort()"],
                    tmp_path / "crash.log", 30)
    assert crash.startswith("killed by SIGABRT: loading (log: ") and "\n" not in crash
    hang = run_row(py + ["import time; time.sleep(60)"], tmp_path / "hang.log", 1)
    assert hang == f"no answer after 1 s: killed (log: {tmp_path / 'hang.log'})"
    err = run_row(py + ["import sys; print('10%|#  | 1/10\\r', flush=True); "
                        "raise RuntimeError('CUDA error: an illegal memory access')"],
                  tmp_path / "err.log", 30)
    assert err.startswith("exit 1: RuntimeError: CUDA error: an illegal memory access (log: ")


def test_rows_in_their_own_processes_checked_against_torch_fp32(tiny_artifacts, data_dir,
                                                                tmp_path, monkeypatch):
    """Real rows, each a real `python -m evaluate` child (on the CPU here): torch/fp32 first, the
    others checked against it (agreement, max |dlogit|, paired F1 delta); a corrupt artifact
    fails its row only; the table is rewritten after every row; a row below its precision's
    agreement bound is failed, not published."""
    from common.variants import FP32, find_variant
    from evaluate import gpu_check
    from evaluate.gpu_check import child_command, run_row, score_rows
    from evaluate.run import EvalConfig

    arts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, arts)
    (arts / "onnx" / "dynamic.onnx").write_bytes(b"not an onnx graph")
    out = tmp_path / "gpu"
    base = EvalConfig(data=str(data_dir), artifacts=str(arts), out=str(out), threads=1, limit=16,
                      latency_samples=4)

    def score(v):
        failed = run_row(child_command(base, v, "cpu", out), out / "logs" / f"{v.key}.log", 300)
        if failed:
            raise gpu_check.RowFailed(failed)
        return out / f"{v.backend}-{v.variant}.json"

    seen: list[int] = []
    rows = [(find_variant("torch", "fp32"), None), (find_variant("ort", "fp32"), None),
            (find_variant("ort", "dynamic"), None)]
    check = score_rows(rows, score, lambda s: None, folder=out,
                       written=lambda c: seen.append(len(c.rows)))
    assert seen == [1, 2, 3]
    by = {r["row"]: r for r in check.rows}
    assert [r["status"] for r in check.rows] == ["scored", "scored", "failed"]
    a = by["ort/fp32"]["agreement"]
    assert a["reference"] == "torch/fp32" and a["top1_pct"] == 100.0 and a["bound_pct"] == 99.5
    assert a["max_abs_logit_diff"] < 1e-3 and a["delta"] == 0.0 and a["ci95"] == [0.0, 0.0]
    assert by["ort/dynamic"]["why"].startswith("exit 2: error: ") and "log: " in by["ort/dynamic"]["why"]
    assert "dynamic.onnx" in by["ort/dynamic"]["why"]
    table = check.table()
    assert "| ort/fp32 | scored | " in table and "| 100.00 (99.5) | " in table
    # the same FP32 row against a bound it cannot reach: failed, with why
    monkeypatch.setitem(gpu_check.AGREEMENT_BOUND_PCT, FP32, 100.5)
    check = score_rows(rows[:2], score, lambda s: None, folder=out)
    row = check.rows[1]
    assert row["status"] == "failed" and "below its bound 100.5%: not published" in row["why"]
    assert check.exit_code == 1


def test_all_on_cuda_skips_what_has_no_cuda_path(monkeypatch, tmp_path):
    from evaluate.__main__ import run_all
    from evaluate.run import EvalConfig

    _machine(monkeypatch, True, ["CUDAExecutionProvider", "CPUExecutionProvider"], (True, ""), True)
    import common.variants as cv

    why = cv.unavailable(cv.find_variant("torch", "ptq-dynamic"), "cuda:1")
    assert why == ("torch/ptq-dynamic has no CUDA path (it runs on the CPU only): score it with "
                   "--device cpu")
    assert cv.unavailable(cv.find_variant("torch", "ptq-dynamic"), "cpu") is None
    _, missing = run_all(EvalConfig(device="cuda", artifacts=str(tmp_path)), measure=False)
    assert {"backend": "torch", "variant": "ptq-dynamic", "reason": why} in missing


def test_cuda_n_reaches_onnx_runtime_and_the_identity():
    from deploy.ort_runner import check_provider, provider_options, split_provider
    from deploy.runner import RunnerError
    from evaluate.report import device_line

    assert split_provider("cuda:1") == ("cuda", 1) and split_provider("cpu") == ("cpu", None)
    assert provider_options("cuda:1", "fp32") == {"device_id": "1", "use_tf32": "0"}
    assert provider_options("cuda:1", "ptq") == {"device_id": "1"}
    with pytest.raises(RunnerError, match="cuda:N for GPU N"):
        split_provider("cuda:x")
    with pytest.raises(RunnerError, match="CUDAExecutionProvider is not available"):
        check_provider("cuda:1")  # known, and refused here for what it is: no CUDA EP
    line = device_line({"kind": "cuda", "index": 1, "name": "NVIDIA H100", "memory_gb": 79.1,
                        "compute_capability": "9.0", "driver": "570.86", "cuda_runtime": "12.8"})
    assert line == ("NVIDIA H100 (cuda:1, compute capability 9.0, 79.1 GB, driver 570.86, "
                    "CUDA 12.8)")
