"""Fake quantization for QAT of an encoder classifier (any family in common.arch), written on
`torch.fake_quantize_per_*`, and the loader of a saved QAT checkpoint (train writes it, export
reads it: it lives here, below both).

Why our own modules rather than a library: NVIDIA ModelOpt (`modelopt.torch.quantization`, the
path TensorRT recommends) and the older pytorch-quantization are CUDA-first (ModelOpt's fake-quant
kernels and its ONNX Q/DQ export are built around CUDA; neither is in this project's checked pin
set), while `torch.fake_quantize_per_tensor_affine` / `_per_channel_affine` are in every torch,
run on CPU, carry a straight-through-estimator gradient, and are exported by `torch.onnx` as
QuantizeLinear/DequantizeLinear pairs (opset >= 13 for per-channel, with the `axis` attribute).

What is quantized (INT8, symmetric, zero point 0, range [-128, 127]):
- every Linear of the layer stack (Q, K, V, attention output, feed-forward; names from
  common.arch): weights per output channel, scale = max|w| / 127 recomputed from the current
  weights at every step (weights move during QAT); the input activation per tensor, scale =
  amax / 127 with amax calibrated on the validation calibration set and then kept fixed (as
  pytorch-quantization / ModelOpt do by default). Generic: no family's forward is rewritten;
- optionally the two attention matmuls (Q.K^T and softmax.V), each operand per tensor, where the
  family's eager attention computes them with two torch.matmul calls (BERT, RoBERTa, ELECTRA,
  DistilBERT): a TorchFunctionMode active only inside that module's forward fake-quantizes their
  operands. Elsewhere (DeBERTa's disentangled attention) they stay FP32 and the recipe says so;
- the word-embedding table, weight only, per tensor (a per-tensor Q/DQ on the gathered rows with
  the same scale lets ONNX Runtime gather INT8 rows instead of dequantizing the whole table).
Kept FP32: LayerNorm, Softmax, GELU, residual adds and biases, position / token-type embeddings,
the pooler and the classifier (tiny, and they write the logits).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
from collections.abc import Iterator
from pathlib import Path
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
                self._stats.append(upper_quantile(a, self.percentile / 100))
            return x
        if not self.calibrated:
            raise RuntimeError("ActQuant used before calibration: run train.qat.calibrate() first")
        scale = self.frozen if self.frozen is not None else _scale(self.amax)
        return fake_quant_tensor(x, scale)

    def extra_repr(self) -> str:
        return f"method={self.method}, amax={float(self.amax):.4g}"


def upper_quantile(a: torch.Tensor, q: float) -> float:
    """torch.quantile(a, q) (linear interpolation) for a q near 1, from the top-k values only.

    torch.quantile sorts the whole tensor (and refuses more than 2^24 elements); the two order
    statistics it interpolates lie in the top n - floor(q (n-1)) values, which topk finds without a
    full sort: measured 0.05 s vs 0.41 s on a 3M-element activation, which made the calibration of
    QAT's 60 quantizers minutes long. The position is computed in float64 (torch.quantile's is
    float32, off by up to 1e-4 relative on millions of elements)."""
    a = a.flatten()
    n = a.numel()
    pos = q * (n - 1)
    lo = math.floor(pos)
    top = torch.topk(a, n - lo).values  # descending: top[-1] is the lo-th smallest value
    v_lo = top[-1]
    v_hi = top[-2] if n - lo >= 2 else v_lo
    return float(v_lo + (pos - lo) * (v_hi - v_lo))


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
        token = _IN_LINEAR.set(True)
        try:
            out = torch.matmul(self.input_quant(x), w_t)
        finally:
            _IN_LINEAR.reset(token)
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
        if not torch.onnx.is_in_onnx_export():
            # Training and eval: quantizing the gathered rows with the table's scale is exactly
            # quantizing the table, then gathering (per-tensor scale; the straight-through
            # gradient reaches the same rows) without touching the table's other 30k rows twice
            # per step.
            return fake_quant_tensor(nn.functional.embedding(ids, w, self.emb.padding_idx), scale)
        rows = nn.functional.embedding(ids, fake_quant_tensor(w, scale), self.emb.padding_idx)
        # Numerically a no-op (the rows are on the grid already); it makes the exported graph read
        # DQ(int8 table) -> Gather -> Q -> DQ, which ONNX Runtime turns into an INT8 gather.
        return fake_quant_tensor(rows, scale)

    @property
    def weight(self) -> torch.Tensor:  # transformers reads embeddings.word_embeddings.weight
        return self.emb.weight


# Set while a FakeQuantLinear runs: its own torch.matmul (activation x weight) is not one of the
# attention matmuls the mode below quantizes.
_IN_LINEAR: contextvars.ContextVar[bool] = contextvars.ContextVar("qat_in_linear", default=False)


class _AttentionMatmuls(torch.overrides.TorchFunctionMode):
    """Fake-quantize both operands of the two activation x activation torch.matmul calls of one
    attention forward (Q.K^T first, softmax.V second). A third call means the family computes
    attention some other way: refused, never quantized halfway."""

    def __init__(self, quants: list[ActQuant]):
        super().__init__()
        self.quants, self.calls = quants, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.matmul and not _IN_LINEAR.get():
            k = self.calls
            self.calls += 1
            if k >= 2:
                raise RuntimeError("the attention forward made more than two activation matmuls; "
                                   "set attention_matmuls=None for this family in common/arch.py")
            a, b = args[0], args[1]
            return func(self.quants[2 * k](a), self.quants[2 * k + 1](b), **kwargs)
        return func(*args, **kwargs)


def _quantized_attention_forward(module: nn.Module, forward):
    def wrapped(*args: Any, **kwargs: Any):
        mode = _AttentionMatmuls([module.get_submodule(q) for q in  # type: ignore[misc]
                                  ("q_quant", "k_quant", "probs_quant", "v_quant")])
        with mode:
            out = forward(*args, **kwargs)
        if mode.calls != 2:
            raise RuntimeError(f"expected 2 attention matmuls in {type(module).__name__}, saw "
                               f"{mode.calls} (is the model loaded with attn_implementation="
                               "'eager'?)")
        return out

    return wrapped


def insert_fake_quant(model: Any, method: str = "percentile", percentile: float = 99.99,
                      attention_matmuls: bool = True, embeddings: bool = True) -> dict[str, Any]:
    """Replace, in place, the layer stack's Linears (and attention matmuls, word embeddings) of
    an encoder classifier by their fake-quant versions. Returns what was and was not quantized.
    Attention matmuls need the eager attention (load with attn_implementation="eager")."""
    from common.arch import all_body_linears, family_of, layer_stack

    fam = family_of(model)
    linears = all_body_linears(model)
    for n in linears:
        model.set_submodule(n, FakeQuantLinear(model.get_submodule(n), method, percentile))
    counts: dict[str, Any] = {"linear": len(linears), "attention": 0, "embedding": 0}
    if attention_matmuls and fam.attention_matmuls is None:
        counts["attention_not_quantized"] = (f"{fam.model_type} attention is not two plain "
                                             "matmuls (common/arch.py): kept FP32")
    elif attention_matmuls:
        if getattr(model.config, "_attn_implementation", "eager") != "eager":
            raise RuntimeError("QAT attention matmuls need the eager attention: load the model "
                               "with attn_implementation='eager'")
        for layer in layer_stack(model):
            att = layer.get_submodule(fam.attention_matmuls)
            if getattr(att, "position_embedding_type", "absolute") != "absolute":
                raise ValueError("QAT attention supports absolute position embeddings only")
            for q in ("q_quant", "k_quant", "probs_quant", "v_quant"):
                att.add_module(q, ActQuant(method, percentile))
            att.forward = _quantized_attention_forward(att, att.forward)
        counts["attention"] = len(layer_stack(model))
    if embeddings:
        model.base_model.set_input_embeddings(FakeQuantEmbedding(model.get_input_embeddings()))
        counts["embedding"] = 1
    return counts


def remove_fake_quant(model: Any) -> Any:
    """Undo insert_fake_quant in place (the FP32 weights, as trained, stay)."""
    for n, m in list(model.named_modules()):
        if isinstance(m, FakeQuantLinear):
            model.set_submodule(n, m.linear)
        elif "forward" in vars(m) and hasattr(m, "q_quant"):
            del m.forward  # back to the class's forward
            for q in ("q_quant", "k_quant", "probs_quant", "v_quant"):
                delattr(m, q)
    emb = model.get_input_embeddings()
    if isinstance(emb, FakeQuantEmbedding):
        model.base_model.set_input_embeddings(emb.emb)
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


# --- the saved QAT checkpoint: FP weights (save_pretrained) + quantizer amax + recipe.json ------

AMAX_FILE = "qat_amax.json"


def load_qat_model(ckpt: Path) -> Any:
    """A saved QAT checkpoint with its fake quantizers back in place (eval mode, CPU, eager
    attention), as recipe.json's `quantizers` describe them."""
    from transformers import AutoModelForSequenceClassification

    from common.checkpoint import read_recipe

    ckpt = Path(ckpt)
    recipe = read_recipe(ckpt)
    model = AutoModelForSequenceClassification.from_pretrained(
        ckpt, attn_implementation="eager").eval()
    from common.manifest import ArtifactError

    try:
        insert_fake_quant(model, **recipe["quantizers"])
        load_amax_state(model, json.loads((ckpt / AMAX_FILE).read_text()))
    except (KeyError, TypeError, ValueError) as exc:  # written by other code
        raise ArtifactError(f"{ckpt} was saved by another version of the QAT code ({exc}); "
                            "rebuild it with `make engines`") from None
    return model
