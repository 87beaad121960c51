"""QLoRA: the pre-trained encoder with 4-bit NF4 weights (bitsandbytes) + LoRA adapters (peft),
trained with model selection on validation macro F1. Runs on CPU (bitsandbytes >= 0.50 has a
CPU backend for 4-bit forward and backward) and on CUDA. The saved format and its loader live in
common/qlora_model.py (the runner reads it too).

Why a QLoRA classifier can collapse (one student report ended at 0.54 macro F1), and what this
recipe does about each cause:
- a frozen, randomly initialised head: the classification head (pooler / pre-classifier and
  classifier, per family in common.arch) is kept in full precision and trained
  (`modules_to_save`), never quantized;
- bert-base learning rates (2e-5) on adapters: far too small, LoRA wants ~1e-4..1e-3;
- too few steps: model selection over whole epochs on validation macro F1.
The word-embedding table, half of MiniLM's bytes, is stored as NF4 too (bitsandbytes
EmbeddingNF4): without it the 4-bit model cannot go below ~0.55x of the FP32 weight bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import check_ranges, doc, location, recipe
from common.errors import ConfigError
from common.feeds import encode
from common.modelsource import DEFAULT_MODEL, base_reference, load_classifier, load_tokenizer
from common.qlora_model import Nf4Spec
from common.task import brief
from train.loop import (
    TrainRun,
    bucketed_batches,
    train_step,
    train_val_splits,
    validation_row,
    write_recipe,
)

TARGETS = ("attention", "attention+ffn")


@dataclass(frozen=True)
class QloraConfig(TrainRun):
    model: str = location(DEFAULT_MODEL, "Hub id or local dir (default: the packaged MiniLM)")
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # adapting the feed-forward layers too is worth several points of macro F1 for a third more
    # time; attention-only needs twice the epochs to catch up (docs/decisions.md)
    targets: str = doc("attention+ffn", "attention (Q, K, V) | attention+ffn (every layer Linear)")
    double_quant: bool = True
    compute_dtype: str = doc("float32", "float32 | bfloat16 | float16 (CUDA)")
    quantize_embeddings: bool = True
    # the default build must fit 30 minutes on 2 cores; epochs vs time: docs/decisions.md
    epochs: int = doc(1, "2 adds ~4.5 min on 2 cores (docs/decisions.md)")
    # 1e-3 with the baseline's class weights: one epoch then lands within 0.5 pt of FP32 over 3
    # seeds, where 5e-4 without them did not (docs/decisions.md, docs/results/variant-seeds.md)
    lr: float = 1e-3
    max_length: int = 128
    warmup_ratio: float = 0.06
    class_weights: str = doc("sqrt-inverse", "none | sqrt-inverse (the baseline's loss weights)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets not in TARGETS:
            raise ConfigError(f"targets must be one of {TARGETS}, not {self.targets!r}")
        if self.compute_dtype not in {"float32", "bfloat16", "float16"}:
            raise ConfigError("compute_dtype must be float32, bfloat16 or float16")
        if self.class_weights not in {"none", "sqrt-inverse"}:
            raise ConfigError(f"class_weights must be none or sqrt-inverse, not {self.class_weights!r}")
        check_ranges(self, rank=">= 1", alpha="> 0", dropout="in [0, 1)", epochs=">= 1",
                     lr="> 0", max_length=">= 3", warmup_ratio="in [0, 1]")

    def nf4(self) -> Nf4Spec:
        return Nf4Spec(self.double_quant, self.compute_dtype, self.quantize_embeddings)


def _sort_target_modules(path: Path) -> None:
    """peft writes target_modules from a set, in an order that changes from run to run (string
    hashing is salted per process); sorted, the same adapters save the same folder. peft reads
    the list back into a set, and writes with indent 2 and sorted keys, as here."""
    import json

    cfg = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


def build_peft_model(cfg: QloraConfig, device: str, labels: tuple[str, ...]):
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    from common.arch import family_of, lora_targets
    from common.qlora_model import load_nf4_base

    base = load_nf4_base(cfg.model, cfg.nf4(), device, labels)
    # gradient checkpointing off: it trades compute for memory, and memory is not short here
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.rank, lora_alpha=cfg.alpha,
                      lora_dropout=cfg.dropout, target_modules=lora_targets(base, cfg.targets),
                      modules_to_save=list(family_of(base).head))
    return get_peft_model(base, lora)


def train_qlora(cfg: QloraConfig, out_dir: Path) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from common.arch import input_names
    from common.modelsource import validate_model
    from common.qlora_model import trainable_summary, weight_memory

    validate_model(cfg.model, cfg.max_length, "--qlora-max-length")  # one line, before any work
    device = cfg.start()
    task, train, val = train_val_splits(cfg.data, cfg.limit_train, cfg.limit_eval)
    tok = load_tokenizer(cfg.model)
    model = build_peft_model(cfg, device, task.labels)
    names = input_names(model.get_base_model().config)
    tr = encode(tok, train.texts, cfg.max_length, train.pairs)
    va = encode(tok, val.texts, cfg.max_length, val.pairs)
    y = torch.tensor(train.labels)
    from train.finetune import class_weights

    weights = class_weights(cfg.class_weights, np.asarray(train.labels), device, task.num_labels)
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
                              f"QLoRA epoch {epoch} step {step}", class_weights=weights)
            ema = loss if step == 1 else 0.98 * ema + 0.02 * loss
            bar.set_postfix(loss=f"{ema:.4f}")
        row = validation_row(model, va, names, val.labels, device, epoch, ema, (time.time() - t0) / 60,
                             task.num_labels)
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
    _sort_target_modules(out_dir / "adapter_config.json")
    tok.save_pretrained(out_dir)
    fp32_bytes = sum(p.numel() * 4 for p in load_classifier(cfg.model, task.labels).parameters())
    meta = {"config": recipe(cfg), "base_model": base_reference(cfg.model), "nf4": vars(cfg.nf4()),
            "fp32_weight_bytes": fp32_bytes, "max_length": cfg.max_length,
            "targets": sorted(model.peft_config["default"].target_modules),
            "head": sorted(model.peft_config["default"].modules_to_save or ()),
            **trainable_summary(model), "weight_memory": weight_memory(model),
            "best_val_macro_f1": best, "history": history,
            "train_minutes": (time.time() - t0) / 60, "device": device,
            "data": {"train": train.fingerprint, "validation": val.fingerprint},
            "input_names": list(names), "labels": list(task.labels),
            "task": brief(task.summary())}
    write_recipe(out_dir, meta)
    return meta


