"""Fake quantization for QAT of a BERT classifier, written on `torch.fake_quantize_per_*`.

Why our own modules rather than a library: NVIDIA ModelOpt (`modelopt.torch.quantization`, the
path TensorRT recommends) and the older pytorch-quantization are CUDA-first (ModelOpt's fake-quant
kernels and its ONNX Q/DQ export are built around CUDA; neither is in this project's checked pin
set), while `torch.fake_quantize_per_tensor_affine` / `_per_channel_affine` are in every torch,
run on CPU, carry a straight-through-estimator gradient, and are exported by `torch.onnx` as
QuantizeLinear/DequantizeLinear pairs (opset >= 13 for per-channel, with the `axis` attribute).

What is quantized (INT8, symmetric, zero point 0, range [-128, 127]):
- every encoder `nn.Linear` (Q, K, V, attention output, FFN in, FFN out): weights per output
  channel, scale = max|w| / 127 recomputed from the current weights at every step (weights move
  during QAT); the input activation per tensor, scale = amax / 127 with amax calibrated on the
  validation calibration set and then kept fixed (as pytorch-quantization / ModelOpt do by default);
- optionally the two attention matmuls (Q.K^T and softmax.V): each operand per tensor;
- the word-embedding table, weight only, per tensor (a per-tensor Q/DQ on the gathered rows with
  the same scale lets ONNX Runtime gather INT8 rows instead of dequantizing the whole table).
Kept FP32: LayerNorm, Softmax, GELU, residual adds and biases, position / token-type embeddings,
the pooler and the classifier (tiny, and they write the logits).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

QMIN, QMAX = -128, 127


def _scale(amax: torch.Tensor) -> torch.Tensor:
    # A dead channel (all zeros) would give scale 0 and NaN; any positive scale quantizes it to 0.
    return torch.clamp(amax.float(), min=1e-8) / QMAX


class ActQuant(nn.Module):
    """Per-tensor symmetric INT8 fake quantizer with a calibrated, fixed amax.

    Modes: `calibrating` collects statistics (max or percentile of |x| per batch) and passes x
    through unchanged; otherwise it fake-quantizes with the amax buffer (once calibrated)."""

    amax: torch.Tensor

    def __init__(self, method: str = "percentile", percentile: float = 99.99):
        super().__init__()
        if method not in {"max", "percentile"}:
            raise ValueError(f"calibration method must be max or percentile, not {method!r}")
        self.method, self.percentile = method, percentile
        self.register_buffer("amax", torch.tensor(float("nan")))
        self.calibrating = False
        self._stats: list[float] = []
        self.frozen: torch.Tensor | None = None  # set by export_mode()

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.amax))

    def finish_calibration(self) -> None:
        if not self._stats:
            raise RuntimeError("a quantizer saw no data during calibration (is it on the forward path?)")
        # max: the largest |x| seen; percentile: the mean of per-batch percentiles (one outlier
        # batch does not set the scale for everything).
        v = max(self._stats) if self.method == "max" else sum(self._stats) / len(self._stats)
        self.amax.fill_(v)
        self._stats.clear()
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            a = x.detach().abs().float().flatten()
            if self.method == "max":
                self._stats.append(float(a.max()))
            else:
                if a.numel() > 1 << 24:  # torch.quantile's input limit; a strided sample suffices
                    a = a[:: math.ceil(a.numel() / (1 << 24))]
                self._stats.append(float(torch.quantile(a, self.percentile / 100)))
            return x
        if not self.calibrated:
            raise RuntimeError("ActQuant used before calibration: run train.qat.calibrate() first")
        scale = self.frozen if self.frozen is not None else _scale(self.amax)
        return fake_quant_tensor(x, scale)

    def extra_repr(self) -> str:
        return f"method={self.method}, amax={float(self.amax):.4g}"


def fake_quant_tensor(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    zp = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale.to(x.device), zp, QMIN, QMAX)


def weight_scale(w: torch.Tensor, axis: int | None) -> torch.Tensor:
    """max|w| / 127 per channel along `axis` (None: per tensor)."""
    w = w.detach().abs()
    if axis is None:
        return _scale(w.amax())
    return _scale(w.amax(dim=[d for d in range(w.dim()) if d != axis]))


def fake_quant_weight(w: torch.Tensor, axis: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel symmetric INT8 along `axis` (the output channels)."""
    scale = weight_scale(w, axis) if scale is None else scale
    zp = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.to(w.device), zp, axis, QMIN, QMAX)


class FakeQuantLinear(nn.Module):
    """nn.Linear with INT8 per-channel weights and a per-tensor INT8 input.

    Computed as matmul(x, W^T) + b with the fake quantizer on W^T (axis 1 = output channels), so
    that the ONNX export reads DequantizeLinear -> MatMul with nothing between them: the pattern
    ONNX Runtime and TensorRT fuse into integer GEMMs."""

    def __init__(self, linear: nn.Linear, method: str, percentile: float):
        super().__init__()
        self.linear = linear
        self.input_quant = ActQuant(method, percentile)
        self.frozen: torch.Tensor | None = None  # set by export_mode()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_t = fake_quant_weight(self.linear.weight.t(), axis=1, scale=self.frozen)
        out = torch.matmul(self.input_quant(x), w_t)
        return out + self.linear.bias if self.linear.bias is not None else out


