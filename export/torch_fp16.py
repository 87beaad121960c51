"""Build step of the FP16 PyTorch variants (torch/fp16, torch/fp16-graphs): the fine-tuned
checkpoint's weights cast to FP16 and saved with its config, so what a GPU deployment ships and
loads is half the FP32 file, and the variant's size is measured on that file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TorchFp16Config:
    """No knobs: every floating-point weight in FP16 (LayerNorm included; PyTorch's FP16 CUDA
    LayerNorm accumulates in FP32)."""


def save_fp16(checkpoint: Path, out_dir: Path, cfg: TorchFp16Config) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    model = model.to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    fp16 = sum(p.numel() for p in model.parameters() if p.dtype == torch.float16)
    return {"fp16_params": int(fp16), "dtype": "float16"}
