"""QLoRA: the pre-trained BERT with 4-bit NF4 weights (bitsandbytes) + LoRA adapters (peft),
trained with model selection on validation macro F1. Runs on CPU (bitsandbytes >= 0.50 has a
CPU backend for 4-bit forward and backward) and on CUDA.

Why a QLoRA classifier can collapse (one student report ended at 0.54 macro F1), and what this
recipe does about each cause:
- a frozen, randomly initialised head: the classifier (and the pooler that feeds it) are kept in
  full precision and trained (`modules_to_save`), never quantized;
- bert-base learning rates (2e-5) on adapters: far too small, LoRA wants ~1e-4..1e-3;
- too few steps: model selection over whole epochs on validation macro F1.
The word-embedding table, half of MiniLM's bytes, is stored as NF4 too (bitsandbytes
EmbeddingNF4): without it the 4-bit model cannot go below ~0.55x of the FP32 weight bytes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.feeds import encode
from common.modelsource import DEFAULT_MODEL, load_classifier, load_tokenizer, resolve_model
from train.loop import (
    bucketed_batches,
    resolve_device,
    seed_everything,
    train_step,
    train_val_splits,
    validation_row,
)

ATTENTION = ("query", "key", "value")
ATTENTION_FFN = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                 "output.dense")
TARGETS = {"attention": ATTENTION, "attention+ffn": ATTENTION_FFN}


@dataclass(frozen=True)
class QloraConfig:
    model: str = DEFAULT_MODEL
    data: str = "dair-ai/emotion"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Measured here (MiniLM, r=16, lr 5e-4, 1 epoch each, validation macro F1, 2-core CPU):
    # "attention" 0.8250 in 3.1 min (371k trainable, 1.6%); "attention+ffn" 0.8857 in 4.1 min
    # (814k trainable, 3.5%). Adapting the feed-forward layers too is worth 6 pt for 30% more time;
    # attention-only needed 2 epochs (12 min) to reach 0.8848.
    targets: str = "attention+ffn"  # a key of TARGETS
    double_quant: bool = True
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16 (CUDA)
    quantize_embeddings: bool = True
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    device: str = "auto"
    limit_train: int = 0
    limit_eval: int = 0

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {sorted(TARGETS)}, not {self.targets!r}")
        if self.compute_dtype not in {"float32", "bfloat16", "float16"}:
            raise ValueError("compute_dtype must be float32, bfloat16 or float16")

    def recipe(self) -> dict:
        d = asdict(self)
        d.pop("device")
        return d


def _frozen_embedding_nf4():
    import bitsandbytes as bnb

    class FrozenEmbeddingNF4(bnb.nn.EmbeddingNF4):
        """EmbeddingNF4 whose (frozen) table is left out of state_dict: bitsandbytes 0.50 raises
        NotImplementedError when saving Embedding4bit, and peft's save_pretrained reads the full
        state_dict. The table is never trained; load_qlora re-quantizes it from the base model."""

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            return None

    return FrozenEmbeddingNF4


# Why earlier runs saw NaN losses at random steps, and different losses for one seed (bitsandbytes
# 0.50.2, CPU): Embedding4bit with double quantization. Its partial-dequantize forward gathers
# the rows' absmax codes but keeps the nested (double-quant) statistics of the whole table, so the
# gathered codes are decoded with the wrong second-level scales and, past the table's own count,
# with memory it does not own. Measured here on random tables, 20 repeated lookups of the same
# ids: vocab 457/512/1024 x 64: non-deterministic, max error 1.5-2.0 vs 0.50 without double
# quant; MiniLM's 30522 x 384: deterministic but max error 0.80 vs 0.48. Linear4bit with double
# quant is deterministic and as accurate as without. So the embedding table is quantized without
# double quantization (its FP32 absmax costs 0.7 MB for MiniLM); Linear layers keep it.


def load_nf4_base(model: str, cfg: QloraConfig, device: str):
    """The pre-trained model with NF4 Linear (and optionally embedding) weights; head FP32."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    from common.labels import ID2LABEL, LABEL2ID, NUM_LABELS

    dtype = getattr(torch, cfg.compute_dtype)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype,
                           llm_int8_skip_modules=["classifier", "pooler"])
    m = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(model), num_labels=NUM_LABELS, id2label=ID2LABEL, label2id=LABEL2ID,
        quantization_config=q, device_map={"": device}, torch_dtype=torch.float32)
    old = m.base_model.embeddings.word_embeddings
    # EmbeddingNF4 quantizes each row in blocks of 64: rows must be a whole number of blocks.
    if cfg.quantize_embeddings and old.embedding_dim % 64 == 0:
        emb = _frozen_embedding_nf4()(old.num_embeddings, old.embedding_dim, dtype=torch.float32)
        emb.weight = bnb.nn.Params4bit(old.weight.data.float().cpu(), requires_grad=False,
                                       quant_type="nf4", compress_statistics=False)
        m.base_model.embeddings.word_embeddings = emb.to(device)
    return m


