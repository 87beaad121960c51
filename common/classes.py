"""Per-class views that stay readable at any number of labels: a table and a matrix of every
class up to MANY_LABELS; beyond that, the classes with the lowest F1 and the most-confused pairs
(the full per-class scores and confusion matrix stay in the JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MANY_LABELS = 12  # above this, tables and figures show the K worst classes, not all of them
WORST_K = 10


def names_of(r: dict[str, Any]) -> list[str]:
    """A report's label names in id order (the task it scored; older reports: per_class keys)."""
    task = r.get("task")
    if isinstance(task, dict) and isinstance(task.get("labels"), list):
        return list(task["labels"])
    return list(r["per_class"])


def worst(per_class: dict[str, dict[str, Any]], k: int = WORST_K) -> list[str]:
    """The k classes with the lowest F1 among those with test rows (ties: larger support first)."""
    scored = [c for c, v in per_class.items() if v["support"] > 0]
    return sorted(scored, key=lambda c: (per_class[c]["f1"], -per_class[c]["support"]))[:k]


def confused_pairs(cm: Sequence[Sequence[int]], names: Sequence[str], k: int = WORST_K
                   ) -> list[tuple[str, str, int]]:
    """The k most frequent (true, predicted) confusions, largest first."""
    m = np.asarray(cm, dtype=np.int64).copy()
    np.fill_diagonal(m, 0)
    order = np.argsort(-m, axis=None, kind="stable")[:k]
    out = []
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] == 0:
            break
        out.append((names[i], names[j], int(m[i, j])))
    return out


def focus(names: Sequence[str], per_class: dict[str, dict[str, Any]], cm: Any, k: int = 12,
          extra: int = 5) -> tuple[list[int], list[int]]:
    """(row ids, column ids) a confusion figure shows: every class up to MANY_LABELS; else the
    k classes with the lowest F1 as rows, and as columns those classes plus the `extra` classes
    their rows are most often mistaken for (so the figure shows where the errors go)."""
    if len(names) <= MANY_LABELS:
        every = list(range(len(names)))
        return every, every
    chosen = set(worst(per_class, k))
    rows = [i for i, n in enumerate(names) if n in chosen]
    m = np.asarray(cm, dtype=np.int64)[rows].copy()
    m[np.arange(len(rows)), rows] = 0
    sinks = [int(j) for j in np.argsort(-m.sum(axis=0), kind="stable")[:extra]
             if m[:, j].sum() > 0]
    return rows, sorted(set(rows) | set(sinks))


def largest_changes(rows: list[dict[str, Any]], key: str, names: Sequence[str],
                    k: int = MANY_LABELS) -> list[str]:
    """The classes whose value under `key` (a per-class dict of each row) moves most across the
    rows (largest |value|), in id order: every class up to MANY_LABELS."""
    if len(names) <= MANY_LABELS:
        return list(names)
    size = {c: max((abs(r[key][c]) for r in rows if r.get(key)), default=0.0) for c in names}
    chosen = set(sorted(names, key=lambda c: -size[c])[:k])
    return [c for c in names if c in chosen]
