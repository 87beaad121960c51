"""matplotlib figures (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.labels import LABELS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    draw_confusion(ax, cm, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
