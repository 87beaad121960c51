"""`make gpu-check`: one line and exit 0 where there is no GPU; where there is one, a row per GPU
variant, each scored or skipped with the reason (planned here with the machine's facts faked)."""

import pytest

from evaluate.gpu_check import GPU_ROWS, plan


def test_without_a_gpu_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: the one-line path is for CPU machines")
    from evaluate.__main__ import main

    assert main(["--gpu-check", "--artifacts", str(tmp_path), "--out", str(tmp_path / "gpu")]) == 0
    out = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(out) == 1 and out[0].startswith("gpu-check: no CUDA GPU here")
    assert not (tmp_path / "gpu").exists()


def test_rows_and_reasons_on_a_gpu_machine():
    everything = {"baseline", "qlora", "onnx-fp32", "onnx-ptq", "trt-fp32", "trt-fp16", "trt-int8",
                  "trt-ptq", "trt-qat"}
    assert plan(everything, cuda=False, ort_providers=[], trt=(True, ""), bnb=True) == []
    rows = plan(everything, True, ["CUDAExecutionProvider", "CPUExecutionProvider"], (True, "ok"), True)
    assert [(b, v) for b, v, _ in rows] == list(GPU_ROWS) and all(w is None for *_, w in rows)
    rows = {(b, v): w for b, v, w in plan(everything - {"trt-int8"}, True, ["CPUExecutionProvider"],
                                           (False, "no runtime"), False)}
    assert "onnxruntime-gpu" in rows[("ort", "fp32")] and "CPUExecutionProvider" in rows[("ort", "fp32")]
    assert rows[("trt", "int8")] == "TensorRT is not usable: no runtime"
    assert "bitsandbytes" in rows[("qlora", "nf4")]
    assert rows[("torch", "fp32")] is None and rows[("torch", "fp16")] is None
    rows = {(b, v): w for b, v, w in plan({"baseline"}, True, ["CUDAExecutionProvider"], (True, ""),
                                           True)}
    assert rows[("trt", "qat")] == "trt-qat is not built here (run `make engines` first)"
