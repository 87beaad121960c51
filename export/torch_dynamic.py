"""PyTorch dynamic INT8 (torch.ao.quantization.quantize_dynamic): the one-line PTQ users try first.

Quantized: every nn.Linear inside the encoder (Q/K/V, attention output, both feed-forward
projections): int8 weights per tensor, activations quantized on the fly per batch.
Kept FP32: embeddings (quantize_dynamic has no int8 path for nn.Embedding), LayerNorm, softmax
and GELU (not Linear), and the pooler + classifier head: together < 1% of the FLOPs, and the
classifier writes the logits directly, so quantizing it would cost accuracy for no speed.
"""

from __future__ import annotations

from pathlib import Path


def quantizable_linears(model) -> set[str]:
    import torch

    return {name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".encoder." in f".{name}."}


def quantize_dynamic_model(model):
    import torch
    from torch.ao.quantization import quantize_dynamic

    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in quantizable_linears(model)}
    return quantize_dynamic(model.eval(), qconfig_spec=spec, dtype=torch.qint8)


def build_torch_dynamic(checkpoint: Path, out_path: Path) -> dict:
    """Quantize the fine-tuned checkpoint; save its state dict (that file is its size on disk)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    names = sorted(quantizable_linears(model))
    q = quantize_dynamic_model(model)
    with open(out_path, "wb") as f:
        torch.save(q.state_dict(), f)
    return {"quantized_linears": len(names), "kept_fp32": ["embeddings", "LayerNorm", "pooler",
                                                          "classifier"], "weight_dtype": "qint8"}
