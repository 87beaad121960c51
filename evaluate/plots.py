"""The evaluator's figures: a report's confusion matrix; the comparison's headline (macro-F1
delta against interleaved speed-up, both with intervals) and per-class delta heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.classes import focus, largest_changes
from common.plots import pyplot, save


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def draw_confusion(ax, cm, names, per_class, title: str) -> None:
    """The row-normalised matrix with counts; with many labels, the rows of the classes with the
    lowest F1 and the columns their rows go to (common.classes.focus), said in the title."""
    rows, cols = focus(names, per_class, cm)
    full = np.asarray(cm)
    norm = normalise_rows(full)[np.ix_(rows, cols)]
    cm = full[np.ix_(rows, cols)]
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), [names[j] for j in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [names[i] for i in rows], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(rows) < len(names):
        title += (f"\nrows: the {len(rows)} classes with the lowest F1 of {len(names)}; columns: "
                  "those and where their rows go\n(rows normalised over all classes; the full "
                  "matrix is in the JSON)")
    ax.set_title(title, fontsize=9)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")


def confusion_png(cm, names, per_class, title: str, path: Path) -> Path:
    rows, cols = focus(names, per_class, cm)
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.45 * len(cols) + 2.5),
                                         max(4.5, 0.4 * len(rows) + 2.5)))
    draw_confusion(ax, cm, names, per_class, title)
    return save(fig, path, dpi=120)


def _label(r: dict) -> str:
    return f"{r['backend']}/{r['variant']}"


def _colours(n: int) -> list:
    """n distinct colours (tab10, then tab20's paler half): no two rows share one."""
    plt = pyplot()
    base = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
    return [base[i % len(base)] for i in range(n)]


def f1_delta_vs_speedup(c: dict, path: Path) -> Path | None:
    """The headline: macro-F1 delta vs FP32 (pt, paired-bootstrap 95% interval) against the
    interleaved batch-1 speed-up (bootstrap 95% interval over rounds), one marker and colour per
    variant named in the legend (no labels on the points to overlap), one panel per backend run."""
    from evaluate.compare import interleaved

    inter = interleaved(c)
    rows = [r for r in c["rows"] if (r["backend"], r["variant"]) in inter and r.get("delta_f1")]
    plt = pyplot()
    runs = sorted({r["backend"] for r in rows})
    if not rows:
        fig, ax = plt.subplots(figsize=(7, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no variant has both an interleaved speed-up and a delta F1",
                ha="center", va="center")
        return save(fig, path, dpi=110)
    fig, axes = plt.subplots(1, len(runs), figsize=(7.5 * len(runs), 5.2), squeeze=False)
    markers = "osD^vP*Xh<>p"
    for ax, backend in zip(axes[0], runs, strict=True):
        mine = [r for r in rows if r["backend"] == backend]
        for i, (r, colour) in enumerate(zip(mine, _colours(len(mine)), strict=True)):
            x, ref = inter[(r["backend"], r["variant"])]
            d = r["delta_f1"]
            y, (ylo, yhi) = 100 * d["delta"], (100 * d["ci95"][0], 100 * d["ci95"][1])
            xlo, xhi = x["speedup_b1_ci95"]
            ax.errorbar(x["speedup_b1"], y, xerr=[[x["speedup_b1"] - xlo], [xhi - x["speedup_b1"]]],
                        yerr=[[y - ylo], [yhi - y]], fmt=markers[i % len(markers)], color=colour,
                        ms=8, capsize=3, label=f"{_label(r)} ({r['size_mb']:.0f} MB)")
        ax.axhline(0, color="black", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"batch-1 speed-up vs {backend}/{ref} (interleaved, 95% interval)")
        ax.set_ylabel(f"macro F1 delta vs {c['reference']} (pt, 95% interval)")
        dev = mine[0]["device"]
        ax.set_title(f"{backend}: {dev}, {mine[0]['threads']} threads", fontsize=10)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, path, dpi=110)


def per_class_delta(rows: list[dict], reference: str, names: list[str], path: Path) -> Path:
    """Per-class F1 delta (pt) of every variant against the FP32 reference, as a heatmap (with
    many labels: the classes that move most, common.classes.largest_changes)."""
    rows = [r for r in rows if r.get("per_class_delta_pt")]
    shown = largest_changes(rows, "per_class_delta_pt", names)
    plt = pyplot()
    data = np.array([[r["per_class_delta_pt"][c] for c in shown] for r in rows]) if rows else \
        np.zeros((1, len(shown)))
    lim = max(1.0, float(np.abs(data).max()))
    fig, ax = plt.subplots(figsize=(1.1 * len(shown) + 3.2, 0.42 * max(len(rows), 1) + 1.6))
    im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(shown)), shown, rotation=45 if len(shown) > 6 else 0,
                  ha="right" if len(shown) > 6 else "center")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:+.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(data[i, j]) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label=f"per-class F1 delta vs {reference} (pt)")
    which = ("" if len(shown) == len(names) else
             f": the {len(shown)} of {len(names)} classes that change most")
    ax.set_title(f"Per-class F1 change against {reference} (test split, batch 1){which}",
                 fontsize=10)
    return save(fig, path, dpi=110)
