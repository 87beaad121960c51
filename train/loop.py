"""Pieces shared by every training recipe: seeding, length-bucketed batches, torch evaluation."""

from __future__ import annotations

import random

import numpy as np

from common.feeds import Encoded, batches


def train_val_splits(data: str, limit_train: int = 0, limit_eval: int = 0):
    """Train and validation splits, optionally cut to their first rows (tests, smoke runs)."""
    from common.data import load_split

    train, val = load_split(data, "train"), load_split(data, "validation")
    return (train.head(limit_train) if limit_train else train,
            val.head(limit_eval) if limit_eval else val)


def resolve_device(name: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    return name


def train_step(model, feed: dict[str, np.ndarray], labels, device: str, opt, sched, params,
               what: str) -> float:
    """One optimiser step (plain FP32, clipped at 1.0); refuses a non-finite loss."""
    import torch

    loss = model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()},
                 labels=labels.to(device)).loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what}: loss became {loss.item()}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss.item())


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


def torch_logits(model, enc: Encoded, input_names, batch_size: int = 64, device: str = "cpu",
                 progress: str | None = None) -> np.ndarray:
    """Logits of every example, in order (batches padded to their own longest example)."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    # Batches of similar length (then put back in order): padding to the longest of a batch in
    # dataset order costs about twice the compute on this data.
    order = np.argsort(enc.lengths(), kind="stable")
    out = []
    with torch.inference_mode():
        for b in tqdm(batches(len(enc), batch_size), desc=progress, disable=progress is None,
                      leave=False):
            feed = enc.batch(order[b].tolist(), input_names)
            t = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
            out.append(model(**t).logits.float().cpu().numpy())
    logits = np.empty_like(np.concatenate(out))
    logits[order] = np.concatenate(out)
    return logits


def model_input_names(model) -> tuple[str, ...]:
    """BERT-style models take token_type_ids only when the config has a type vocabulary."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and "token_type_ids" in \
            model.forward.__code__.co_varnames:
        names.append("token_type_ids")
    return tuple(names)


def validation_row(model, enc: Encoded, names, labels, device: str, epoch: int, train_loss: float,
                   minutes: float) -> dict:
    """Score one epoch on validation: the history row that model selection reads."""
    from evaluate.metrics import classification_metrics

    logits = torch_logits(model, enc, names, batch_size=128, device=device, progress="validation")
    m = classification_metrics(np.asarray(labels), logits.argmax(-1))
    return {"epoch": epoch, "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"],
            "train_loss_ema": train_loss, "minutes": minutes}
