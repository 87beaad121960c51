"""Rows of a classification dataset, read from JSON Lines, CSV, Parquet or the Hugging Face Hub,
and each one checked: a bad row stops the read with its file, line (or row) and what to fix.
Which columns hold what, which labels exist and how they map to ids is the task's business
(common/task.py); this module reads rows and keeps their order exactly as stored (the test split
is never shuffled, so predictions line up with the published split).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError

SPLITS = ("train", "validation", "test")
DEFAULT_DATASET = "dair-ai/emotion"  # the default and published task (its Hub name)
FORMATS = (".jsonl", ".csv", ".parquet")


class DatasetError(UserError, ValueError):
    """A dataset could not be found or one of its rows is malformed."""


@dataclass(frozen=True)
class Columns:
    """Which field of a row holds the text, the second text of a pair (None: single texts) and
    the label."""

    text: str = "text"
    pair: str | None = None
    label: str = "label"

    def names(self) -> list[str]:
        return [c for c in (self.text, self.pair, self.label) if c]

    def flag(self, column: str) -> str:
        return {self.text: "--text-column", self.pair: "--text-pair-column",
                self.label: "--label-column"}[column]


# A row as read: text, second text (None for single-text tasks), label as stored (int or str),
# and where it came from (file:line, or name[split] row i), for error messages.
RawRow = tuple[str, str | None, int | str, str]


@dataclass(frozen=True)
class Split:
    """One split's rows with label ids (0..n-1 into the task's label names)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    source: str  # where the rows came from, without the machine's folders (reports are committed)
    fingerprint: str  # sha256 of the rows (text, pair, label id): the same rows hash the same
    pairs: tuple[str, ...] | None = None  # the second texts of a pair task

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def display(self) -> str:
        return self.source

    def take(self, indices: Sequence[int]) -> Split:
        """The rows at `indices`, in that order."""
        idx = [int(i) for i in indices]
        texts = tuple(self.texts[i] for i in idx)
        labels = tuple(self.labels[i] for i in idx)
        pairs = None if self.pairs is None else tuple(self.pairs[i] for i in idx)
        return Split(self.name, texts, labels, self.source, rows_fingerprint(texts, labels, pairs),
                     pairs)

    def head(self, n: int) -> Split:
        """The first n rows, order kept (tests and quick runs use slices, never samples)."""
        return self.take(range(min(n, len(self))))


