"""Session fixtures: a slice of the shared emotion data, a tiny random BERT + tokenizer on disk,
and artifacts built from them by the real pipeline (no downloads, no checked-in weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMOTION_DATA", REPO.parent / "shared" / "data" / "emotion"))
SLICES = {"train": 320, "validation": 160, "test": 160}
# the names of the shared data's label ids (its README), declared as a user of the local copy does
EMOTION_LABELS = "sadness,joy,love,anger,fear,surprise"


def pytest_collection_modifyitems(config, items):
    from common.trt import tensorrt_status

    # TensorRT's own probe, not find_spec: tensorrt-stubs installs an importable `tensorrt`
    # folder of .pyi files, and a CUDA machine without the runtime must skip, not fail.
    trt_ok, trt_why = tensorrt_status()
    try:
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - a broken CUDA install
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)"))
        if "trt" in item.keywords and not trt_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and a CUDA GPU: {trt_why}"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "test.jsonl").is_file():
        pytest.fail(f"the emotion data is expected at {SHARED_DATA} "
                    "(set EMOTION_DATA to the folder holding train/validation/test.jsonl)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_dir(shared_data, tmp_path_factory) -> Path:
    """The first rows of each split, order kept."""
    out = tmp_path_factory.mktemp("emotion-slice")
    for split, n in SLICES.items():
        lines = (shared_data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(data_dir, tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 64) and a WordPiece tokenizer whose vocab is the slice's
    most frequent words (a real BertTokenizerFast, built offline)."""
    from tests.tiny_models import build_tiny

    return build_tiny("bert", data_dir, tmp_path_factory.mktemp("tiny-bert"))


def tiny_build_config(model_dir: Path, data_dir: Path, artifacts: Path,
                      class_weights: str = "sqrt-inverse", **overrides):
    """The real pipeline's configs, made small: few rows, few steps, short sequences. The
    baseline's class weights are the default recipe's; the family matrix passes "none" (see
    tests/test_families.py)."""
    import dataclasses

    from common.task import TaskSpec
    from engines.pipeline import BuildConfig
    from train.finetune import FinetuneConfig
    from train.qat import QatConfig
    from train.qlora import QloraConfig

    d = BuildConfig()
    model = str(model_dir)
    task = overrides.pop("task", None) or TaskSpec(data=str(data_dir), labels=EMOTION_LABELS)
    kw = {"model": model, "task": task, "artifacts": str(artifacts),
          "finetune": FinetuneConfig(model=model, epochs=2, lr=5e-4, batch_size=32,
                                     max_length=64, seed=0, class_weights=class_weights),
          "export": dataclasses.replace(d.export, n_validate=48),
          "fuse": dataclasses.replace(d.fuse, n_validate=48),
          "dynamic": dataclasses.replace(d.dynamic, n_validate=48),
          # the tiny graph is mostly Q/DQ scales and structure: no size budget for it
          "static": dataclasses.replace(d.static, calib_rows=(32, 64), latency_rounds=2,
                                        max_size_ratio=1.0, spread_seeds=(1,)),
          "qlora": QloraConfig(model=model, epochs=1, lr=5e-4, batch_size=32,
                               max_length=64, seed=0),
          "qat": QatConfig(epochs=1, lr=1e-4, batch_size=32, eval_every=5, seed=0)}
    kw.update(overrides)
    return BuildConfig(**kw)


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_model_dir, data_dir, tmp_path_factory) -> Path:
    """Artifacts for the tiny model built by the real `make engines` pipeline."""
    from engines.pipeline import build_all

    art = tmp_path_factory.mktemp("artifacts")
    build_all(tiny_build_config(tiny_model_dir, data_dir, art))
    return art
