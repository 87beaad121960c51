import shutil

import numpy as np
import pytest

from common.feeds import batches, encode
from common.modelsource import load_tokenizer
from common.task import load_split
from deploy.factories import make_runner
from deploy.ort_runner import OrtRunner
from deploy.runner import Runner, RunnerError


@pytest.fixture(scope="module")
def feeds(tiny_artifacts, data_dir):
    enc = encode(load_tokenizer(tiny_artifacts / "baseline"), load_split(data_dir, "test").texts, 64)
    return enc


def _all_logits(runner, enc):
    return np.concatenate([runner.infer(enc.batch(b, runner.input_names)) for b in batches(len(enc), 16)])


def test_torch_and_ort_agree(tiny_artifacts, feeds):
    with make_runner("torch", "fp32", tiny_artifacts, threads=1) as t, \
            make_runner("ort", "fp32", tiny_artifacts, threads=1) as o:
        assert isinstance(t, Runner) and isinstance(o, Runner)
        lt, lo = _all_logits(t, feeds), _all_logits(o, feeds)
        assert o.info()["active_providers"] == ["CPUExecutionProvider"]
        assert o.info()["threads"] == 1 and t.info()["torch_threads"] == 1
    assert (lt.argmax(-1) == lo.argmax(-1)).all()
    assert np.abs(lt - lo).max() < 1e-4


def test_missing_provider_is_an_error_listing_available(tiny_artifacts):
    r = OrtRunner(tiny_artifacts / "onnx" / "fp32.onnx", provider="cuda")
    with pytest.raises(RunnerError, match=r"CUDAExecutionProvider is not available.*available: .*CPUExecutionProvider"):
        r.load()


def test_infer_before_load_and_bad_feed(tiny_artifacts, feeds):
    r = make_runner("ort", "fp32", tiny_artifacts, threads=1)
    with pytest.raises(RunnerError, match="before load"):
        r.infer(feeds.batch([0]))
    with r:
        with pytest.raises(RunnerError, match="feed lacks"):
            r.infer({"input_ids": feeds.batch([0])["input_ids"]})


def test_corrupt_artifact_is_refused(tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    with (art / "onnx" / "fp32.onnx").open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(RunnerError, match="manifest hash.*make engines"):
        make_runner("ort", "fp32", art)
    (art / "onnx" / "fp32.onnx").unlink()
    with pytest.raises(RunnerError, match="missing.*make engines"):
        make_runner("ort", "fp32", art)


def test_unknown_variant(tiny_artifacts):
    with pytest.raises(RunnerError, match="unknown variant.*known: torch/fp32"):
        make_runner("ort", "nope", tiny_artifacts)
