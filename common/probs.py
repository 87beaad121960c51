"""Softmax over logits, in one place (numpy only: the NGC repository's Python models copy this file
beside them)."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (float64), rows summing to 1 (shifted by the row max: no overflow)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))
