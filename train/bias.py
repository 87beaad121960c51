"""A per-class logit bias fitted on validation for macro F1, stored in the classifier's own bias,
so every variant exported from the checkpoint carries it.

Why: cross-entropy trains for accuracy; macro F1 weighs the two small classes (love 9%, surprise
4% of validation) like the big ones, and their F1 is bounded by how often the model dares to
predict them. A bias per class moves each decision threshold; fitted on validation logits by
coordinate ascent on macro F1 (a grid of offsets per class, a few sweeps), it is six numbers, so
it barely over-fits 2,000 rows; the seed study (train/seeds.py) measures what it gives on test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics import classification_metrics


def fit_logit_bias(logits: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None,
                   sweeps: int = 3) -> tuple[np.ndarray, float, float]:
    """(bias, macro F1 before, macro F1 after) on these logits. Ties keep the smaller offset."""
    grid = np.round(np.linspace(-2.0, 2.0, 41), 3) if grid is None else grid
    y = np.asarray(labels)

    def f1(b: np.ndarray) -> float:
        return classification_metrics(y, (logits + b).argmax(-1))["macro_f1"]

    bias = np.zeros(logits.shape[1])
    before = best = f1(bias)
    for _ in range(sweeps):
        improved = False
        for c in range(len(bias)):
            for d in sorted(grid, key=abs):
                trial = bias.copy()
                trial[c] = d
                score = f1(trial)
                if score > best + 1e-12:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return bias, before, best


def logits_layer(model: Any) -> Any:
    """The Linear that writes the logits (BERT/DistilBERT/DeBERTa `classifier`, RoBERTa/ELECTRA
    `classifier.out_proj`): the last Linear with one output per label."""
    import torch

    n = model.config.num_labels
    layers = [m for _, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and m.out_features == n]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear with {n} outputs")
    return layers[-1]


def apply_logit_bias(model: Any, bias: np.ndarray) -> None:
    import torch

    layer = logits_layer(model)
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features))
        layer.bias += torch.as_tensor(bias, dtype=layer.bias.dtype, device=layer.bias.device)
