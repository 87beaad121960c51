"""FP32 baseline fine-tuning with model selection on validation macro F1.

Saved with save_pretrained (weights, config with id2label/label2id, tokenizer) plus recipe.json:
the config that made it, the data fingerprints and the per-epoch validation history.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.arch import input_names, model_spec
from common.config import check_ranges, doc, location, recipe
from common.errors import ConfigError
from common.feeds import encode
from common.modelsource import (
    DEFAULT_MODEL,
    base_reference,
    load_classifier,
    load_tokenizer,
    validate_model,
)
from common.task import brief
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
class FinetuneConfig(TrainRun):
    model: str = location(DEFAULT_MODEL, "Hub id or local dir (default: the packaged MiniLM)")
    # 2: MiniLM-L6 plateaus after 2 epochs; more over-fits and costs CPU time (docs/decisions.md)
    epochs: int = 2
    # 1e-4, not bert-base's usual 2e-5: small models want larger steps (docs/decisions.md)
    lr: float = 1e-4
    max_length: int = 128  # longest test sentence is 66 tokens: nothing is truncated
    warmup_ratio: float = 0.06
    amp: str = doc("none", "none | fp16 | bf16 (autocast, CUDA only)")
    # Candidates of the baseline study (train/seeds.py, docs/results/baseline-seeds.md).
    # sqrt-inverse: the simplest of the candidates that tie on validation over 3 seeds
    # (docs/results/baseline-seeds.md, docs/decisions.md)
    class_weights: str = doc("sqrt-inverse",
                             "none | sqrt-inverse (loss weight per class ~ 1/sqrt(freq))")
    label_smoothing: float = 0.0
    logit_bias: bool = doc(False, "fit a per-class logit bias on validation for macro F1 and "
                           "store it in the classifier's bias (train/bias.py)")
    # A candidate of the study: the uniform average of N evenly spaced checkpoints of the last
    # epoch (the cheap end of ensembling) joins the epochs in the choice on validation
    # A candidate of the study: layer-wise learning-rate decay, lr x decay^(depth from the top)
    # for each encoder layer (the embeddings deepest), so the lower, more general layers move
    # less; 1.0 = one learning rate for all
    layer_decay: float = doc(1.0, "learning-rate decay per layer from the top (1.0 = off)")
    # A candidate of the study: focal loss (gamma > 0) on top of the class weights, for the two
    # small classes the macro F1 is held down by
    focal_gamma: float = doc(0.0, "focal loss gamma (0 = cross-entropy)")
    average_last: int = doc(0, "average the weights at N evenly spaced steps of the last epoch "
                            "and let validation choose it like an epoch (0 = off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, epochs=">= 1", lr="> 0", warmup_ratio="in [0, 1]")
        if self.class_weights not in {"none", "sqrt-inverse"}:
            raise ConfigError(f"class_weights must be none or sqrt-inverse, not {self.class_weights!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be in [0, 1)")
        if self.amp not in {"none", "fp16", "bf16"}:
            raise ConfigError(f"amp must be none, fp16 or bf16, not {self.amp!r}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay must be in (0, 1] (1.0 = one learning rate for all)")
        if self.focal_gamma < 0 or (self.focal_gamma and self.label_smoothing):
            raise ConfigError("focal_gamma must be >= 0 and is not combined with label_smoothing")
        if self.average_last < 0:
            raise ConfigError("average_last must be >= 0 (0 = no checkpoint averaging)")
        if self.max_length < 3:
            raise ConfigError("max_length must be >= 3 ([CLS], one token, [SEP])")


def class_weights(kind: str, labels: np.ndarray, device: str, num_labels: int):
    """Loss weights per class: None, or ~1/sqrt(frequency) normalised to mean 1 (a label with no
    training row is given the weight of frequency 1e-6; no loss term ever uses it)."""
    if kind == "none":
        return None
    import torch

    freq = np.bincount(labels, minlength=num_labels) / len(labels)
    w = 1 / np.sqrt(np.maximum(freq, 1e-6))
    return torch.tensor(w / w.mean(), dtype=torch.float32, device=device)


class CheckpointAverage:
    """Running uniform average of the floating-point weights at `n` evenly spaced steps of an
    epoch of `steps` steps (the last step always among them)."""

    def __init__(self, model, steps: int, n: int):
        self.model, self.n = model, min(n, steps)
        self.at = {steps - round(i * steps / self.n) for i in range(self.n)} if self.n else set()
        self.sum: dict | None = None
        self.count = 0

    def after_step(self, step: int) -> None:
        if step not in self.at:
            return
        state = self.model.state_dict()
        if self.sum is None:
            self.sum = {k: v.detach().double().clone() for k, v in state.items() if v.is_floating_point()}
        else:
            for k in self.sum:
                self.sum[k] += state[k].detach().double()
        self.count += 1

    def swap_in(self) -> dict:
        """Load the average into the model; returns the live weights to restore."""
        assert self.sum is not None and self.count == self.n, (self.count, self.n)
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        avg = {k: (v / self.count).to(live[k].dtype) for k, v in self.sum.items()}
        self.model.load_state_dict({**live, **avg})
        return live


def param_groups(model, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights; with layer_decay < 1 each
    group's lr is scaled by layer_decay^(depth from the top): the head and pooler 0, encoder
    layer i of L at L - i, the embeddings L + 1 (`lr_scale`, read by the optimizer's lr)."""
    import re

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = list(model.named_parameters())
    layer = re.compile(r"\.layer\.(\d+)\.")
    n_layers = 1 + max((int(m.group(1)) for n, _ in named if (m := layer.search(n))), default=-1)

    def depth(name: str) -> int:
        m = layer.search(name)
        if m:
            return n_layers - int(m.group(1))
        return n_layers + 1 if "embeddings" in name else 0

    groups: dict[tuple[bool, int], list] = {}
    for n, p in named:
        key = (n.endswith(no_decay), depth(n) if layer_decay < 1 else 0)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else weight_decay,
             "lr_scale": layer_decay ** d} for (nd, d), ps in sorted(groups.items())]


