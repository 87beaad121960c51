"""The one place label names and ids are defined (dair-ai/emotion ClassLabel order)."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("sadness", "joy", "love", "anger", "fear", "surprise")
NUM_LABELS = len(LABELS)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}
