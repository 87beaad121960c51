"""Issue 7 (first part): hand-written quantizers, 4-bit packing, NF4 against bitsandbytes,
policies that touch exactly the layers their rule names."""

import pytest
import torch
from torch import nn

from study.policy import QuantLinear, apply_bnb, apply_ours, select, weight_bytes
from study.quantizers import (
    QuantSpec,
    dequantize,
    error_bound,
    nf4_codebook,
    pack4,
    quantize,
    unpack4,
)

SPECS = [QuantSpec(m, b, g, 32) for m in ("absmax", "zeropoint") for b in (8, 4)
         for g in ("tensor", "channel", "group")] + [QuantSpec("nf4", 4, g, 32)
                                                    for g in ("tensor", "channel", "group")]


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (1001,), dtype=torch.uint8)
    packed = pack4(codes)
    assert packed.numel() == 501 and packed.dtype == torch.uint8
    assert torch.equal(unpack4(packed, 1001), codes)
    assert pack4(torch.tensor([1, 2], dtype=torch.uint8)).tolist() == [0x21]  # low nibble first
    with pytest.raises(ValueError, match="0..15"):
        pack4(torch.tensor([16], dtype=torch.uint8))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_round_trip_error_within_bound(spec):
    torch.manual_seed(0)
    w = torch.randn(48, 64) * torch.linspace(0.1, 3, 48).unsqueeze(1)  # rows of different ranges
    q = quantize(w, spec)
    err = (dequantize(q) - w).abs().reshape(-1, q.block)
    assert (err <= error_bound(q)[:, None] * (1 + 1e-5) + 1e-7).all()
    # the bytes held: one byte per 8-bit value, half a byte per 4-bit value, plus the scales
    expected = w.numel() * spec.bits // 8 + q.scale.numel() * 4 + (q.scale.numel() * 4 if q.zero is not None else 0)
    assert q.nbytes() == expected


def test_finer_granularity_is_more_accurate():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.logspace(-2, 0, 64).unsqueeze(1)
    errs = [float((dequantize(quantize(w, QuantSpec("absmax", 4, g, 32))) - w).abs().mean())
            for g in ("tensor", "channel", "group")]
    assert errs[0] > errs[1] > errs[2]


def test_nf4_matches_bitsandbytes():
    import bitsandbytes.functional as F

    assert torch.allclose(nf4_codebook(), F.get_4bit_type("nf4", device="cpu"), atol=1e-6)
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    q, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    theirs = F.dequantize_4bit(q, st)
    ours = dequantize(quantize(w, QuantSpec("nf4", 4, "group", 64)))
    assert torch.allclose(ours, theirs, atol=1e-6)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 6)))


def test_selective_policy_touches_exactly_the_named_layers():
    m = _model()
    assert select(m) == ["0", "2.0", "2.1"]
    names = apply_ours(m, QuantSpec("absmax", 8, "channel"), keep=(r"^2\.1$",))
    assert names == ["0", "2.0"]
    assert isinstance(m[0], QuantLinear) and isinstance(m[2][0], QuantLinear)
    assert type(m[2][1]) is nn.Linear  # kept in full precision


def test_quantized_model_is_smaller_and_close():
    m, ref = _model(), _model()
    x = torch.randn(5, 64)
    before = weight_bytes(m)
    apply_ours(m, QuantSpec("absmax", 4, "group", 32))
    assert weight_bytes(m) < before / 3  # 4-bit codes + a scale per 32 values, FP32 biases
    assert not any(isinstance(p, nn.Parameter) and p.dim() == 2 for p in m.parameters())
    assert (m(x) - ref(x)).abs().max() < 0.1


@pytest.mark.parametrize("fmt", ["int8", "fp4", "nf4", "nf4-dq"])
def test_bitsandbytes_formats_on_cpu(fmt):
    import bitsandbytes as bnb

    m, ref = _model(), _model()
    names = apply_bnb(m, fmt)
    # on CPU the 6-way head cannot be 4-bit (bitsandbytes packs outputs in blocks of 32)
    assert names == (["0", "2.0", "2.1"] if fmt == "int8" else ["0", "2.0"])
    kind = bnb.nn.Linear8bitLt if fmt == "int8" else bnb.nn.Linear4bit
    assert all(isinstance(m.get_submodule(n), kind) for n in names)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert (m(x) - ref(x)).abs().max() < 0.2
    assert weight_bytes(m) < weight_bytes(ref)