def finetune(cfg: FinetuneConfig, out_dir: Path) -> dict:
    """Train, keep the epoch (or, with average_last, the last epoch's checkpoint average) with the
    best validation macro F1, save it to out_dir."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    validate_model(cfg.model, cfg.max_length)  # one line, before any data or weights are read
    device = cfg.start()
    if cfg.amp != "none" and device != "cuda":
        raise ConfigError(f"--amp {cfg.amp} needs CUDA; on CPU train with --amp none")
    task, train, val = train_val_splits(cfg.data, cfg.limit_train, cfg.limit_eval)

    tokenizer = load_tokenizer(cfg.model)
    model = load_classifier(cfg.model, task.labels).to(device)
    names = input_names(model.config)
    train_enc = encode(tokenizer, train.texts, cfg.max_length, train.pairs)
    val_enc = encode(tokenizer, val.texts, cfg.max_length, val.pairs)
    y_train = torch.tensor(train.labels)

    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_scale")
    opt = adamw(groups, cfg.lr, device)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp)
    weights = class_weights(cfg.class_weights, np.asarray(train.labels), device, task.num_labels)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    params = list(model.parameters())

    best_f1, best_state, history = -1.0, None, []
    averager = CheckpointAverage(model, steps_per_epoch, cfg.average_last)
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(bucketed_batches(train_enc, cfg.batch_size, rng), desc=f"epoch {epoch}/{cfg.epochs}")
        running = 0.0
        for step, b in enumerate(bar, start=1):
            loss = train_step(model, train_enc.batch(b, names), y_train[b], device, opt, sched,
                              params, f"epoch {epoch} step {step}", weights,
                              cfg.label_smoothing, amp_dtype, scaler, cfg.focal_gamma)
            running = 0.98 * running + 0.02 * loss if step > 1 else loss
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if epoch == cfg.epochs:
                averager.after_step(step)
        # the epoch's weights, then (last epoch) the checkpoint average: both compete
        for avg in [None] + ([averager] if epoch == cfg.epochs and averager.n else []):
            live = None if avg is None else avg.swap_in()
            row = validation_row(model, val_enc, names, val.labels, device, epoch, running,
                                 (time.time() - t0) / 60, task.num_labels)
            if avg is not None:
                row["averaged_checkpoints"] = avg.n
            history.append(row)
            print(f"epoch {epoch}{'' if avg is None else f' (average of {avg.n} checkpoints)'}: "
                  f"validation macro F1 {row['val_macro_f1']:.4f}, accuracy {row['val_accuracy']:.4f}")
            if row["val_macro_f1"] > best_f1:
                best_f1 = row["val_macro_f1"]
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if live is not None:
                model.load_state_dict(live)

    assert best_state is not None
    model.load_state_dict(best_state)
    bias_info = {}
    if cfg.logit_bias:
        from common.torch_infer import torch_logits
        from train.bias import apply_logit_bias, fit_logit_bias

        logits = torch_logits(model, val_enc, names, 128, device)
        bias, before, after = fit_logit_bias(logits, np.asarray(val.labels))
        apply_logit_bias(model, bias)
        bias_info = {"logit_bias": bias.tolist(), "val_macro_f1_before_bias": before,
                     "val_macro_f1_after_bias": after}
        print(f"logit bias {np.round(bias, 2).tolist()}: validation macro F1 {before:.4f} -> {after:.4f}")
    model.to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    best = max(history, key=lambda h: h["val_macro_f1"])  # the first of equals, as chosen above
    best_epoch = best["epoch"]
    meta = {
        "config": recipe(cfg), "base_model": base_reference(cfg.model), "device": device,
        "model_type": model_spec(model.config).model_type, "max_length": cfg.max_length,
        "train_rows": len(train), "validation_rows": len(val), "task": brief(task.summary()),
        "data": {"train": train.fingerprint, "validation": val.fingerprint},
        "best_epoch": best_epoch, "best_val_macro_f1": best_f1, "history": history,
        "best_averaged_checkpoints": best.get("averaged_checkpoints", 0),
        "train_minutes": (time.time() - t0) / 60, "input_names": list(names), **bias_info,
    }
    write_recipe(out_dir, meta)
    return meta
