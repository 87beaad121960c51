"""The task: which rows, which columns, which label names. Declared once, resolved once.

TaskSpec is what the user declares (--data, --text-column, --text-pair-column, --label-column,
--labels, --hub-config, --split-names, --validation-fraction, --validation-seed). resolve_task
reads the data with it, checks every row and the label set as a whole, and returns the Task:
the label names and where they came from, each split's rows with label ids, and a summary (rows
and label counts per split, how validation was made) that artifacts and reports carry.

A build writes the Task once (artifacts/task/: task.json and every split as canonical JSON
Lines, `text` / `text_pair` / `label` id); every later stage, the evaluator and the server read
it from there, so nothing else names a label or a column, and a change of the data, a column or
a label name changes that artifact's hash and rebuilds everything made from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc, location, recipe
from common.data import (
    DEFAULT_DATASET,
    FORMATS,
    SPLITS,
    Columns,
    DatasetError,
    RawRow,
    Split,
    hub_splits,
    read_file,
    read_hub,
    rows_fingerprint,
    split_file,
)
from common.errors import ConfigError

TASK_FILE = "task.json"
LABELS_FILE = "labels.json"  # label names in id order, beside a local dataset's files
CANONICAL = Columns("text", "text_pair", "label")  # the columns of artifacts/task/*.jsonl


@dataclass(frozen=True)
class TaskSpec:
    """What the user declares about the task; the data's content is keyed through the task
    artifact, so `data` (a location) stays out of the recipe."""
    data: str = location(DEFAULT_DATASET, "Hub dataset name, or a local folder of train / "
                         "validation / test files (.jsonl, .csv or .parquet)")
    text_column: str = doc("text", "the column holding the text")
    text_pair_column: str = doc("", "the column holding a pair's second text (empty: one text "
                                "per row)")
    label_column: str = doc("label", "the column holding the label (an integer id or a name)")
    labels: str = doc("", "label names in id order, comma-separated, for data that names none "
                      "(a Hub ClassLabel or a labels.json beside the files names them)")
    hub_config: str = doc("", "the Hub dataset's configuration (empty: its default)")
    split_names: str = doc("", "the dataset's names for our splits, e.g. validation=dev,"
                           "test=test_matched")
    validation_fraction: float = doc(0.1, "share of each label's training rows carved out as "
                                     "validation when the data has no validation split")
    validation_seed: int = doc(0, "seed of that carve")

    def __post_init__(self) -> None:
        check_ranges(self, validation_fraction="in (0, 0.5]", validation_seed=">= 0")
        cols = [c for c in (self.text_column, self.text_pair_column, self.label_column) if c]
        if not self.text_column or not self.label_column:
            raise ConfigError("--text-column and --label-column must name a column")
        if len(set(cols)) != len(cols):
            raise ConfigError(f"--text-column, --text-pair-column and --label-column name one "
                              f"column twice ({', '.join(cols)})")
        names = self.label_list
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"--labels {self.labels!r}: give distinct, non-empty names "
                              "separated by commas")
        for k, v in self.split_map.items():
            if k not in SPLITS or not v:
                raise ConfigError(f"--split-names {self.split_names!r}: write ours=theirs with "
                                  f"ours one of {', '.join(SPLITS)}")

    @property
    def columns(self) -> Columns:
        return Columns(self.text_column, self.text_pair_column or None, self.label_column)

    @property
    def label_list(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.labels.split(",")) if self.labels.strip() else ()

    @property
    def split_map(self) -> dict[str, str]:
        pairs = [x.split("=", 1) for x in self.split_names.split(",") if x.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"--split-names {self.split_names!r}: write ours=theirs, comma "
                              "separated (e.g. validation=dev)")
        return {k.strip(): v.strip() for k, v in pairs}

    def their(self, split: str) -> str:
        return self.split_map.get(split, split)


@dataclass(frozen=True)
class Task:
    """A resolved task: its label names, the rows of each split (label ids), and the summary
    recorded in artifacts and reports."""

    source: str  # the dataset without the machine's folders: a Hub name, or a folder's name
    columns: Columns
    labels: tuple[str, ...]
    label_source: str  # where the names came from (the report says which)
    validation: dict[str, Any]  # {"from": file} or how it was carved from train
    warnings: tuple[str, ...]
    spec: dict[str, Any]  # TaskSpec's recipe fields: the same declaration over other --data
    rows: dict[str, Split] = field(compare=False, repr=False)
    hub: bool = False  # read from the Hugging Face Hub (source is its name), not a local folder

    @property
    def pair(self) -> bool:
        return self.columns.pair is not None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.labels)}

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; choose one of {SPLITS}")
        return self.rows[name]

    def summary(self) -> dict[str, Any]:
        """What artifacts and reports record: source, columns, labels, rows and label counts
        per split, how validation was made (canonical JSON: its hash keys the task)."""
        splits = {}
        for name, s in self.rows.items():
            counts = Counter(s.labels)
            splits[name] = {"rows": len(s), "from": s.source, "fingerprint": s.fingerprint,
                            "label_counts": {n: counts.get(i, 0) for i, n in enumerate(self.labels)}}
        return {"source": self.source, "hub": self.hub, "pair": self.pair,
                "columns": {"text": self.columns.text, "text_pair": self.columns.pair,
                            "label": self.columns.label},
                "labels": list(self.labels), "label_source": self.label_source,
                "splits": splits, "validation": self.validation,
                "warnings": list(self.warnings), "spec": self.spec}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.summary(), sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        """One line for logs and reports: the dataset, its columns, its labels."""
        cols = (f"{self.columns.text} + {self.columns.pair}" if self.pair else self.columns.text)
        shown = ", ".join(self.labels[:8]) + (f", ... ({self.num_labels})" if self.num_labels > 8
                                                else "")
        return (f"{self.source}: {'text pairs' if self.pair else 'texts'} from {cols}, label "
                f"from {self.columns.label}; {self.num_labels} labels ({shown}) from "
                f"{self.label_source}")


def _labels_json(path: Path) -> tuple[str, ...]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc}); write a JSON list of the label "
                           'names in id order, e.g. ["negative", "positive"]') from None
    if (not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != len(names)):
        raise DatasetError(f"{path}: must be a JSON list of distinct, non-empty strings (the label "
                           'names in id order, e.g. ["negative", "positive"])')
    return tuple(names)


def _read_local(spec: TaskSpec, folder: Path) -> tuple[dict[str, list[RawRow]], dict[str, str],
                                                      tuple[str, ...] | None, str | None]:
    raw, origin = {}, {}
    for split in SPLITS:
        f = split_file(folder, spec.their(split), split)
        if f is not None:
            raw[split] = read_file(f, spec.columns)
            origin[split] = f"{folder.name}/{f.name}"
    lj, tj = folder / LABELS_FILE, folder / TASK_FILE
    if lj.is_file():
        return raw, origin, _labels_json(lj), f"{folder.name}/{LABELS_FILE}"
    if tj.is_file():  # a build's task folder given as data: its rows hold ids, task.json the names
        return raw, origin, _built_labels(tj, spec), f"{folder.name}/{TASK_FILE}"
    return raw, origin, None, None


def _built_labels(path: Path, spec: TaskSpec) -> tuple[str, ...]:
    """The label names of a task folder a build wrote (task.json), checked against the columns
    the spec reads its rows with."""
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
        names, pair = tuple(s["labels"]), s["columns"]["text_pair"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a build's task summary ({exc}); give the original data "
                           "or rebuild the task with `make engines`") from None
    if pair and spec.columns.pair != CANONICAL.pair:
        raise DatasetError(f"{path.parent} holds text pairs (columns {CANONICAL.text}, "
                           f"{CANONICAL.pair}): add --text-pair-column {CANONICAL.pair}")
    return names


def _read_hub(spec: TaskSpec) -> tuple[dict[str, list[RawRow]], dict[str, str],
                                       tuple[str, ...] | None, str | None]:
    have = hub_splits(spec.data, spec.hub_config)
    raw, origin, names = {}, {}, None
    for split in SPLITS:
        if spec.their(split) in have:
            raw[split], found = read_hub(spec.data, spec.hub_config, spec.their(split),
                                         spec.columns)
            origin[split] = f"{spec.data}[{spec.their(split)}]"
            names = names or found
    return raw, origin, names, "the Hub dataset's ClassLabel" if names else None


def _expected(spec: TaskSpec, split: str) -> str:
    return "/".join(f"{spec.their(split)}{ext}" for ext in FORMATS)


def _label_names(spec: TaskSpec, raw: dict[str, list[RawRow]], found: tuple[str, ...] | None,
                 found_source: str | None) -> tuple[tuple[str, ...], str]:
    """The label names in id order and where they came from: the data's own (a Hub ClassLabel
    or labels.json), else --labels, else the sorted distinct training labels."""
    given = spec.label_list
    if found and given and found != given:
        raise DatasetError(f"{found_source} names the labels {', '.join(found)}; --labels says "
                           f"{', '.join(given)}: drop --labels or make it agree")
    if found:
        return found, str(found_source)
    if given:
        return given, "--labels"
    values = sorted({r[2] for r in raw["train"]}, key=lambda v: (isinstance(v, str), v))
    return tuple(str(v) for v in values), "the sorted distinct training labels"


def _ids(raw: dict[str, list[RawRow]], names: tuple[str, ...], label_source: str,
         by_value: bool) -> dict[str, list[int]]:
    """Label ids per split. by_value: the names are the distinct training values themselves
    (no list was given), so an id is a value's position among them."""
    index = {n: i for i, n in enumerate(names)}
    out: dict[str, list[int]] = {}
    for split, rows in raw.items():
        ids = []
        for _, _, y, where in rows:
            if isinstance(y, int) and not by_value:
                if not 0 <= y < len(names):
                    raise DatasetError(f"{where}: label id {y} is out of range 0..{len(names) - 1} "
                                       f"for the {len(names)} names of {label_source}")
                ids.append(y)
            elif str(y) in index:
                ids.append(index[str(y)])
            elif by_value:  # a value training never had
                raise DatasetError(f"{where}: label {y!r} never appears in the training split: a "
                                   "classifier cannot learn it; add training rows for it or drop "
                                   "this row")
            else:
                raise DatasetError(f"{where}: label {y!r} is not one of the {len(names)} names of "
                                   f"{label_source} ({', '.join(names[:10])}"
                                   f"{', ...' if len(names) > 10 else ''})")
        out[split] = ids
    return out


