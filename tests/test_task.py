"""The task declared once: formats, columns, label names and where they come from, the carved
validation split, the checks on the label set as a whole, the task artifact, and bad task data
refused in one line (file, row, fix) before anything is built."""

import json
import re
import subprocess
import sys

import pytest

from common.data import DatasetError
from common.task import TaskSpec, carve_validation, read_task, resolve_task, write_task
from tests.conftest import REPO

EMOTION = ("sadness", "joy", "love", "anger", "fear", "surprise")


def write_jsonl(folder, split, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_csv(folder, split, header, rows):
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def tiny(folder, train_labels=(0, 1, 2, 0, 1, 2), test_labels=(0, 1, 2), val=True, fmt="jsonl"):
    rows = {"train": train_labels, "test": test_labels, **({"validation": test_labels} if val else {})}
    for split, labels in rows.items():
        if fmt == "jsonl":
            write_jsonl(folder, split, [{"text": f"{split} row {i}", "label": y}
                                        for i, y in enumerate(labels)])
        else:
            write_csv(folder, split, ["text", "label"], [[f"{split} row {i}", y]
                                                         for i, y in enumerate(labels)])
    return folder


def test_emotion_keeps_its_ids_and_takes_names_from_labels(shared_data):
    plain = resolve_task(TaskSpec(data=str(shared_data)))
    assert plain.labels == tuple("012345") and plain.label_source == "the sorted distinct training labels"
    named = resolve_task(TaskSpec(data=str(shared_data), labels=",".join(EMOTION)))
    assert named.labels == EMOTION and named.label_source == "--labels"
    # the ids (and so the rows' fingerprints) are the same either way: same model, same scores
    for s in ("train", "validation", "test"):
        assert named.split(s).labels == plain.split(s).labels
        assert named.split(s).fingerprint == plain.split(s).fingerprint
    assert named.summary()["splits"]["test"]["label_counts"] == {
        "sadness": 581, "joy": 695, "love": 159, "anger": 275, "fear": 224, "surprise": 66}


def test_string_labels_renamed_columns_csv(tmp_path):
    d = tmp_path / "d"
    for split, n in (("train", 9), ("validation", 3), ("test", 3)):
        write_csv(d, split, ["sentence", "polarity"],
                  [[f"{split} {i}", ["neg", "pos", "neutral"][i % 3]] for i in range(n)])
    with pytest.raises(DatasetError, match="missing column 'text'.*--text-column"):
        resolve_task(TaskSpec(data=str(d)))
    t = resolve_task(TaskSpec(data=str(d), text_column="sentence", label_column="polarity"))
    assert t.labels == ("neg", "neutral", "pos") and t.label_source == "the sorted distinct training labels"
    assert t.split("train").labels[:3] == (0, 2, 1) and not t.pair
    assert t.summary()["columns"] == {"text": "sentence", "text_pair": None, "label": "polarity"}


def test_labels_json_wins_and_must_agree_with_flag(tmp_path):
    d = tiny(tmp_path / "d", train_labels=("b", "a", "b", "a"), test_labels=("a", "b"))
    (d / "labels.json").write_text('["b", "a", "c"]')
    t = resolve_task(TaskSpec(data=str(d)))
    assert t.labels == ("b", "a", "c") and t.label_source == "d/labels.json"
    assert t.split("test").labels == (1, 0)
    # a listed label with no training row: a warning, scored as usual
    assert t.warnings and "'c'" in t.warnings[0] and "no training row" in t.warnings[0]
    with pytest.raises(DatasetError, match="labels.json names the labels b, a, c; --labels says"):
        resolve_task(TaskSpec(data=str(d), labels="a,b,c"))
    for bad in ('{"a": 1}', '["a", "a"]', '["a", ""]', '[1, 2]', "not json"):
        (d / "labels.json").write_text(bad)
        with pytest.raises(DatasetError, match="labels.json: must be a JSON list|labels.json: not "
                                               "readable JSON"):
            resolve_task(TaskSpec(data=str(d)))


def test_int_labels_index_the_names(tmp_path):
    d = tiny(tmp_path / "d", train_labels=(0, 1, 0, 1), test_labels=(0, 1, 1))
    t = resolve_task(TaskSpec(data=str(d), labels="no,yes"))
    assert t.labels == ("no", "yes") and t.split("test").labels == (0, 1, 1)
    write_jsonl(d, "test", [{"text": "x", "label": 0}, {"text": "y", "label": 2}])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(d / 'test.jsonl'))}:2: label id 2 is "
                                           "out of range 0..1 for the 2 names of --labels"):
        resolve_task(TaskSpec(data=str(d), labels="no,yes"))


