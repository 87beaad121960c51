"""Classification metrics (scikit-learn) and latency statistics.

Macro F1 averages over the labels that occur in the rows or the predictions (scikit-learn's
default set): a label with neither has no F1 to average, and counting it as 0 would make a
slice of a many-label task look worse than the model is. Per-class rows cover every label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_names(labels: int | Sequence[str] | None, *arrays: np.ndarray) -> list[str]:
    """The label names in id order: given, or "0".."n-1" for a count (None: from the arrays)."""
    if labels is None:
        labels = 1 + max(int(np.max(a)) for a in arrays if len(a))
    return [str(i) for i in range(labels)] if isinstance(labels, int) else list(labels)


def present(y_true: np.ndarray, y_pred: np.ndarray) -> list[int]:
    """The label ids macro F1 averages over: those in the rows or the predictions."""
    return sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           labels: int | Sequence[str] | None = None) -> dict:
    """Accuracy, macro F1, per-class precision / recall / F1 / support under the label names
    (`labels`: the names in id order, or their number), and the confusion matrix (rows: true)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    names = label_names(labels, y_true, y_pred)
    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present(y_true, y_pred),
                                   average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def latency_stats(seconds: list[float] | np.ndarray) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "n": int(ms.size)}


def bootstrap_weights(n: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """How often each of n rows is drawn in each resample (resamples x n counts). One matrix
    serves every row of a comparison, so every delta is measured on the same resamples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    w = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(resamples), n), idx.ravel()), 1.0)
    return w


def macro_f1_resampled(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Macro F1 (sklearn's definition, zero_division=0, over the labels classification_metrics
    averages over) of each resample in w, vectorised."""
    f1 = np.zeros(w.shape[0])
    classes = present(y, pred)
    for c in classes:
        tp = w @ ((y == c) & (pred == c)).astype(np.float64)
        support = w @ (y == c).astype(np.float64)
        predicted = w @ (pred == c).astype(np.float64)
        denom = support + predicted
        f1 += np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    return f1 / len(classes)


def paired_delta_ci(w: np.ndarray, y: np.ndarray, pred: np.ndarray, ref: np.ndarray,
                    level: float = 0.95) -> dict:
    """Macro F1 of `pred` minus that of `ref` on the same rows, with a paired bootstrap
    interval (both scored on each resample); `distinguishable` when it excludes zero."""
    d = macro_f1_resampled(w, y, pred) - macro_f1_resampled(w, y, ref)
    lo, hi = np.percentile(d, [50 * (1 - level), 100 - 50 * (1 - level)])
    point = float(classification_metrics(y, pred)["macro_f1"] - classification_metrics(y, ref)["macro_f1"])
    return {"delta": point, "ci95": [float(lo), float(hi)], "resamples": int(w.shape[0]),
            "distinguishable": bool(lo > 0 or hi < 0)}
