"""The GPU rows against what they compress, where a CUDA GPU is (marked `gpu`; they skip with the
reason elsewhere and run in the NGC image and the offline GPU bundle): CUDA-graph replay of the
FP16 checkpoint answers as eager FP16 does for every family that captures; a family that cannot
is refused in one line (checked here on the CPU too); QLoRA in bf16 answers as in FP32."""

from __future__ import annotations

import numpy as np
import pytest

from common.feeds import encode
from common.modelsource import load_tokenizer
from common.task import load_split
from tests.tiny_models import FAMILIES, build_tiny

CAPTURE = [f for f in FAMILIES if f != "deberta-v2"]


def _fp16(family, data_dir, tmp_path):
    from export.torch_fp16 import TorchFp16Config, save_fp16

    model = build_tiny(family, data_dir, tmp_path / family)
    out = tmp_path / f"{family}-fp16"
    save_fp16(model, out, TorchFp16Config())
    load_tokenizer(model).save_pretrained(out)
    return out


def _feeds(folder, data_dir, names, n=24):
    enc = encode(load_tokenizer(folder), load_split(data_dir, "test").texts[:n], 64)
    return [enc.batch([i], names) for i in range(n)] + [enc.batch(list(range(n)), names)]


def _input_names(folder):
    from common.arch import load_spec

    return load_spec(folder).input_names


@pytest.mark.gpu
@pytest.mark.parametrize("family", CAPTURE)
def test_graph_replay_answers_as_eager_fp16(family, data_dir, tmp_path):
    from deploy.graphs_runner import CudaGraphRunner
    from deploy.torch_runner import TorchRunner

    folder = _fp16(family, data_dir, tmp_path)
    names = _input_names(folder)
    eager = TorchRunner(folder, names, 1, device="cuda", variant="fp16", dtype="float16")
    graphs = CudaGraphRunner(folder, names, 1, 64, device="cuda")
    with eager, graphs:
        assert graphs.slots and all(g is not None for g, _, _ in graphs.slots.values())
        for feed in _feeds(folder, data_dir, names):
            want, got = eager.infer(feed), graphs.infer(feed)
            assert got.shape == want.shape
            np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
            np.testing.assert_allclose(got, want, atol=2e-2)


def test_a_family_that_cannot_capture_is_refused_in_one_line(data_dir, tmp_path):
    from deploy.graphs_runner import CudaGraphRunner
    from deploy.runner import RunnerError

    folder = _fp16("deberta-v2", data_dir, tmp_path)
    with pytest.raises(RunnerError) as e:
        CudaGraphRunner(folder, _input_names(folder), 1, 64, device="cuda").load()
    assert "cannot capture this model (deberta-v2: its eager forward copies" in str(e.value)
    assert "score torch/fp16 (eager) instead" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.gpu
def test_qlora_in_bf16_answers_as_in_fp32(tiny_artifacts, data_dir):
    import torch

    from deploy.factories import make_runner
    from deploy.qlora_runner import set_compute_dtype

    with make_runner("qlora", "nf4", tiny_artifacts, threads=1, device="cuda") as r:
        feeds = _feeds(tiny_artifacts / "qlora", data_dir, r.input_names)
        bf16 = [r.infer(f) for f in feeds]
        set_compute_dtype(r.model, "float32")
        with torch.no_grad():
            fp32 = [r.infer(f) for f in feeds]
    for got, want in zip(bf16, fp32, strict=True):
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
        np.testing.assert_allclose(got, want, atol=0.1)