@pytest.mark.parametrize("train, test, says", [
    ((0, 1, 0), (0, 2), r"validation\.jsonl:2: label 2 never appears in the training split"),
    (("a", "b"), ("a", "c"), r"validation\.jsonl:2: label 'c' never appears in the training split"),
    ((0, 0, 0), (0,), r"training split holds 1 distinct label"),
    ((0, "a"), (0,), r"train\.jsonl:2: label 'a' is a name, but .*train\.jsonl:1 has an integer id"),
])
def test_label_set_checks(tmp_path, train, test, says):
    d = tiny(tmp_path / "d", train_labels=train, test_labels=test)
    with pytest.raises(DatasetError, match=says):
        resolve_task(TaskSpec(data=str(d)))


def test_validation_carved_from_train_stratified_and_seeded(tmp_path):
    labels = [0] * 40 + [1] * 20 + [2] * 1
    d = tiny(tmp_path / "d", train_labels=labels, test_labels=(0, 1, 2), val=False, fmt="csv")
    t = resolve_task(TaskSpec(data=str(d), validation_fraction=0.25, validation_seed=3))
    v = t.summary()["validation"]
    assert v["carved_from"] == "d/train.csv" and v["fraction"] == 0.25 and v["seed"] == 3
    val, train = t.split("validation"), t.split("train")
    assert sorted(val.labels).count(0) == 10 and sorted(val.labels).count(1) == 5
    assert 2 not in val.labels and 2 in train.labels  # a label's only row stays in train
    assert len(val) + len(train) == len(labels) and not set(val.texts) & set(train.texts)
    # order kept on both sides, the same draw again, another with another seed
    rows = [f"train row {i}" for i in range(len(labels))]
    assert list(train.texts) == [x for x in rows if x in set(train.texts)]
    assert carve_validation(labels, 0.25, 3) == carve_validation(labels, 0.25, 3)
    assert carve_validation(labels, 0.25, 3) != carve_validation(labels, 0.25, 4)


def test_pairs_and_split_names(tmp_path):
    d = tmp_path / "d"
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        write_jsonl(d, name, [{"q": f"{split} q{i}", "a": f"{split} a{i}", "y": ["no", "yes"][i % 2]}
                              for i in range(4)])
    # no validation.jsonl (ours is dev.jsonl): carved from train, pairs kept with their texts
    carved = resolve_task(TaskSpec(data=str(d), text_column="q", text_pair_column="a",
                                   label_column="y", validation_fraction=0.5))
    assert carved.validation["carved_from"] == "d/train.jsonl"
    val = carved.split("validation")
    assert [p.replace(" a", " q") for p in val.pairs] == list(val.texts)
    t = resolve_task(TaskSpec(data=str(d), text_column="q", text_pair_column="a",
                              label_column="y", split_names="validation=dev"))
    assert t.pair and t.validation == {"from": "d/dev.jsonl"}
    assert t.split("validation").pairs == tuple(f"validation a{i}" for i in range(4))
    write_jsonl(d, "test", [{"q": "x", "a": " ", "y": "no"}])
    with pytest.raises(DatasetError, match=r"test\.jsonl:1: the pair's second text 'a' is empty"):
        resolve_task(TaskSpec(data=str(d), text_column="q", text_pair_column="a",
                              label_column="y", split_names="validation=dev"))


def test_seventy_seven_labels(tmp_path):
    names = [f"intent_{i:02d}" for i in range(77)]
    d = tmp_path / "d"
    write_jsonl(d, "train", [{"text": f"t {i}", "label": names[i % 77]} for i in range(154)])
    write_jsonl(d, "test", [{"text": f"s {i}", "label": names[i % 77]} for i in range(77)])
    t = resolve_task(TaskSpec(data=str(d)))
    assert t.num_labels == 77 and t.labels == tuple(sorted(names))
    # 10% of 154 rows: 15 labels give one row each (a label's last row stays in train)
    assert len(t.split("validation")) == 15 and len(set(t.split("validation").labels)) == 15
    assert set(t.split("train").labels) == set(range(77))
    assert "77 labels" in t.describe()


def test_hub_dataset_names_from_classlabel(monkeypatch):
    """The Hub branch with real `datasets` objects; only the download is replaced."""
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    data = {"train": {"text": ["a", "b", "c"], "label": [0, 1, 0]},
            "test": {"text": ["d", "e"], "label": [1, 0]}}
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, config=None: list(data))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None:
                        datasets.Dataset.from_dict(data[split], features=feats))
    t = resolve_task(TaskSpec(data="someone/polarity", validation_fraction=0.5))
    assert t.labels == ("neg", "pos") and t.label_source == "the Hub dataset's ClassLabel"
    assert t.hub and t.source == "someone/polarity" and "carved_from" in t.validation
    multi = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None:
                        datasets.Dataset.from_dict({"text": ["a"], "label": [[0, 1]]}, features=multi))
    with pytest.raises(DatasetError, match="multi-label"):
        resolve_task(TaskSpec(data="someone/multi"))


