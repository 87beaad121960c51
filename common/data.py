"""Loader for the emotion task: a Hub dataset name or a local folder of JSON Lines files.

Every row is validated (text: non-empty string after stripping; label: int in 0..5) and a bad
row stops the load with file, line and reason. Row order is kept exactly as stored: the test
split is never shuffled or reordered, so predictions line up with the published split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.labels import NUM_LABELS

SPLITS = ("train", "validation", "test")
DEFAULT_DATASET = "dair-ai/emotion"
HUB_CONFIG = "split"  # the 16k/2k/2k configuration of dair-ai/emotion


class DatasetError(UserError, ValueError):
    """A dataset could not be found or one of its rows is malformed."""


@dataclass(frozen=True)
class Split:
    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    source: str  # file path or hub name + config
    fingerprint: str  # sha256 of the file (local) or of the rows (hub)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def display(self) -> str:
        """The source without the machine's folders (reports are committed): `emotion/test.jsonl`
        for a local file, the Hub name and config otherwise."""
        p = Path(self.source)
        return f"{p.parent.name}/{p.name}" if p.suffix == ".jsonl" else self.source

    def head(self, n: int) -> Split:
        """The first n rows, order kept (tests and quick runs use slices, never samples)."""
        return Split(self.name, self.texts[:n], self.labels[:n], self.source,
                     _rows_fingerprint(self.texts[:n], self.labels[:n]))


def validate_row(obj: object, where: str) -> tuple[str, int]:
    """Return (text, label) of one row or raise DatasetError naming `where` and the reason."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: row is {type(obj).__name__}, expected an object "
                           '{"text": str, "label": int}')
    missing = {"text", "label"} - obj.keys()
    if missing:
        raise DatasetError(f"{where}: missing field(s) {sorted(missing)}")
    text, label = obj["text"], obj["label"]
    if not isinstance(text, str):
        raise DatasetError(f"{where}: 'text' is {type(text).__name__}, expected a string")
    if not text.strip():
        raise DatasetError(f"{where}: 'text' is empty or whitespace only")
    try:  # JSON may escape a lone surrogate (\\ud800), which no tokenizer can take
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{where}: 'text' holds an unpaired UTF-16 surrogate") from None
    # bool is an int subclass; a JSON true/false label is a data bug, not class 1/0.
    if isinstance(label, bool) or not isinstance(label, int):
        raise DatasetError(f"{where}: 'label' is {label!r}, expected an integer 0..{NUM_LABELS - 1}")
    if not 0 <= label < NUM_LABELS:
        raise DatasetError(f"{where}: 'label' {label} is out of range 0..{NUM_LABELS - 1}")
    return text, label


def _read_jsonl(path: Path, split: str) -> Split:
    texts: list[str] = []
    labels: list[int] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    # Lines are split on b"\n" only: str.splitlines() also splits on \x0b, \x1c, U+2028 ...
    # inside a row, which would misnumber every later line.
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start} of "
                               "the line); the file must be UTF-8 JSON Lines") from None
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the row
        if not line.strip():
            continue  # a trailing blank line is not a row
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, nesting too deep
            raise DatasetError(f"{where}: not a usable JSON row ({type(exc).__name__}: "
                               f"{str(exc)[:80]})") from None
        text, label = validate_row(obj, where)
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DatasetError(f"{path}: no rows")
    return Split(split, tuple(texts), tuple(labels), str(path), hashlib.sha256(raw).hexdigest())


def _rows_fingerprint(texts: tuple[str, ...], labels: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    for t, y in zip(texts, labels, strict=True):
        h.update(json.dumps([t, y]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _load_hub(name: str, split: str) -> Split:
    try:
        import datasets  # lazy: heavy, and only needed off the local path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetError("loading a Hub dataset needs the `datasets` package: pip install datasets") from exc
    try:
        ds = datasets.load_dataset(name, HUB_CONFIG, split=split)
    except Exception as exc:
        raise DatasetError(
            f"could not load {name!r} (config {HUB_CONFIG!r}) from the Hugging Face Hub: {exc}. "
            "Offline? Point --data (or DATA=) at a local folder holding train/validation/test.jsonl, "
            "e.g. ../shared/data/emotion") from exc
    texts, labels = [], []
    for i, row in enumerate(ds):
        text, label = validate_row(dict(row), f"{name}[{split}] row {i}")
        texts.append(text)
        labels.append(label)
    t, y = tuple(texts), tuple(labels)
    return Split(split, t, y, f"{name} ({HUB_CONFIG})", _rows_fingerprint(t, y))


def load_split(data: str | Path, split: str) -> Split:
    """Load one split from a local folder (`<data>/<split>.jsonl`) or a Hub dataset name."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {SPLITS}")
    path = Path(data)
    if path.is_dir():
        f = path / f"{split}.jsonl"
        if not f.is_file():
            raise DatasetError(f"{f} not found: a local dataset folder needs "
                               f"{', '.join(s + '.jsonl' for s in SPLITS)}")
        return _read_jsonl(f, split)
    if path.exists() or str(data).startswith((".", "/")):
        raise DatasetError(f"{data!r} is not a folder of {{train,validation,test}}.jsonl "
                           "(and does not look like a Hub dataset name)")
    return _load_hub(str(data), split)


def dataset_fingerprint(data: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, str]:
    """sha256 per split, for manifests (loads and validates the splits)."""
    return {s: load_split(data, s).fingerprint for s in splits}


def stratified_halves(labels: Any, seed: int) -> tuple[Any, Any]:
    """Indices of halves A and B, each holding half of every class (seeded)."""
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))
