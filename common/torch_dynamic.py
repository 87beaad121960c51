"""PyTorch dynamic INT8 (torch.ao.quantization.quantize_dynamic), the format the build writes
(export.torch_dynamic) and the torch runner reloads: the same quantization applied to the same
Linears, then the saved state dict loaded into it.

Quantized: every Linear of the layer stack (Q/K/V, attention output, feed-forward; names from
common.arch): int8 weights per tensor, activations quantized on the fly per batch.
Kept FP32: embeddings (quantize_dynamic has no int8 path for nn.Embedding), LayerNorm, softmax
and GELU (not Linear), and the head (pooler, classifier): together < 1% of the FLOPs, and the
classifier writes the logits directly, so quantizing it would cost accuracy for no speed.
"""

from __future__ import annotations

from typing import Any


def quantizable_linears(model: Any) -> list[str]:
    from common.arch import all_body_linears

    return all_body_linears(model)


def quantize_dynamic_model(model: Any) -> Any:
    import torch
    from torch.ao.quantization import quantize_dynamic

    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in quantizable_linears(model)}
    return quantize_dynamic(model.eval(), qconfig_spec=spec, dtype=torch.qint8)
