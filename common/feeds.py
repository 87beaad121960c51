"""Tokenize once, batch many times: the one feed format (numpy int64 keyed by ONNX input name)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import UserError

ALL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class InputError(UserError, ValueError):
    """Bad inference input (empty text, wrong type)."""


@dataclass(frozen=True)
class Encoded:
    """Unpadded token ids of a list of texts; `truncated` counts texts cut at max_length."""

    ids: tuple[np.ndarray, ...]
    type_ids: tuple[np.ndarray, ...]
    pad_id: int
    max_length: int
    truncated: int

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    def batch(self, indices: Sequence[int], input_names: Sequence[str] = ALL_INPUTS,
              pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad the selected examples to the longest of them (or `pad_to`) -> feed dict."""
        longest = max(len(self.ids[i]) for i in indices)
        width = max(longest, pad_to or 0)
        n = len(indices)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for row, i in enumerate(indices):
            k = len(self.ids[i])
            ids[row, :k] = self.ids[i]
            mask[row, :k] = 1
            types[row, :k] = self.type_ids[i]
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        unknown = set(input_names) - arrays.keys()
        if unknown:
            raise InputError(f"model asks for inputs {sorted(unknown)}; this feed builder knows {ALL_INPUTS}")
        return {name: arrays[name] for name in input_names}


def check_texts(texts: Sequence[object]) -> list[str]:
    """Reject what a tokenizer would silently turn into an empty or meaningless input."""
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is {type(t).__name__}, expected str")
        if not t.strip():
            raise InputError(f"text #{i} is empty or whitespace only")
        out.append(t)
    if not out:
        raise InputError("no texts given")
    return out


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenize with truncation at max_length (texts longer than that are cut, and counted)."""
    texts = check_texts(texts)
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False,
                     return_token_type_ids=True, verbose=False)
    ids, types, truncated = [], [], 0
    for a, t in zip(full["input_ids"], full["token_type_ids"], strict=True):
        if len(a) > max_length:
            truncated += 1
            # keep [CLS] ... and the final [SEP], as the tokenizer's own truncation does
            a = a[: max_length - 1] + a[-1:]
            t = t[: max_length - 1] + t[-1:]
        ids.append(np.asarray(a, dtype=np.int64))
        types.append(np.asarray(t, dtype=np.int64))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(tuple(ids), tuple(types), int(pad), max_length, truncated)


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive index batches in dataset order (order kept for reporting)."""
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