def _check_kinds(raw: dict[str, list[RawRow]]) -> None:
    """Integer ids and label names are not mixed (one row's 1 and another's "1" would be two
    labels, or the same one, depending on the reader)."""
    first = raw["train"][0]
    kind = isinstance(first[2], int)
    for rows in raw.values():
        for _, _, y, where in rows:
            if isinstance(y, int) != kind:
                what = {True: "an integer id", False: "a name"}
                raise DatasetError(f"{where}: label {y!r} is {what[isinstance(y, int)]}, but "
                                   f"{first[3]} has {what[kind]}: use one kind of label in every "
                                   "file")


def carve_validation(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the training rows that become validation: `fraction` of all rows,
    shared out over the labels in proportion (largest remainders first, ties in a seeded order),
    each label's rows drawn with `seed`; every label keeps at least one row in train."""
    import numpy as np

    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    rows = {c: rng.permutation(np.nonzero(y == c)[0]) for c in classes}
    share = {c: fraction * len(rows[c]) for c in classes}
    take = {c: min(int(share[c]), len(rows[c]) - 1) for c in classes}
    left = int(round(fraction * len(y))) - sum(take.values())
    for c in sorted(rng.permutation(classes), key=lambda c: -(share[c] - int(share[c]))):
        if left <= 0:
            break
        if take[c] < len(rows[c]) - 1:
            take[c] += 1
            left -= 1
    return sorted(int(i) for c in classes for i in rows[c][:take[c]])


def resolve_task(spec: TaskSpec) -> Task:
    """Read and check the data the spec declares; DatasetError (one line: file, row, fix) on the
    first problem. Cached per spec and file state, so a build reads the data once."""
    folder = Path(spec.data)
    if folder.is_dir():
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted(folder.iterdir()) if p.is_file())
    elif folder.exists() or spec.data.startswith((".", "/")):
        raise DatasetError(f"--data {spec.data!r} is not a folder of train / validation / test "
                           f"files ({', '.join(FORMATS)}) and does not look like a Hub dataset "
                           "name")
    else:
        stamp = ()
    return _resolve(spec, stamp)