class FakeQuantEmbedding(nn.Module):
    """Word embeddings with an INT8 per-tensor table (weight only, symmetric)."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.emb = emb
        self.frozen: torch.Tensor | None = None  # set by export_mode()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.emb.weight
        scale = self.frozen if self.frozen is not None else weight_scale(w, None)
        rows = nn.functional.embedding(ids, fake_quant_tensor(w, scale), self.emb.padding_idx)
        # Numerically a no-op (the rows are on the grid already); it makes the exported graph read
        # DQ(int8 table) -> Gather -> Q -> DQ, which ONNX Runtime turns into an INT8 gather.
        return fake_quant_tensor(rows, scale)

    @property
    def weight(self) -> torch.Tensor:  # transformers reads embeddings.word_embeddings.weight
        return self.emb.weight


class QatSelfAttention(nn.Module):
    """BERT encoder self-attention with fake quantizers on both operands of the two attention
    matmuls. Encoder-only: no cache, no cross-attention, absolute positions (what BERT
    classifiers use); anything else is refused rather than computed differently."""

    def __init__(self, orig: Any, method: str, percentile: float):
        super().__init__()
        if getattr(orig, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("QAT attention supports absolute position embeddings only")
        self.query: nn.Module = orig.query
        self.key: nn.Module = orig.key
        self.value: nn.Module = orig.value
        self.dropout: nn.Module = orig.dropout
        self.heads: int = orig.num_attention_heads
        self.head_size: int = orig.attention_head_size
        self.all_head_size: int = orig.all_head_size
        self.q_quant = ActQuant(method, percentile)
        self.k_quant = ActQuant(method, percentile)
        self.probs_quant = ActQuant(method, percentile)
        self.v_quant = ActQuant(method, percentile)
        self._orig = [orig]  # a list, so the original is not registered twice as a submodule

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, encoder_hidden_states: Any = None,
                past_key_values: Any = None, output_attentions: bool = False, **kwargs: Any):
        if encoder_hidden_states is not None or past_key_values is not None:
            raise NotImplementedError("QAT attention is for encoder classifiers (no cache, no "
                                      "cross-attention)")
        b, n = hidden_states.shape[:2]

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.heads, self.head_size).transpose(1, 2)

        q, k, v = (split(m(hidden_states)) for m in (self.query, self.key, self.value))
        scores = torch.matmul(self.q_quant(q), self.k_quant(k.transpose(-1, -2)))
        scores = scores / math.sqrt(self.head_size)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        if head_mask is not None:
            probs = probs * head_mask
        ctx = torch.matmul(self.probs_quant(probs), self.v_quant(v))
        ctx = ctx.permute(0, 2, 1, 3).contiguous().view(b, n, self.all_head_size)
        return ctx, probs


def insert_fake_quant(model: Any, method: str = "percentile", percentile: float = 99.99,
                      attention_matmuls: bool = True, embeddings: bool = True) -> dict[str, int]:
    """Replace, in place, the encoder Linears (and attention, word embeddings) of a BERT
    classifier by their fake-quant versions. Returns how many of each were inserted."""
    base = model.base_model
    linears = [n for n, m in base.encoder.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("no nn.Linear found in model.base_model.encoder: not a BERT-like model?")
    for n in linears:
        base.encoder.set_submodule(n, FakeQuantLinear(base.encoder.get_submodule(n), method, percentile))
    counts = {"linear": len(linears), "attention": 0, "embedding": 0}
    if attention_matmuls:
        for layer in base.encoder.layer:
            layer.attention.self = QatSelfAttention(layer.attention.self, method, percentile)
        counts["attention"] = len(base.encoder.layer)
    if embeddings:
        base.embeddings.word_embeddings = FakeQuantEmbedding(base.embeddings.word_embeddings)
        counts["embedding"] = 1
    return counts


def remove_fake_quant(model: Any) -> Any:
    """Undo insert_fake_quant in place (the FP32 weights, as trained, stay)."""
    base = model.base_model
    for layer in base.encoder.layer:
        if isinstance(layer.attention.self, QatSelfAttention):
            layer.attention.self = layer.attention.self._orig[0]
    for n, m in list(base.encoder.named_modules()):
        if isinstance(m, FakeQuantLinear):
            base.encoder.set_submodule(n, m.linear)
    if isinstance(base.embeddings.word_embeddings, FakeQuantEmbedding):
        base.embeddings.word_embeddings = base.embeddings.word_embeddings.emb
    return model


@contextlib.contextmanager
def export_mode(model: Any) -> Iterator[None]:
    """Freeze every scale into a plain tensor for the ONNX export: the tracer then writes it as a
    constant initializer of QuantizeLinear/DequantizeLinear, instead of the Abs/ReduceMax/Div ops
    that compute it (which torch.onnx's constant folding does not fold)."""
    mods = [m for m in model.modules() if isinstance(m, ActQuant | FakeQuantLinear | FakeQuantEmbedding)]
    for m in mods:
        if isinstance(m, ActQuant):
            m.frozen = _scale(m.amax).detach().clone()
        elif isinstance(m, FakeQuantLinear):
            m.frozen = weight_scale(m.linear.weight.t(), axis=1).clone()
        else:
            m.frozen = weight_scale(m.emb.weight, None).clone()
    try:
        yield
    finally:
        for m in mods:
            m.frozen = None


def act_quantizers(model: Any) -> dict[str, ActQuant]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ActQuant)}


def amax_state(model: Any) -> dict[str, float]:
    return {n: float(q.amax) for n, q in act_quantizers(model).items()}


def load_amax_state(model: Any, state: dict[str, float]) -> None:
    qs = act_quantizers(model)
    if set(qs) != set(state):
        raise ValueError(f"quantizer names differ: missing {sorted(set(qs) - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - set(qs))[:3]} (QAT config changed?)")
    for n, v in state.items():
        qs[n].amax.fill_(v)
