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