def build_peft_model(cfg: QloraConfig, device: str):
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    base = load_nf4_base(cfg.model, cfg, device)
    # gradient checkpointing off: it trades compute for memory, and memory is not short here
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.rank, lora_alpha=cfg.alpha,
                      lora_dropout=cfg.dropout, target_modules=list(TARGETS[cfg.targets]),
                      modules_to_save=["classifier", "pooler"])
    return get_peft_model(base, lora)


def trainable_summary(model) -> dict:
    """Counts in logical parameters: a Params4bit tensor packs two weights per byte."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
                for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total),
            "trainable_pct": 100 * trainable / total}


def weight_memory(model) -> dict:
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


def train_qlora(cfg: QloraConfig, out_dir: Path) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    train, val = train_val_splits(cfg.data, cfg.limit_train, cfg.limit_eval)
    tok = load_tokenizer(cfg.model)
    model = build_peft_model(cfg, device)
    names = ("input_ids", "attention_mask", "token_type_ids")
    tr, va = encode(tok, train.texts, cfg.max_length), encode(tok, val.texts, cfg.max_length)
    y = torch.tensor(train.labels)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = math.ceil(len(train) / cfg.batch_size) * cfg.epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, history, t0 = -1.0, None, [], time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(bucketed_batches(tr, cfg.batch_size, rng), desc=f"qlora epoch {epoch}/{cfg.epochs}")
        ema = 0.0
        for step, b in enumerate(bar, 1):
            loss = train_step(model, tr.batch(b, names), y[b], device, opt, sched, params,
                              f"QLoRA epoch {epoch} step {step}")
            ema = loss if step == 1 else 0.98 * ema + 0.02 * loss
            bar.set_postfix(loss=f"{ema:.4f}")
        row = validation_row(model, va, names, val.labels, device, epoch, ema, (time.time() - t0) / 60)
        history.append(row)
        print(f"qlora epoch {epoch}: validation macro F1 {row['val_macro_f1']:.4f}")
        if row["val_macro_f1"] > best:
            best = row["val_macro_f1"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                          if any(t in k for t in ("lora_", "modules_to_save"))}
    assert best_state is not None
    model.load_state_dict(best_state, strict=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # adapters + the trained head/pooler (modules_to_save)
    tok.save_pretrained(out_dir)
    fp32_bytes = sum(p.numel() * 4 for p in load_classifier(cfg.model).parameters())
    recipe = {"config": asdict(cfg), "base_model": resolve_model(cfg.model),
              "fp32_weight_bytes": fp32_bytes,
              "targets": list(TARGETS[cfg.targets]), **trainable_summary(model),
              "weight_memory": weight_memory(model), "best_val_macro_f1": best,
              "history": history, "train_minutes": (time.time() - t0) / 60, "device": device,
              "data": {"train": train.fingerprint, "validation": val.fingerprint},
              "input_names": list(names)}
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


def load_qlora(adapter_dir: Path, device: str = "cpu"):
    """Base in NF4 (re-quantized from the same pre-trained weights) + the saved adapters."""
    from peft import PeftModel

    recipe = json.loads((Path(adapter_dir) / "recipe.json").read_text())
    cfg = QloraConfig(**{**recipe["config"], "device": device})
    base = load_nf4_base(cfg.model, cfg, device)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), recipe
