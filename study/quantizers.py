"""Weight quantizers written from scratch in PyTorch (no quantization library inside them).

Methods: absmax (symmetric, zero point 0) and zero-point (asymmetric, min/max), 8 or 4 bits;
plus NF4, a 16-level codebook built by hand from normal quantiles (the QLoRA construction) with
absmax scaling. Granularity: one scale per tensor, per output channel (row of a Linear weight),
or per group of `group_size` consecutive values of a row. 4-bit codes are stored packed, two per
byte, so the byte counts reported are the bytes really held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.errors import ConfigError

METHODS = ("absmax", "zeropoint", "nf4")
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class QuantSpec:
    method: str = "absmax"
    bits: int = 8
    granularity: str = "channel"
    group_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.bits not in (4, 8):
            raise ConfigError("bits must be 4 or 8")
        if self.method == "nf4" and self.bits != 4:
            raise ConfigError("nf4 is a 4-bit codebook: use bits=4")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES}")
        if self.group_size < 2:
            raise ConfigError("group_size must be >= 2")

    @property
    def name(self) -> str:
        g = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        return f"{self.method}-int{self.bits}-{g}" if self.method != "nf4" else f"nf4-{g}"


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels: 8 positive and 7 negative normal quantiles (so that 0 is exact),
    normalised to [-1, 1] (Dettmers et al. 2023, QLoRA, appendix; offset 0.9677 = (1 - 1/(2*15)
    + 1 - 1/(2*16)) / 2, the midpoint of the two conventions for the outermost quantile)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    offset = 0.9677083
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.abs().max()).float()


def pack4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15] -> bytes holding two codes each (low nibble first)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError("4-bit codes must lie in 0..15")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack4: the first n codes."""
    out = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    return out[:n]


@dataclass
class QTensor:
    """A quantized weight: packed codes + per-block scale (and zero point), and its shape."""

    data: torch.Tensor  # uint8: codes (8-bit) or packed pairs (4-bit)
    scale: torch.Tensor  # float32, one per block
    zero: torch.Tensor | None  # float32 zero points (zeropoint method) or None
    shape: torch.Size
    spec: QuantSpec
    block: int  # values per scale block

    def nbytes(self) -> int:
        z = self.zero.numel() * self.zero.element_size() if self.zero is not None else 0
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4 + z


def _blocks(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, int]:
    """Rows of the view each scale covers: [n_blocks, block]."""
    w = w.detach().float()
    if spec.granularity == "tensor":
        return w.reshape(1, -1), w.numel()
    rows = w.reshape(w.shape[0], -1)
    if spec.granularity == "channel":
        return rows, rows.shape[1]
    if rows.shape[1] % spec.group_size:
        raise ValueError(f"group size {spec.group_size} does not divide the row length {rows.shape[1]}")
    return rows.reshape(-1, spec.group_size), spec.group_size


def quantize(w: torch.Tensor, spec: QuantSpec) -> QTensor:
    x, block = _blocks(w, spec)
    levels = 2 ** spec.bits
    zero = None
    if spec.method == "nf4":
        scale = x.abs().amax(dim=1).clamp(min=1e-12)
        book = nf4_codebook()
        codes = (x / scale[:, None]).unsqueeze(-1).sub(book).abs().argmin(-1).to(torch.uint8)
    elif spec.method == "absmax":
        qmax = levels // 2 - 1  # 127 or 7: symmetric, -qmax..qmax
        scale = (x.abs().amax(dim=1) / qmax).clamp(min=1e-12)
        codes = (torch.round(x / scale[:, None]).clamp(-qmax, qmax) + qmax + 1).to(torch.uint8)
    else:  # zeropoint: asymmetric, 0..levels-1
        lo, hi = x.amin(dim=1), x.amax(dim=1)
        scale = ((hi - lo) / (levels - 1)).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        codes = (torch.round(x / scale[:, None]) + zero[:, None]).clamp(0, levels - 1).to(torch.uint8)
    data = pack4(codes) if spec.bits == 4 else codes.reshape(-1).contiguous()
    return QTensor(data, scale.float(), zero, w.shape, spec, block)


def dequantize(q: QTensor) -> torch.Tensor:
    n = math.prod(q.shape)
    codes = unpack4(q.data, n) if q.spec.bits == 4 else q.data
    c = codes.reshape(-1, q.block).float()
    if q.spec.method == "nf4":
        x = nf4_codebook()[codes.reshape(-1, q.block).long()] * q.scale[:, None]
    elif q.spec.method == "absmax":
        qmax = 2 ** q.spec.bits // 2 - 1
        x = (c - qmax - 1) * q.scale[:, None]
    else:
        assert q.zero is not None
        x = (c - q.zero[:, None]) * q.scale[:, None]
    return x.reshape(q.shape)


def error_bound(q: QTensor) -> torch.Tensor:
    """Largest possible |w - dequantize(quantize(w))| per block for the uniform methods: half a
    step (the step is the scale). NF4's bound is half its widest gap times the block absmax."""
    if q.spec.method == "nf4":
        gaps = nf4_codebook().diff().max()
        return q.scale * gaps / 2
    return q.scale / 2
