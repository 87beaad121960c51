"""QAT: fake-quant fine-tuning of the FP32 baseline (common/qat_model.py says what is quantized).

Order of work: load the fine-tuned baseline (eager attention) -> insert fake quantizers ->
calibrate the activation amax on the validation calibration set (the same .npz the ORT PTQ and
TensorRT calibrators read) -> score validation (this is plain PTQ with these quantizers) ->
fine-tune briefly with a small learning rate, scoring validation every `eval_every` steps -> keep
the best (the calibrated starting point included) -> save FP weights (save_pretrained) +
quantizer amax + recipe.json (whose `quantizers` common.qat_model.load_qat_model reads back).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc, recipe
from common.errors import ConfigError
from common.feeds import encode
from train.loop import (
    TrainRun,
    adamw,
    bucketed_batches,
    train_step,
    train_val_splits,
    validation_row,
    write_recipe,
)


@dataclass(frozen=True)
class QatConfig(TrainRun):
    # Quantizers (INT8 symmetric everywhere; weights per channel, activations per tensor).
    calib_method: str = doc("percentile", "max | percentile (of |x|, mean over calibration batches)")
    percentile: float = 99.99
    attention_matmuls: bool = doc(True, "fake-quantize both operands of Q.K^T and softmax.V "
                                  "(families whose attention is two plain matmuls)")
    embeddings: bool = doc(True, "word-embedding table INT8 (most of the model's bytes)")
    # Fine-tuning: a tenth of the baseline's learning rate, a fraction of an epoch to one epoch.
    lr: float = 1e-5
    # the schedule is measured against the 30-minute build budget: docs/decisions.md
    epochs: float = doc(0.5, "may be a fraction")
    warmup_ratio: float = 0.1
    freeze_layers: int = doc(0, "embeddings + the lowest N layers frozen (0 = train all)")
    # Knowledge distillation from the FP32 baseline (its logits on the training rows, computed
    # once before QAT): the quantized student learns the teacher's full distribution, not only
    # the label. Measured with MiniLM (docs/decisions.md, 2026-12-05): 0.5 raised validation and
    # lowered test, so the default stays 0 (labels only).
    distill: float = doc(0.0, "weight of the distillation loss in [0, 1)")
    distill_temperature: float = 2.0
    # steps between validation scores (model selection); 125 = twice in the default half epoch
    eval_every: int = 125

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calib_method not in {"max", "percentile"}:
            raise ConfigError(f"calib_method must be max or percentile, not {self.calib_method!r}")
        if not 0 < self.epochs <= 10 or self.lr <= 0:
            raise ConfigError("QAT needs 0 < epochs <= 10 and lr > 0")
        if self.freeze_layers < 0 or self.eval_every < 1:
            raise ConfigError("freeze_layers must be >= 0 and eval_every >= 1")
        if not 0 <= self.distill < 1 or self.distill_temperature <= 0:
            raise ConfigError("QAT needs 0 <= distill < 1 and distill_temperature > 0")
        check_ranges(self, percentile="in (0, 100]", warmup_ratio="in [0, 1]")

    def quantizer_kwargs(self) -> dict[str, Any]:
        return {"method": self.calib_method, "percentile": self.percentile,
                "attention_matmuls": self.attention_matmuls, "embeddings": self.embeddings}


def describe(cfg: QatConfig, inserted: dict[str, Any], model_type: str) -> dict[str, Any]:
    """What the report and README state: quantized layers, bit widths, observers, FP32 layers."""
    quantized = [f"every Linear of the {model_type} layer stack (Q, K, V, attention output, "
                 f"feed-forward; {inserted['linear']} layers): INT8 symmetric per output channel, "
                 "max|w|/127",
                 "inputs of those Linears: INT8 symmetric per tensor, "
                 f"{cfg.calib_method} calibration, amax fixed during QAT"]
    if inserted["attention"]:
        quantized.append(f"both operands of Q.K^T and softmax.V ({inserted['attention']} "
                         "layers): INT8 symmetric per tensor")
    if inserted["embedding"]:
        quantized.append("word-embedding table: INT8 symmetric per tensor (weight only)")
    fp32 = ["LayerNorm", "Softmax", "GELU", "residual adds and biases",
            "position and token-type embeddings", "classification head"]
    if not inserted["attention"]:
        fp32.append("attention matmuls" + (f" ({inserted['attention_not_quantized']})"
                                           if "attention_not_quantized" in inserted else ""))
    if not inserted["embedding"]:
        fp32.append("word embeddings")
    return {"bits": 8, "quantized": quantized, "fp32": fp32,
            "calibration": "validation calibration set (artifacts/calibration/*.npz)"}


def calibrate(model, calib_batches, device: str = "cpu") -> int:
    """Set every activation quantizer's amax from the calibration batches (no gradient)."""
    import torch

    from common.qat_model import act_quantizers

    qs = act_quantizers(model)
    for q in qs.values():
        q.calibrating = True
    model.eval()
    with torch.inference_mode():
        for feed in calib_batches:
            model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
    for q in qs.values():
        q.finish_calibration()
    return len(qs)