def rows_fingerprint(texts: Sequence[str], labels: Sequence[int],
                     pairs: Sequence[str] | None = None) -> str:
    """sha256 over the rows: a single-text row hashes as [text, label], a pair as
    [text, pair, label], one JSON line each."""
    h = hashlib.sha256()
    for i, (t, y) in enumerate(zip(texts, labels, strict=True)):
        h.update(json.dumps([t, y] if pairs is None else [t, pairs[i], y]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _check_text(value: Any, column: str, where: str, cols: Columns) -> str:
    what = "the pair's second text" if column == cols.pair else "text"
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {what} '{column}' is {type(value).__name__}, expected a "
                           "string")
    if not value.strip():
        raise DatasetError(f"{where}: {what} '{column}' is empty or whitespace only; every row "
                           "needs one (remove the row or fill it in)")
    try:  # JSON may escape a lone surrogate (\\ud800), which no tokenizer can take
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{where}: '{column}' holds an unpaired UTF-16 surrogate") from None
    return value


_INT = re.compile(r"[+-]?\d+")


def _check_label(value: Any, column: str, where: str, text_format: bool) -> int | str:
    # bool is an int subclass; a JSON true/false label is a data bug, not class 1/0
    if isinstance(value, list | tuple | dict):
        raise DatasetError(f"{where}: label '{column}' is a {type(value).__name__} (a multi-label "
                           "row): only single-label classification is supported; give each row "
                           "one label")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DatasetError(f"{where}: label '{column}' is {value!r}, expected an integer id or a "
                           "label name (string)")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise DatasetError(f"{where}: label '{column}' is empty; every row needs its label")
        if text_format and _INT.fullmatch(value):  # CSV holds only text: "3" is the id 3
            return int(value)
    return value


def validate_row(obj: object, where: str, cols: Columns = Columns(),
                 text_format: bool = False) -> RawRow:
    """(text, pair, label) of one row, or DatasetError naming `where`, the field and the fix.
    text_format: the file stores only strings (CSV), so an integer-looking label is an id."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: row is {type(obj).__name__}, expected an object with "
                           f"fields {', '.join(repr(c) for c in cols.names())}")
    for c in cols.names():
        if c not in obj:
            have = ", ".join(repr(k) for k in obj if isinstance(k, str)) or "none"
            raise DatasetError(f"{where}: missing column '{c}' (the row has {have}); name the "
                               f"right one with {cols.flag(c)}")
        if obj[c] is None:  # JSON null, a Parquet null, a CSV row short of fields
            raise DatasetError(f"{where}: '{c}' has no value; fill it in or remove the row")
    text = _check_text(obj[cols.text], cols.text, where, cols)
    pair = _check_text(obj[cols.pair], cols.pair, where, cols) if cols.pair else None
    return text, pair, _check_label(obj[cols.label], cols.label, where, text_format), where


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); the file must be "
                           "UTF-8") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    raw = _read_bytes(path)
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
        yield where, obj


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import csv
    import io

    text = _decode(_read_bytes(path), path).removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise DatasetError(f"{path}:1: no header row; the first line must name the columns")
        dup = sorted({c for c in header if header.count(c) > 1})
        if dup:
            raise DatasetError(f"{path}:1: column(s) {dup} appear twice in the header")
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if None in row:  # DictReader puts a row's surplus fields under the key None
                raise DatasetError(f"{where}: {len(header) + len(row[None])} fields, the header "
                                   f"names {len(header)}; quote fields that hold commas")
            yield where, row
    except csv.Error as exc:
        raise DatasetError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # lazy: only for Parquet files

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise DatasetError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from None
    for i, row in enumerate(rows, start=1):
        yield f"{path} row {i}", row


READERS = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}


def read_file(path: Path, cols: Columns) -> list[RawRow]:
    """Every row of one local file, checked; an empty file is an error."""
    path = Path(path)
    rows = [validate_row(obj, where, cols, path.suffix == ".csv")
            for where, obj in READERS[path.suffix](path)]
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def split_file(folder: Path, name: str, split: str) -> Path | None:
    """The one file of a split in a local folder (`<name>.jsonl|.csv|.parquet`), None if none."""
    found = [folder / f"{name}{ext}" for ext in FORMATS if (folder / f"{name}{ext}").is_file()]
    if len(found) > 1:
        raise DatasetError(f"{folder} holds {' and '.join(p.name for p in found)} for the {split} "
                           "split: keep one")
    return found[0] if found else None


def hub_splits(name: str, config: str) -> list[str]:
    """The split names a Hub dataset has (asks the Hub, or its local cache when offline)."""
    try:
        import datasets  # lazy: heavy, and only needed off the local path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetError("loading a Hub dataset needs the `datasets` package: pip install "
                           "datasets") from exc
    try:
        return list(datasets.get_dataset_split_names(name, config or None))
    except Exception as exc:
        raise DatasetError(
            f"could not load {name!r}{f' (config {config!r})' if config else ''} from the Hugging "
            f"Face Hub: {str(exc)[:300]}. Offline? Point --data (or DATA=) at a local folder "
            "holding train/validation/test .jsonl, .csv or .parquet files, e.g. "
            "../shared/data/emotion") from exc


def read_hub(name: str, config: str, split: str, cols: Columns
             ) -> tuple[list[RawRow], tuple[str, ...] | None]:
    """Rows of one split of a Hub dataset, and the label names its ClassLabel feature carries
    (None if the label column is not a ClassLabel)."""
    try:
        import datasets  # lazy: heavy, and only needed off the local path
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetError("loading a Hub dataset needs the `datasets` package: pip install "
                           "datasets") from exc
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:
        raise DatasetError(
            f"could not load split {split!r} of {name!r}{f' (config {config!r})' if config else ''}"
            f" from the Hugging Face Hub: {str(exc)[:300]}. Offline? Point --data (or DATA=) at a "
            "local folder holding train/validation/test .jsonl, .csv or .parquet files, e.g. "
            "../shared/data/emotion") from exc
    feature = ds.features.get(cols.label)
    if feature is None:
        raise DatasetError(f"{name}[{split}] has no column '{cols.label}' (it has "
                           f"{', '.join(ds.features)}); name it with --label-column")
    if isinstance(feature, datasets.Sequence | list):
        raise DatasetError(f"{name}[{split}]: label '{cols.label}' is a list per row (multi-label):"
                           " only single-label classification is supported")
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    rows = [validate_row(dict(row), f"{name}[{split}] row {i}", cols) for i, row in enumerate(ds)]
    if not rows:
        raise DatasetError(f"{name}[{split}]: no rows")
    return rows, names


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
