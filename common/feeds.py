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


def check_texts(texts: Sequence[object], what: str = "text") -> list[str]:
    """Reject what a tokenizer would silently turn into an empty or meaningless input."""
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{what} #{i} is {type(t).__name__}, expected str")
        if not t.strip():
            raise InputError(f"{what} #{i} is empty or whitespace only")
        out.append(t)
    if not out:
        raise InputError(f"no {what}s given")
    return out


def check_pairs(texts: Sequence[object], pairs: Sequence[object] | None,
                pair_task: bool) -> tuple[list[str], list[str] | None]:
    """The texts (and a pair task's second texts), checked: a pair task needs one `text_pair`
    per text, a single-text task takes none."""
    checked = check_texts(texts)
    if not pair_task:
        if pairs is not None:
            raise InputError("this model classifies single texts: send `text` only, no "
                             "`text_pair`")
        return checked, None
    if pairs is None:
        raise InputError("this model classifies text pairs: send `text_pair` beside `text`")
    second = check_texts(pairs, "text_pair")
    if len(second) != len(checked):
        raise InputError(f"{len(checked)} text(s) but {len(second)} text_pair(s): send one "
                         "text_pair per text")
    return checked, second


def encode(tokenizer, texts: Sequence[str], max_length: int,
           pairs: Sequence[str] | None = None) -> Encoded:
    """Tokenize with truncation at max_length (inputs longer than that are cut, and counted).
    With `pairs`, each row is the pair (text, pair): the tokenizer's pair template (second
    segment's token_type_ids 1 where the family has them), and an over-long pair is cut
    `longest_first` (a token at a time from the longer text), so both texts keep their start."""
    texts = check_texts(texts)
    if pairs is not None:
        pairs = check_texts(pairs, "text_pair")
    full = tokenizer(list(texts), None if pairs is None else list(pairs), add_special_tokens=True,
                     truncation=False, return_token_type_ids=True, verbose=False)
    ids, types, truncated = [], [], 0
    for i, (a, t) in enumerate(zip(full["input_ids"], full["token_type_ids"], strict=True)):
        if len(a) > max_length:
            truncated += 1
            if pairs is None:
                # keep [CLS] ... and the final [SEP], as the tokenizer's own truncation does
                a = a[: max_length - 1] + a[-1:]
                t = t[: max_length - 1] + t[-1:]
            else:
                cut = tokenizer(texts[i], pairs[i], add_special_tokens=True, max_length=max_length,
                                truncation="longest_first", return_token_type_ids=True)
                a, t = cut["input_ids"], cut["token_type_ids"]
        ids.append(np.asarray(a, dtype=np.int64))
        types.append(np.asarray(t, dtype=np.int64))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(tuple(ids), tuple(types), int(pad), max_length, truncated)


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive index batches in dataset order (order kept for reporting)."""
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