@functools.lru_cache(maxsize=8)
def _resolve(spec: TaskSpec, stamp: tuple) -> Task:
    folder = Path(spec.data)
    local = folder.is_dir()
    raw, origin, found, found_source = _read_local(spec, folder) if local else _read_hub(spec)
    for split in ("train", "test"):
        if split not in raw:
            where = (f"{folder} has no {_expected(spec, split)}" if local else
                     f"{spec.data} has no split {spec.their(split)!r}")
            raise DatasetError(f"{where}: a task needs train and test splits (validation is "
                               "carved from train when missing; --split-names maps other names)")
    _check_kinds(raw)
    names, label_source = _label_names(spec, raw, found, found_source)
    by_value = label_source == "the sorted distinct training labels"
    ids = _ids(raw, names, label_source, by_value)
    seen = set(ids["train"])
    if len(names) < 2 or len(seen) < 2:
        raise DatasetError(f"the training split holds {len(seen)} distinct label(s) of "
                           f"{len(names)} named ({', '.join(names[:5])}): a classifier needs two "
                           "or more")
    for split in ("validation", "test"):
        for i, (_, _, _, where) in enumerate(raw.get(split, [])):
            if ids[split][i] not in seen:
                raise DatasetError(f"{where}: label {names[ids[split][i]]!r} never appears in the "
                                   "training split: a classifier cannot learn it; add training "
                                   "rows for it or drop this row")
    warnings = tuple(f"label {n!r} ({label_source}) has no training row: the model never learns "
                     "it; it is scored as usual" for i, n in enumerate(names) if i not in seen)
    if "validation" in raw:
        validation: dict[str, Any] = {"from": origin["validation"]}
    else:  # carve it from train, stated in the task (and so in every recipe and report)
        held = carve_validation(ids["train"], spec.validation_fraction, spec.validation_seed)
        if not held:
            raise DatasetError(f"{origin['train']} is too small to carve a validation split from "
                               f"({len(raw['train'])} rows); add a validation file")
        keep = sorted(set(range(len(raw["train"]))) - set(held))
        for src, dst in ((held, "validation"), (keep, "train")):
            raw[dst] = [raw["train"][i] for i in src]
            ids[dst] = [ids["train"][i] for i in src]
        validation = {"carved_from": origin["train"], "fraction": spec.validation_fraction,
                      "seed": spec.validation_seed, "rows": len(held),
                      "how": "that share of the rows, shared out over the labels in proportion, "
                             "drawn with the seed; the rest stay in train, order kept"}
        origin["validation"] = f"carved from {origin['train']}"
    rows = {}
    for split in SPLITS:
        texts = tuple(r[0] for r in raw[split])
        pairs = tuple(str(r[1]) for r in raw[split]) if spec.columns.pair else None
        labels = tuple(ids[split])
        rows[split] = Split(split, texts, labels, origin[split],
                            rows_fingerprint(texts, labels, pairs), pairs)
    source = folder.name if local else (f"{spec.data} ({spec.hub_config})" if spec.hub_config
                                        else spec.data)
    return Task(source, spec.columns, names, label_source, validation, warnings,
                recipe(spec)["fields"], rows, not local)