def _freeze(model, n_layers: int) -> int:
    from common.arch import layer_stack

    if n_layers == 0:
        return 0
    layers = layer_stack(model)
    if n_layers > len(layers):
        raise ConfigError(f"freeze_layers={n_layers} but the model has {len(layers)} layers")
    frozen = [model.base_model.embeddings, *layers[:n_layers]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return sum(p.numel() for m in frozen for p in m.parameters())


def train_qat(cfg: QatConfig, baseline: Path, calib_npz: Path, calib_batch_size: int,
              out_dir: Path) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from common.arch import family_of
    from common.calibset import CalibrationSet
    from common.checkpoint import read_recipe, trained_with
    from common.qat_model import AMAX_FILE, amax_state, insert_fake_quant, remove_fake_quant
    from train.finetune import class_weights

    device = cfg.start()
    baseline = Path(baseline)
    meta = read_recipe(baseline)
    names, max_length = meta["input_names"], int(meta["max_length"])
    tokenizer = AutoTokenizer.from_pretrained(baseline)
    # eager attention: its two matmuls are what the attention quantizers wrap (see qat_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        baseline, attn_implementation="eager").to(device)
    model_type = family_of(model).model_type
    inserted = insert_fake_quant(model, **cfg.quantizer_kwargs())
    n_quantizers = calibrate(model, CalibrationSet(calib_npz, calib_batch_size, names), device)
    frozen_params = _freeze(model, cfg.freeze_layers)

    task, train, val = train_val_splits(cfg.data, cfg.limit_train, cfg.limit_eval)
    train_enc = encode(tokenizer, train.texts, max_length, train.pairs)
    val_enc = encode(tokenizer, val.texts, max_length, val.pairs)
    y_train = torch.tensor(train.labels)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    plan: list[list[int]] = []
    while len(plan) < total:  # whole shuffled epochs, cut at `total` steps
        plan += bucketed_batches(train_enc, cfg.batch_size, rng)
    plan = plan[:total]

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() <= 1]
    opt = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], cfg.lr, device)
    # QAT continues the baseline's training, so it keeps the baseline's loss (class weights)
    loss_weights = trained_with(meta, "class_weights", "none")
    weights = class_weights(loss_weights, np.asarray(train.labels), device, task.num_labels)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)

    teacher_logits = None
    if cfg.distill:
        # the baseline as it was fine-tuned, before any fake quantizer: one pass over the rows
        # QAT will see, so the teacher costs no time per step
        from common.torch_infer import torch_logits

        rows = sorted({i for b in plan for i in b})
        # loading a model may draw from torch's RNG: the student's dropout must not depend on it
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda"
                                   else []):
            teacher = AutoModelForSequenceClassification.from_pretrained(baseline).to(device)
        t_enc = dataclasses.replace(train_enc, ids=tuple(train_enc.ids[i] for i in rows),
                                    type_ids=tuple(train_enc.type_ids[i] for i in rows))
        logits = torch_logits(teacher, t_enc, names, batch_size=128, device=device,
                              progress="teacher logits")
        teacher_logits = torch.zeros((len(train_enc), logits.shape[1]))
        teacher_logits[rows] = torch.from_numpy(np.asarray(logits, np.float32))
        del teacher

    t0 = time.time()

    def score(step: int, loss: float) -> dict:
        row = validation_row(model, val_enc, names, val.labels, device, 0, loss, (time.time() - t0) / 60,
                             task.num_labels)
        row["step"] = step
        return row

    history = [score(0, float("nan"))]
    print(f"QAT: {inserted} fake-quant modules, {n_quantizers} activation quantizers calibrated; "
          f"validation macro F1 before QAT {history[0]['val_macro_f1']:.4f}")
    best = (history[0]["val_macro_f1"], {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    running = 0.0
    bar = tqdm(plan, desc=f"QAT ({cfg.epochs:g} epoch(s), {total} steps)")
    for step, b in enumerate(bar, start=1):
        model.train()
        loss = train_step(model, train_enc.batch(b, names), y_train[b], device, opt, sched, params,
                          f"QAT step {step} (lower --qat-lr)", weights,
                          teacher=None if teacher_logits is None else (
                              teacher_logits[b], cfg.distill, cfg.distill_temperature))
        running = 0.98 * running + 0.02 * loss if step > 1 else loss
        bar.set_postfix(loss=f"{running:.4f}")
        if step % cfg.eval_every == 0 or step == total:
            history.append(score(step, running))
            print(f"  step {step}: validation macro F1 {history[-1]['val_macro_f1']:.4f}")
            if history[-1]["val_macro_f1"] > best[0]:
                best = (history[-1]["val_macro_f1"],
                        {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})

    model.load_state_dict(best[1])
    model.to("cpu").eval()
    amax = amax_state(model)
    remove_fake_quant(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / AMAX_FILE).write_text(json.dumps(amax, indent=1, sort_keys=True) + "\n")
    best_row = max(history, key=lambda h: h["val_macro_f1"])
    out = {
        "config": recipe(cfg), "quantizers": cfg.quantizer_kwargs(), "model_type": model_type,
        "baseline_best_val_macro_f1": meta.get("best_val_macro_f1"),
        "input_names": names, "max_length": max_length, "steps": total, "task": meta.get("task"),
        "class_weights": loss_weights,
        "steps_per_epoch": steps_per_epoch, "inserted": inserted,
        "activation_quantizers": n_quantizers, "frozen_params": frozen_params,
        "val_macro_f1_before_qat": history[0]["val_macro_f1"],
        "best_step": best_row["step"], "best_val_macro_f1": best_row["val_macro_f1"],
        "history": history, "train_minutes": (time.time() - t0) / 60, "device": device,
        "quantization": describe(cfg, inserted, model_type),
    }
    write_recipe(out_dir, out)
    return out
