"""Bytes bitsandbytes keeps beside a quantized weight tensor (not visible as parameters)."""

from __future__ import annotations


def quant_state_bytes(t) -> int:
    """Bytes of the quantization state attached to a bitsandbytes tensor (0 for a plain tensor):
    4-bit blocks' absmax and codebook, the nested (double-quant) absmax and codebook, and
    LLM.int8's per-row scales (SCB)."""
    import torch

    parts = []
    qs = getattr(t, "quant_state", None)
    if qs is not None:
        state2 = getattr(qs, "state2", None)  # QuantState raises AttributeError when not nested
        parts += [qs.absmax, qs.code, getattr(state2, "absmax", None), getattr(state2, "code", None)]
    parts.append(getattr(t, "SCB", None))
    return sum(x.numel() * x.element_size() for x in parts if isinstance(x, torch.Tensor))