def write_task(task: Task, out: Path) -> dict[str, Any]:
    """artifacts/task/: each split as canonical JSON Lines and task.json (the summary)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, s in task.rows.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i, (t, y) in enumerate(zip(s.texts, s.labels, strict=True)):
                row = {"text": t, **({"text_pair": s.pairs[i]} if s.pairs else {}), "label": y}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / TASK_FILE).write_text(json.dumps(task.summary(), indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")
    return {"task": brief(task.summary())}


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """What a manifest entry or a report records of the task: all of the summary but the row
    hashes (the task artifact's own hash stands for those)."""
    return {**summary, "splits": {k: {kk: vv for kk, vv in v.items() if kk != "fingerprint"}
                                  for k, v in summary["splits"].items()}}


def read_task(folder: Path) -> Task:
    """The task a build wrote (artifacts/task/)."""
    from common.manifest import ArtifactError

    folder = Path(folder)
    try:
        s = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        cols = Columns(s["columns"]["text"], s["columns"]["text_pair"], s["columns"]["label"])
        labels = tuple(s["labels"])
        splits = s["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{folder / TASK_FILE} is missing or unreadable ({exc}); rebuild it "
                            "with `make engines`") from None
    canon = Columns(CANONICAL.text, CANONICAL.pair if cols.pair else None, CANONICAL.label)
    rows = {}
    for name in SPLITS:
        raw = read_file(folder / f"{name}.jsonl", canon)
        texts = tuple(r[0] for r in raw)
        pairs = tuple(str(r[1]) for r in raw) if cols.pair else None
        ids = tuple(r[2] if isinstance(r[2], int) and 0 <= r[2] < len(labels) else -1
                    for r in raw)
        if -1 in ids:
            raise ArtifactError(f"{folder / name}.jsonl holds a label that is no id in 0.."
                                f"{len(labels) - 1}; rebuild it with `make engines`")
        src = splits.get(name, {})
        rows[name] = Split(name, texts, ids, str(src.get("from", f"{s['source']} {name}")),
                           rows_fingerprint(texts, ids, pairs), pairs)
        if src.get("fingerprint") != rows[name].fingerprint:
            raise ArtifactError(f"{folder / name}.jsonl no longer holds the rows task.json "
                                "records; rebuild it with `make engines`")
    return Task(s["source"], cols, labels, s["label_source"], s["validation"],
                tuple(s.get("warnings", ())), s.get("spec", {}), rows, bool(s.get("hub")))


def declared_task(artifacts: Path) -> TaskSpec | None:
    """The declaration the task of an artifacts folder was built from (its data location
    included), or None where none was built."""
    from common.config import from_recipe
    from common.manifest import Manifest

    e = Manifest(Path(artifacts), recover=True).entries.get("task", {})
    if "recipe" not in e or not isinstance(e.get("data"), str):
        return None
    spec = from_recipe(TaskSpec, e["recipe"], f"{artifacts}'s task")
    return TaskSpec(**{**recipe(spec)["fields"], "data": e["data"]})


def task_of(artifacts: Path) -> Task:
    """The task an artifacts folder was built for, verified like every artifact read."""
    from common.manifest import Manifest

    return read_task(Manifest(Path(artifacts)).verify("task"))


def scoring_task(artifacts: Path, data: str = "") -> Task:
    """The rows to score: the build's own task, or (`data`) another location read with the
    same declaration, whose label names must be the build's."""
    built = task_of(artifacts)
    if not data:
        return built
    spec = TaskSpec(data=data, **built.spec)
    other = resolve_task(spec)
    if other.labels != built.labels:
        raise DatasetError(f"--data {data}: its labels ({', '.join(other.labels[:8])}) are not "
                           f"those the artifacts were built for ({', '.join(built.labels[:8])}); "
                           "score data of the build's task, or leave --data out")
    return other


def load_task(data: str | Path) -> Task:
    """A build's task folder (artifacts/task/, what every build step reads), or a dataset read
    with the default declaration (columns text and label)."""
    if (Path(data) / TASK_FILE).is_file():
        return read_task(Path(data))
    return resolve_task(TaskSpec(data=str(data)))


def load_split(data: str | Path, split: str) -> Split:
    """One split of load_task(data)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {SPLITS}")
    return load_task(data).split(split)
