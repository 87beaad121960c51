"""Session fixtures: a slice of the shared emotion data, a tiny random BERT + tokenizer on disk,
and artifacts built from them by the real pipeline (no downloads, no checked-in weights)."""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMOTION_DATA", REPO.parent / "shared" / "data" / "emotion"))
SLICES = {"train": 320, "validation": 160, "test": 160}


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_trt = importlib.util.find_spec("tensorrt") is not None
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)"))
        if "trt" in item.keywords and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(
                reason="needs TensorRT and a CUDA GPU (run inside the NGC image, see docker/)"))


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
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from common.labels import ID2LABEL, LABEL2ID

    out = tmp_path_factory.mktemp("tiny-bert")
    counts: collections.Counter[str] = collections.Counter()
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        counts.update(re.findall(r"[a-z]+", json.loads(line)["text"].lower()))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz"] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    words = [w for w, _ in counts.most_common(400) if w not in letters]
    vocab = special + letters + words
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(out)

    torch.manual_seed(0)
    # hidden 64: bitsandbytes' CPU 4-bit inference kernel needs rows of whole 64-wide blocks
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=128,
                     num_labels=6, id2label=ID2LABEL, label2id=LABEL2ID)
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


def tiny_build_config(model_dir: Path, data_dir: Path, artifacts: Path, **overrides):
    from engines.pipeline import BuildConfig
    from export.onnx_export import ExportConfig
    from train.finetune import FinetuneConfig
    from train.qat import QatConfig
    from train.qlora import QloraConfig

    ft = FinetuneConfig(model=str(model_dir), data=str(data_dir), epochs=2, lr=5e-4, batch_size=32,
                        max_length=64, seed=0)
    kw = {"model": str(model_dir), "data": str(data_dir), "artifacts": str(artifacts),
          "finetune": ft, "export": ExportConfig(max_length=64, data=str(data_dir), n_validate=48),
          "qlora": QloraConfig(model=str(model_dir), data=str(data_dir), epochs=1, lr=5e-4,
                               batch_size=32, max_length=64, seed=0),
          "qat": QatConfig(data=str(data_dir), epochs=1, lr=1e-4, batch_size=32, eval_every=5,
                           seed=0)}
    kw.update(overrides)
    return BuildConfig(**kw)


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_model_dir, data_dir, tmp_path_factory) -> Path:
    """Artifacts for the tiny model built by the real `make engines` pipeline."""
    from engines.pipeline import build_all

    art = tmp_path_factory.mktemp("artifacts")
    build_all(tiny_build_config(tiny_model_dir, data_dir, art))
    return art
