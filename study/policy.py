"""Which Linear layers get quantized, and the module that holds a quantized weight.

Policies: "whole" quantizes every nn.Linear of the model; "selective" keeps in full precision the
layers whose qualified name matches any regex of `keep` (e.g. the classifier head, the first and
last blocks, the attention output projections).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from study.quantizers import QTensor, QuantSpec, dequantize, quantize


class QuantLinear(nn.Module):
    """A Linear whose weight lives only as packed codes + scales (buffers), dequantized at every
    forward; the FP32 weight is dropped, so the model's bytes really shrink."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, linear: nn.Linear, spec: QuantSpec):
        super().__init__()
        q = quantize(linear.weight, spec)
        self.spec, self.shape, self.block = spec, q.shape, q.block
        self.register_buffer("codes", q.data)
        self.register_buffer("scale", q.scale)
        self.register_buffer("zero", q.zero if q.zero is not None else torch.empty(0))
        self.bias = linear.bias

    def qtensor(self) -> QTensor:
        zero = self.zero if self.zero.numel() else None
        return QTensor(self.codes, self.scale, zero, self.shape, self.spec, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, dequantize(self.qtensor()).to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.spec.name}, shape={tuple(self.shape)}"


def is_linear(m: nn.Module) -> bool:
    """nn.Linear, or GPT-2's Conv1D (a Linear with its weight stored transposed)."""
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def as_linear(m: Any) -> nn.Linear:
    if isinstance(m, nn.Linear):
        return m
    lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
    lin.weight = nn.Parameter(m.weight.detach().t().contiguous(), requires_grad=False)
    if m.bias is not None:
        lin.bias = m.bias
    return lin


def _out_features(m: Any) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.weight.shape[1]


def select(model: nn.Module, keep: Sequence[str] = ()) -> list[str]:
    """Qualified names of the Linear layers a policy quantizes (not matching any `keep`)."""
    return [n for n, m in model.named_modules()
            if is_linear(m) and not any(re.search(p, n) for p in keep)]


def apply_ours(model: nn.Module, spec: QuantSpec, keep: Sequence[str] = ()) -> list[str]:
    """Replace, in place, the selected Linears by QuantLinear; returns their names."""
    names = select(model, keep)
    for n in names:
        model.set_submodule(n, QuantLinear(as_linear(model.get_submodule(n)), spec))
    return names


BNB_FORMATS = ("int8", "fp4", "nf4", "nf4-dq")


def apply_bnb(model: nn.Module, fmt: str, keep: Sequence[str] = ()) -> list[str]:
    """The same selection with bitsandbytes layers: LLM.int8 (Linear8bitLt), 4-bit FP4 or NF4
    (Linear4bit; nf4-dq = double quantization of the absmax statistics)."""
    import bitsandbytes as bnb  # lazy: heavy, and optional for everything else

    if fmt not in BNB_FORMATS:
        raise ValueError(f"bitsandbytes format must be one of {BNB_FORMATS}, not {fmt!r}")
    # bitsandbytes 0.50's CPU 4-bit inference kernel packs outputs in blocks of 32
    # (_convert_weight_packed_for_cpu asserts N % 32 == 0): a 6-way classifier head cannot be
    # 4-bit on CPU, so such layers stay FP32 there (reported by the caller from the names).
    names = [n for n in select(model, keep)
             if fmt == "int8" or _out_features(model.get_submodule(n)) % 32 == 0]
    # LLM.int8 logs "inputs will be cast to float16" at every call (bitsandbytes.autograd
    # logger): known and expected for FP32 inputs, so only errors from that logger are shown
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    for n in names:
        lin = as_linear(model.get_submodule(n))
        if fmt == "int8":
            new: nn.Module = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features,
                                                 bias=lin.bias is not None, has_fp16_weights=False,
                                                 threshold=6.0)
            new.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False,
                                           has_fp16_weights=False)
        else:
            qt = "nf4" if fmt.startswith("nf4") else "fp4"
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                    compute_dtype=torch.float32, quant_type=qt,
                                    compress_statistics=fmt == "nf4-dq")
            new.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                           quant_type=qt, compress_statistics=fmt == "nf4-dq")
        if lin.bias is not None:
            new.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        model.set_submodule(n, new.to("cpu"))  # .to() is where bitsandbytes quantizes
    return names


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (packed codes counted as stored;
    bitsandbytes' quantization state included)."""
    from common.quant_state import quant_state_bytes

    total = 0
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size() + quant_state_bytes(t)
    return total