def test_task_artifact_round_trip_and_tamper(tmp_path):
    d = tiny(tmp_path / "d", train_labels=("x", "y", "x"), test_labels=("y", "x"))
    t = resolve_task(TaskSpec(data=str(d), text_column="text"))
    write_task(t, tmp_path / "task")
    back = read_task(tmp_path / "task")
    assert back == t and back.fingerprint() == t.fingerprint()
    assert back.split("test").labels == t.split("test").labels
    f = tmp_path / "task" / "test.jsonl"
    f.write_text(f.read_text().replace('"label": 1', '"label": 0'))
    from common.manifest import ArtifactError

    with pytest.raises(ArtifactError, match="no longer holds the rows task.json records"):
        read_task(tmp_path / "task")


def test_a_built_task_folder_given_as_data_keeps_its_label_names(tmp_path):
    """artifacts/task as --data (what `make baseline-seeds` reads without DATA): its rows hold
    ids, task.json the names; before, the names became "0", "1", ... unless --labels was given."""
    d = tiny(tmp_path / "d", train_labels=("neg", "pos", "neg", "pos"), test_labels=("pos", "neg"))
    built = resolve_task(TaskSpec(data=str(d)))
    write_task(built, tmp_path / "task")
    again = resolve_task(TaskSpec(data=str(tmp_path / "task")))
    assert again.labels == ("neg", "pos") and again.label_source == "task/task.json"
    for split in ("train", "validation", "test"):
        assert again.split(split).labels == built.split(split).labels
        assert again.split(split).texts == built.split(split).texts
    with pytest.raises(DatasetError, match="task.json names the labels neg, pos; --labels says"):
        resolve_task(TaskSpec(data=str(tmp_path / "task"), labels="a,b"))
    # a pair task's folder read as single texts would drop the second texts: said, with the fix
    p = tmp_path / "p"
    for split in ("train", "validation", "test"):
        write_jsonl(p, split, [{"q": f"{split} q{i}", "a": f"a{i}", "y": i % 2} for i in range(4)])
    pairs = resolve_task(TaskSpec(data=str(p), text_column="q", text_pair_column="a",
                                  label_column="y"))
    write_task(pairs, tmp_path / "ptask")
    with pytest.raises(DatasetError, match="holds text pairs.*add --text-pair-column text_pair"):
        resolve_task(TaskSpec(data=str(tmp_path / "ptask")))
    back = resolve_task(TaskSpec(data=str(tmp_path / "ptask"), text_pair_column="text_pair"))
    assert back.split("test").pairs == pairs.split("test").pairs


def test_spec_checks():
    from common.errors import ConfigError

    for bad in (dict(labels="a,,b"), dict(labels="a,a"), dict(text_column="x", label_column="x"),
                dict(split_names="dev"), dict(split_names="val=dev"), dict(validation_fraction=0.9)):
        with pytest.raises(ConfigError):
            TaskSpec(**bad)


@pytest.fixture(scope="module")
def bad_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-tasks")
    cases = {}

    def case(name, **splits):
        d = root / name
        for split, rows in splits.items():
            write_jsonl(d, split, rows)
        cases[name] = d

    ok = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    case("unseen", train=ok, test=[{"text": "c", "label": "z"}])
    case("missing_column", train=ok, test=[{"txt": "c", "label": "x"}])
    case("one_label", train=[{"text": "a", "label": "x"}], test=[{"text": "c", "label": "x"}])
    case("mixed", train=ok, test=[{"text": "c", "label": 1}])
    case("multilabel", train=ok, test=[{"text": "c", "label": ["x", "y"]}])
    case("pair_empty", train=[{"text": "a", "p": "b", "label": "x"}, {"text": "a", "p": "", "label": "y"}],
         test=ok)
    case("bad_labels_json", train=ok, test=ok)
    (cases["bad_labels_json"] / "labels.json").write_text('["x", "x"]')
    case("no_test", train=ok)
    return cases


@pytest.mark.parametrize("name, extra, says", [
    ("unseen", [], r"test\.jsonl:1: label 'z' never appears in the training split"),
    ("missing_column", [], r"test\.jsonl:1: missing column 'text'.*--text-column"),
    ("one_label", [], r"training split holds 1 distinct label"),
    ("mixed", [], r"test\.jsonl:1: label 1 is an integer id, but .*train\.jsonl:1 has a name"),
    ("multilabel", [], r"test\.jsonl:1: label 'label' is a list .*multi-label"),
    ("pair_empty", ["--text-pair-column", "p"], r"train\.jsonl:2: the pair's second text 'p' is empty"),
    ("bad_labels_json", [], r"labels\.json: must be a JSON list of distinct"),
    ("no_test", [], r"has no test\.jsonl/test\.csv/test\.parquet: a task needs train and test"),
])
def test_bad_task_data_one_line_and_nothing_built(bad_tasks, tmp_path, name, extra, says):
    art = tmp_path / "art"
    r = subprocess.run([sys.executable, "-m", "engines", "--data", str(bad_tasks[name]),
                        "--artifacts", str(art), "--stages", "baseline", *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and re.search(says, errors[0]), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (art / "manifest.json").exists() and not (art / "task").exists()
