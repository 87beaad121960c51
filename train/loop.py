"""Pieces shared by every training recipe: seeding, length-bucketed batches, torch evaluation."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.config import check_ranges, doc, location, run_only
from common.data import DEFAULT_DATASET
from common.errors import UserError
from common.feeds import Encoded


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite: the recipe (learning rate, precision) needs changing."""


@dataclass(frozen=True)
class TrainRun:
    """What every trainer's config (baseline, QAT, student, QLoRA) shares: the task's rows and how
    many of them, the batch and weight decay, the seed, and how the run goes (device, threads).
    A trainer's config extends it with its own recipe."""

    data: str = location(DEFAULT_DATASET, "the task's rows (a build points it at artifacts/task)")
    batch_size: int = 32
    weight_decay: float = 0.01
    seed: int = 42
    device: str = run_only("auto", "auto | cpu | cuda")
    threads: int = run_only(0, "torch intra-op threads; 0 = torch default")
    limit_train: int = doc(0, "first N training rows (0 = all); for tests and smoke runs")
    limit_eval: int = doc(0, "first N validation rows (0 = all)")

    def __post_init__(self) -> None:
        check_ranges(self, batch_size=">= 1", weight_decay=">= 0", seed=">= 0", threads=">= 0",
                     limit_train=">= 0", limit_eval=">= 0")

    def start(self) -> str:
        """Threads set, every RNG seeded, in that order (as each trainer did); the device to use."""
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        seed_everything(self.seed)
        return resolve_device(self.device)


# What a run measures of the clock, not of the model: returned to the build (its manifest entry
# records them) but kept out of the recipe.json saved beside the weights, so a retraining that
# makes the same weights makes the same folder, and what depends on it keeps its key.
WALL_CLOCK = frozenset({"train_minutes", "minutes"})


def write_recipe(out_dir, meta: dict) -> None:
    """recipe.json beside a trained model: `meta` without its wall-clock fields (WALL_CLOCK), at
    the top and in the history rows."""
    import json
    from pathlib import Path

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in WALL_CLOCK}
        return [strip(x) for x in v] if isinstance(v, list) else v

    (Path(out_dir) / "recipe.json").write_text(json.dumps(strip(meta), indent=2) + "\n",
                                               encoding="utf-8")


def train_val_splits(data: str, limit_train: int = 0, limit_eval: int = 0):
    """The task, and its train and validation splits, optionally cut to their first rows (tests,
    smoke runs)."""
    from common.task import load_task

    task = load_task(data)
    train, val = task.split("train"), task.split("validation")
    return (task, train.head(limit_train) if limit_train else train,
            val.head(limit_eval) if limit_eval else val)


def resolve_device(name: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU (use --device cpu, "
                        "or run inside the NGC container with --gpus all)")
    return name


# Called on the training thread before every step: a build may change torch's thread count
# between steps (engines/overlap.py gives the second core back when the training beside this one
# ends; torch's thread count only takes effect when set on the thread that computes).
STEP_HOOKS: list[Callable[[], None]] = []


def run_step_hooks() -> None:
    for hook in list(STEP_HOOKS):
        hook()


def classification_loss(logits, labels, class_weights=None, label_smoothing: float = 0.0,
                        focal_gamma: float = 0.0):
    """Cross-entropy (class-weighted, label-smoothed), or with focal_gamma > 0 the focal loss
    -w_y (1 - p_y)^gamma log p_y, which down-weights examples the model already gets right
    (Lin et al., 2017). Both are means weighted by w_y, so gamma 0 is exactly the weighted
    cross-entropy torch computes."""
    import torch

    if focal_gamma == 0:
        return torch.nn.functional.cross_entropy(logits, labels, weight=class_weights,
                                                 label_smoothing=label_smoothing)
    logp = torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]
    w = (torch.ones_like(logp) if class_weights is None else class_weights[labels])
    # 1 - p as -expm1(log p), floored: at p == 1 in float32, (1 - p)^gamma with gamma < 1 has an
    # infinite derivative, and 0 * inf would turn the weights NaN behind a finite loss
    modulating = (-torch.expm1(logp)).clamp_min(1e-12).pow(focal_gamma)
    return (w * modulating * -logp).sum() / w.sum()


def distillation_loss(logits, teacher_logits, temperature: float):
    """KL(teacher || student) on temperature-softened distributions, times T^2 so that its
    gradients keep their scale as T changes (Hinton et al., 2015)."""
    import torch

    t = temperature
    return torch.nn.functional.kl_div(torch.log_softmax(logits / t, -1),
                                      torch.log_softmax(teacher_logits / t, -1),
                                      reduction="batchmean", log_target=True) * t * t


def train_step(model, feed: dict[str, np.ndarray], labels, device: str, opt, sched, params,
               what: str, class_weights=None, label_smoothing: float = 0.0, amp_dtype=None,
               scaler=None, focal_gamma: float = 0.0, teacher=None) -> float:
    """One optimiser step, gradients clipped at 1.0 over `params`; refuses a non-finite loss.
    class_weights: per-class loss weights (None = plain cross-entropy); focal_gamma > 0: focal
    loss instead (classification_loss); amp_dtype/scaler: CUDA autocast and fp16 loss scaling
    (None = FP32, the CPU path); teacher: (teacher logits of this batch, weight, temperature):
    the loss becomes (1 - weight) * label loss + weight * distillation_loss."""
    import torch

    run_step_hooks()

    with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()}).logits
        loss = classification_loss(logits.float(), labels.to(device), class_weights,
                                   label_smoothing, focal_gamma)
        if teacher is not None:
            t_logits, weight, temperature = teacher
            loss = (1 - weight) * loss + weight * distillation_loss(
                logits.float(), t_logits.to(device).float(), temperature)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{what}: loss became {loss.item()}; lower the learning rate"
                               + (" or train without --amp" if amp_dtype is not None else ""))
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    else:  # fp16: scaled backward, unscaled before clipping, the step skipped on overflow
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
    sched.step()
    return float(loss.item())


def adamw(groups, lr: float, device: str, **kw):
    """AdamW with the fused kernel (CPU and CUDA): the same update as the default for-each
    implementation in one pass over the parameters; measured 25 ms vs 126 ms per step for
    MiniLM's 22.7M parameters on 2 cores, about 10% of a baseline step."""
    import torch

    return torch.optim.AdamW(groups, lr=lr, fused=device in {"cpu", "cuda"}, **kw)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bucketed_batches(enc: Encoded, batch_size: int, rng: np.random.Generator,
                     bucket_factor: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length: ~2x faster on CPU than random batches, since padding
    to the longest example dominates the cost of short sentences. Shuffle, sort inside windows of
    `bucket_factor` batches, cut, then shuffle the batch order."""
    idx = rng.permutation(len(enc))
    lengths = enc.lengths()
    window = batch_size * bucket_factor
    out: list[list[int]] = []
    for s in range(0, len(idx), window):
        chunk = sorted(idx[s:s + window].tolist(), key=lambda i: lengths[i])
        out.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def validation_row(model, enc: Encoded, names, labels, device: str, epoch: int, train_loss: float,
                   minutes: float, num_labels: int) -> dict:
    """Score one epoch on validation: the history row that model selection reads."""
    from common.metrics import classification_metrics
    from common.torch_infer import torch_logits

    logits = torch_logits(model, enc, names, batch_size=128, device=device, progress="validation")
    m = classification_metrics(np.asarray(labels), logits.argmax(-1), num_labels)
    return {"epoch": epoch, "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"],
            "train_loss_ema": train_loss, "minutes": minutes}
