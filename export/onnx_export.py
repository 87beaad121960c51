"""Export a fine-tuned classifier to ONNX (dynamic batch and sequence) and validate it.

Validation runs the exported graph in ONNX Runtime and the checkpoint in PyTorch on real test
sentences, at batch 1 (unpadded) and in padded batches, and fails loudly when the largest
|delta logit| exceeds the tolerance or any top-1 prediction differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc, location
from common.data import DEFAULT_DATASET
from common.errors import UserError
from common.feeds import Encoded, batches

Logits = Callable[[dict[str, np.ndarray]], np.ndarray]


class ExportValidationError(UserError, RuntimeError):
    """An exported graph disagrees with its reference beyond the tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    atol: float = doc(1e-3, "max |delta logit| vs PyTorch (FP32 vs FP32 differs by kernel "
                      "order only, ~1e-5 measured)")
    n_validate: int = doc(128, "real test sentences used for the check")
    data: str = location(DEFAULT_DATASET, "where the validation rows come from")

    def __post_init__(self) -> None:
        # 13: per-channel QuantizeLinear, which the quantized graphs made from it need
        check_ranges(self, opset=">= 13", atol=">= 0", n_validate=">= 1")


@dataclass(frozen=True)
class Validation:
    """Which real sentences an agreement check runs on (the first n of the test split)."""

    n: int
    data: str


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    return {"max_abs_diff": float(np.abs(ref - got).max()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "n": int(ref.shape[0])}


def ort_fn(path: Path) -> Logits:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(["logits"], feed)[0]


def check_agreement(ref: Logits, cand: Logits, enc: Encoded, names: list[str], what: str,
                    atol: float | None, min_top1: float, batch_size: int = 16) -> dict[str, Any]:
    """Run two logits functions on the same real inputs (16 unpadded batch-1 feeds, then padded
    batches); raise ExportValidationError if max |delta logit| > atol (when given) or top-1
    agreement < min_top1."""
    plans = [[i] for i in range(min(16, len(enc)))] + batches(len(enc), batch_size)
    a, b = [], []
    for p in plans:
        feed = enc.batch(p, names)
        a.append(ref(feed))
        b.append(cand(feed))
    report = compare_logits(np.concatenate(a), np.concatenate(b))
    report["atol"], report["min_top1"] = atol, min_top1
    if (atol is not None and report["max_abs_diff"] > atol) or report["top1_agreement"] < min_top1:
        raise ExportValidationError(
            f"{what}: max |delta logit| {report['max_abs_diff']:.2e} (tolerance {atol}), top-1 "
            f"agreement {100 * report['top1_agreement']:.2f}% (need {100 * min_top1:.1f}%) on "
            f"{report['n']} real test inputs")
    return report


def validation_inputs(checkpoint: Path, v: Validation) -> tuple[Encoded, list[str]]:
    """The first v.n real test rows (texts, or pairs for a pair task), tokenized as the
    checkpoint was trained."""
    from common.checkpoint import TextEncoder
    from common.task import load_split

    te = TextEncoder.from_checkpoint(checkpoint)
    return te.encode_split(load_split(v.data, "test").head(v.n)), list(te.input_names)


def torch_to_onnx(model: Any, tokenizer: Any, names: list[str], out_path: Path, opset: int,
                  max_length: int) -> None:
    """torch.onnx export with dynamic batch and sequence axes, output `logits`."""
    import torch

    from common.feeds import encode

    sample = encode(tokenizer, ["a sample sentence to trace", "and another"], max_length)
    feed = sample.batch([0, 1], names)
    dyn = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    dyn["logits"] = {0: "batch_size"}
    # dynamo=False: the TorchScript exporter gives a plain opset-17 graph that ONNX Runtime's
    # quantizer and transformers optimizer recognise (the dynamo exporter's graph differs), and
    # it writes torch.fake_quantize_* as QuantizeLinear/DequantizeLinear pairs.
    torch.onnx.export(model, tuple(torch.from_numpy(feed[n]) for n in names), str(out_path),
                      input_names=names, output_names=["logits"], dynamic_axes=dyn,
                      opset_version=opset, do_constant_folding=True, dynamo=False)


def export_onnx(checkpoint: Path, out_path: Path, cfg: ExportConfig) -> dict[str, Any]:
    """torch.onnx export (TorchScript exporter) + onnx.checker + validation. Returns a report."""
    import onnx
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from common.checkpoint import read_recipe
    from common.torch_infer import torch_fn

    meta = read_recipe(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    names = list(meta["input_names"])
    torch_to_onnx(model, AutoTokenizer.from_pretrained(checkpoint), names, out_path, cfg.opset,
                  int(meta["max_length"]))
    onnx.checker.check_model(str(out_path))
    enc, _ = validation_inputs(checkpoint, Validation(cfg.n_validate, cfg.data))
    report = check_agreement(torch_fn(model), ort_fn(out_path), enc, names,
                             f"{out_path}: ONNX Runtime disagrees with PyTorch", cfg.atol, 1.0)
    print(f"  validated: max |delta logit| {report['max_abs_diff']:.2e}, top-1 agreement "
          f"{100 * report['top1_agreement']:.1f}% on {report['n']} test inputs")
    return {"validation": report, "input_names": names}
