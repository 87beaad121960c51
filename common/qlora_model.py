"""The saved QLoRA model, read the same way by training (train.qlora) and the runner
(deploy.qlora_runner): the pre-trained base with 4-bit NF4 weights (bitsandbytes) + the LoRA
adapters and the full-precision head (peft). Also its weight-memory count.

Why the embedding table is quantized without double quantization (bitsandbytes 0.50.2, CPU):
Embedding4bit with double quantization gathers the rows' absmax codes but keeps the nested
statistics of the whole table, so gathered codes are decoded with the wrong second-level scales
and, past the table's own count, with memory it does not own. Measured on random tables, 20
repeated lookups of the same ids: vocab 457/512/1024 x 64: non-deterministic, max error 1.5-2.0
vs 0.50 without double quant; MiniLM's 30522 x 384: deterministic but max error 0.80 vs 0.48.
Linear4bit with double quant is deterministic and as accurate as without.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError


@dataclass(frozen=True)
class Nf4Spec:
    """How the frozen base is stored (a saved QLoRA model's recipe.json keeps these)."""

    double_quant: bool = True
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16 (CUDA)
    quantize_embeddings: bool = True


def require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("the qlora backend needs bitsandbytes: pip install 'bitsandbytes==0.50.*'")


def _frozen_embedding_nf4():
    import bitsandbytes as bnb

    class FrozenEmbeddingNF4(bnb.nn.EmbeddingNF4):
        """EmbeddingNF4 whose (frozen) table is left out of state_dict: bitsandbytes 0.50 raises
        NotImplementedError when saving Embedding4bit, and peft's save_pretrained reads the full
        state_dict. The table is never trained; load_nf4_base re-quantizes it from the base."""

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            return None

    return FrozenEmbeddingNF4


def load_nf4_base(model: str, spec: Nf4Spec, device: str, labels: Sequence[str]) -> Any:
    """The pre-trained model with NF4 Linear (and optionally embedding) weights; head FP32 with
    the task's labels (names in id order)."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, BitsAndBytesConfig

    from common.arch import family_of
    from common.modelsource import label_config, resolve_model

    path = resolve_model(model)
    head = list(family_of(AutoConfig.from_pretrained(path)).head)
    dtype = getattr(torch, spec.compute_dtype)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=spec.double_quant, bnb_4bit_compute_dtype=dtype,
                           llm_int8_skip_modules=head)
    m = AutoModelForSequenceClassification.from_pretrained(
        path, **label_config(labels), quantization_config=q, device_map={"": device}, dtype=torch.float32)
    old = m.get_input_embeddings()
    # EmbeddingNF4 quantizes each row in blocks of 64: rows must be a whole number of blocks.
    if spec.quantize_embeddings and old.embedding_dim % 64 == 0:
        emb = _frozen_embedding_nf4()(old.num_embeddings, old.embedding_dim, dtype=torch.float32)
        emb.weight = bnb.nn.Params4bit(old.weight.data.float().cpu(), requires_grad=False,
                                       quant_type="nf4", compress_statistics=False)
        m.base_model.set_input_embeddings(emb.to(device))
    keep_canonical_nf4_layout(m)
    return m


def keep_canonical_nf4_layout(model: Any) -> int:
    """Turn off bitsandbytes' CPU inference repacking on every Linear4bit; returns how many.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a Linear4bit's weight into a bf16 tiled
    layout the first time it runs in eval mode without grad, and only `state_dict()` packs it back.
    So after a validation pass training ran on the repacked weights (a bf16 kernel with no
    backward: "a view of a leaf Variable ... in-place" at the next step, or silently wrong
    gradients), layers narrower than one 64-wide block failed at once ("shape '[32, 0]' is
    invalid"), and scores were computed in bf16 on those CPUs and in the recipe's compute dtype
    on every other one. With the flag off, every CPU runs the same canonical NF4 path."""
    n = 0
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def trainable_summary(model: Any) -> dict[str, Any]:
    """Counts in logical parameters: a Params4bit tensor packs two weights per byte."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
                for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total),
            "trainable_pct": 100 * trainable / total}


def weight_memory(model: Any) -> dict[str, int]:
    """In-memory bytes of the weights: packed 4-bit data, quantization state, FP parts."""
    from common.quant_state import quant_state_bytes

    packed = state = fp = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.__class__.__name__ == "Params4bit":
            packed += p.numel() * p.element_size()
            state += quant_state_bytes(p)
        else:
            fp += p.numel() * p.element_size()
    return {"packed_4bit_bytes": packed, "quant_state_bytes": state, "fp_bytes": fp,
            "total_bytes": packed + state + fp}


def load_qlora(adapter_dir: Path, device: str = "cpu",
               base_dir: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Base in NF4 (re-quantized from the same pre-trained weights) + the saved adapters.
    base_dir: the base model already found and checked (common.modelsource.resolve_base)."""
    from peft import PeftModel

    from common.checkpoint import read_recipe
    from common.manifest import ArtifactError

    recipe = read_recipe(Path(adapter_dir))
    try:
        spec = Nf4Spec(**recipe["nf4"])
        labels = list(recipe["labels"])
    except (KeyError, TypeError) as exc:  # written by other code
        raise ArtifactError(f"{adapter_dir} was saved by another version of the QLoRA code "
                            f"({exc}); rebuild it with `make engines`") from None
    if base_dir is None:
        from common.modelsource import resolve_base

        base_dir = resolve_base(recipe.get("base_model"), f"the QLoRA model {adapter_dir}")
    base = load_nf4_base(base_dir, spec, device, labels)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), recipe
