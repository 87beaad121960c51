"""Export a fine-tuned classifier to ONNX (dynamic batch and sequence) and validate it.

Validation runs the exported graph in ONNX Runtime and the checkpoint in PyTorch on real test
sentences, at batch 1 (unpadded) and in padded batches, and fails loudly when the largest
|delta logit| exceeds the tolerance or any top-1 prediction differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.data import DEFAULT_DATASET, load_split
from common.feeds import Encoded, batches, encode


class ExportValidationError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    max_length: int = 128
    atol: float = 1e-3  # FP32 vs FP32: differences come from kernel order only (~1e-5 measured)
    # the fused graph's kernels (fused attention, SkipLayerNorm) sum in another order
    fused_atol: float = 2e-3
    n_validate: int = 128  # real test sentences used for the check
    data: str = DEFAULT_DATASET


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in init]


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(ref - got).max()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "n": int(ref.shape[0])}


def torch_fn(model):
    """Logits function of a PyTorch model over a numpy feed."""
    import torch

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()

    return run


def ort_fn(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(["logits"], feed)[0]


def check_agreement(ref, cand, enc: Encoded, names: list[str], what: str, atol: float | None,
                    min_top1: float, batch_size: int = 16) -> dict:
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


def validate_against_torch(model, onnx_path: Path, enc: Encoded, names: list[str],
                           atol: float, min_top1: float = 1.0) -> dict:
    return check_agreement(torch_fn(model), ort_fn(onnx_path), enc, names,
                           f"{onnx_path}: ONNX Runtime disagrees with PyTorch", atol, min_top1)


def validation_inputs(checkpoint: Path, cfg: ExportConfig) -> tuple[Encoded, list[str]]:
    """The first n_validate real test sentences, tokenized like every other stage."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.loop import model_input_names

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    test = load_split(cfg.data, "test").head(cfg.n_validate)
    names = json.loads((Path(checkpoint) / "recipe.json").read_text()).get("input_names") or \
        list(model_input_names(AutoModelForSequenceClassification.from_pretrained(checkpoint)))
    return encode(tokenizer, test.texts, cfg.max_length), list(names)


def torch_to_onnx(model, tokenizer, names: list[str], out_path: Path, opset: int,
                  max_length: int) -> None:
    """torch.onnx export with dynamic batch and sequence axes, output `logits`."""
    import torch

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


def export_onnx(checkpoint: Path, out_path: Path, cfg: ExportConfig) -> dict:
    """torch.onnx export (TorchScript exporter) + onnx.checker + validation. Returns a report."""
    import onnx
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.loop import model_input_names

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    names = list(model_input_names(model))
    torch_to_onnx(model, tokenizer, names, out_path, cfg.opset, cfg.max_length)
    onnx.checker.check_model(str(out_path))
    enc, _ = validation_inputs(checkpoint, cfg)
    report = validate_against_torch(model, out_path, enc, names, cfg.atol)
    print(f"  validated: max |delta logit| {report['max_abs_diff']:.2e}, top-1 agreement "
          f"{100 * report['top1_agreement']:.1f}% on {report['n']} test inputs")
    return {"validation": report, "input_names": names, "export": asdict(cfg)}
