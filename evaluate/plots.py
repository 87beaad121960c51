"""The evaluator's figures: confusion matrices, per-class F1 bars, macro F1 vs latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.labels import LABELS
from common.plots import pyplot, save


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def draw_confusion(ax, cm, title: str) -> None:
    norm = normalise_rows(cm)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(LABELS)), LABELS, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    cm = np.asarray(cm)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")


def confusion_png(cm, title: str, path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(5, 4.5))
    draw_confusion(ax, cm, title)
    return save(fig, path, dpi=120)


def _label(r: dict) -> str:
    return f"{r['backend']}/{r['variant']}"


def confusion_grid(rows: list[dict], path: Path) -> Path:
    n = len(rows)
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = pyplot().subplots(nrows, cols, figsize=(4.6 * cols, 4.3 * nrows), squeeze=False)
    for ax, r in zip(axes.ravel(), rows, strict=False):
        draw_confusion(ax, r["confusion_matrix"], f"{_label(r)} (macro F1 {r['macro_f1']:.3f})")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Confusion matrices, rows normalised (counts in cells)")
    return save(fig, path, dpi=110)


def per_class_bars(rows: list[dict], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(max(8, 1.6 * len(LABELS) + 0.2 * len(rows)), 4.5))
    width = 0.8 / len(rows)
    x = np.arange(len(LABELS))
    for i, r in enumerate(rows):
        ax.bar(x + i * width - 0.4 + width / 2, [r["per_class_f1"][c] for c in LABELS], width,
               label=_label(r))
    ax.set_xticks(x, LABELS)
    ax.set_ylabel("F1 (test)")
    lo = min(min(r["per_class_f1"].values()) for r in rows)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Per-class F1 by variant")
    return save(fig, path, dpi=110)


def f1_vs_latency(rows: list[dict], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 5))
    for r in rows:
        ax.scatter(r["latency_ms"]["p50"], r["macro_f1"], s=max(20.0, 4 * r["size_mb"]), alpha=0.6,
                   label=f"{_label(r)} on {r['device_kind']} ({r['size_mb']:.0f} MB)")
        ax.annotate(_label(r), (r["latency_ms"]["p50"], r["macro_f1"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("batch-1 latency p50 (ms)")
    ax.set_ylabel("macro F1 (test)")
    ax.set_title("Macro F1 vs batch-1 latency (marker area ~ model size)")
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path, dpi=110)
