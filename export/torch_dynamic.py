"""Build step of the PyTorch dynamic-INT8 variant: quantize the fine-tuned checkpoint with
common.torch_dynamic and save its state dict (that file is its size on disk)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TorchDynamicConfig:
    """No knobs: qint8 weights of every layer-stack Linear (common.torch_dynamic); a change to
    what the step makes is a change to its code, which its key fingerprints."""


def build_torch_dynamic(checkpoint: Path, out_path: Path, cfg: TorchDynamicConfig) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from common.torch_dynamic import quantizable_linears, quantize_dynamic_model

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    names = quantizable_linears(model)
    q = quantize_dynamic_model(model)
    with open(out_path, "wb") as f:
        torch.save(q.state_dict(), f)
    return {"quantized_linears": len(names), "kept_fp32": ["embeddings", "LayerNorm", "head"],
            "weight_dtype": "qint8"}
