"""Reading rows: JSON Lines, CSV and Parquet, each bad row stopped with its file, line and fix."""

import json

import pytest

from common.data import Columns, DatasetError, read_file, split_file, validate_row
from common.task import load_split


def test_full_local_splits_sizes_and_order(shared_data):
    sizes = {s: len(load_split(shared_data, s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16000, "validation": 2000, "test": 2000}
    test = load_split(shared_data, "test")
    # the published first test row (see shared/data/emotion/README.md): order is never changed
    assert test.texts[0] == "im feeling rather rotten so im not very ambitious right now"
    assert test.labels[0] == 0 and test.pairs is None
    raw = [json.loads(x) for x in (shared_data / "test.jsonl").read_text().splitlines()]
    assert list(test.texts) == [r["text"] for r in raw]
    assert list(test.labels) == [r["label"] for r in raw]  # emotion's ids are its own ids


@pytest.mark.parametrize("line, reason", [
    ('{"text": "ok", "label": true}', "expected an integer id or a label name"),
    ('{"text": "ok", "label": 1.0}', "expected an integer id or a label name"),
    ('{"text": "ok", "label": [1, 2]}', "multi-label"),
    ('{"text": "ok", "label": ""}', "label 'label' is empty"),
    ('{"text": "ok", "label": null}', "'label' has no value"),
    ('{"text": "   ", "label": 1}', "empty or whitespace"),
    ('{"text": "", "label": 1}', "empty or whitespace"),
    ('{"text": 5, "label": 1}', "expected a string"),
    ('{"label": 1}', "missing column 'text'"),
    ('[1, 2]', "expected an object"),
    ('{"text": "ok", "label": 1', "not valid JSON"),
])
def test_bad_jsonl_row_names_file_line_and_reason(tmp_path, line, reason):
    good = '{"text": "fine sentence", "label": 1}'
    f = tmp_path / "test.jsonl"
    f.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(DatasetError) as e:
        read_file(f, Columns())
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: ") and reason in msg, msg


def test_missing_column_names_the_flag_that_fixes_it(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"sentence": "a b", "y": 1}\n')
    with pytest.raises(DatasetError, match=r"missing column 'text' \(the row has 'sentence', 'y'\); "
                                           "name the right one with --text-column"):
        read_file(f, Columns())
    rows = read_file(f, Columns("sentence", None, "y"))
    assert rows == [("a b", None, 1, f"{f}:1")]


def test_csv_rows_quoted_fields_int_labels_and_line_numbers(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('premise,hypothesis,gold\n"a, quoted\nmulti-line text",second,2\nplain,"pair",'
                 'entailment\n', encoding="utf-8")
    rows = read_file(f, Columns("premise", "hypothesis", "gold"))
    # an integer-looking label in CSV (text only) is an id; a word is a name
    assert rows[0][:3] == ("a, quoted\nmulti-line text", "second", 2)
    assert rows[1][:3] == ("plain", "pair", "entailment")
    assert rows[1][3] == f"{f}:4"  # the row after a two-line quoted field starts on line 4
    f.write_text("premise,hypothesis,gold\nx,,1\n")
    with pytest.raises(DatasetError, match=rf"{f}:2: the pair's second text 'hypothesis' is empty"):
        read_file(f, Columns("premise", "hypothesis", "gold"))
    f.write_text("premise,gold\nx,1,extra\n")
    with pytest.raises(DatasetError, match=rf"{f}:2: 3 fields, the header names 2"):
        read_file(f, Columns("premise", None, "gold"))
    f.write_text("premise,gold\nx\n")
    with pytest.raises(DatasetError, match=rf"{f}:2: 'gold' has no value"):
        read_file(f, Columns("premise", None, "gold"))


def test_parquet_rows_and_multilabel_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "test.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), f)
    assert [r[:3] for r in read_file(f, Columns())] == [("a", None, "x"), ("b", None, "y")]
    pq.write_table(pa.table({"text": ["a", "b"], "label": [[0], [0, 1]]}), f)
    with pytest.raises(DatasetError, match=rf"{f} row 1: .*multi-label"):
        read_file(f, Columns())
    f.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=rf"{f}: not a readable Parquet file"):
        read_file(f, Columns())


def test_one_file_per_split(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\n")
    assert split_file(tmp_path, "train", "train") == tmp_path / "train.csv"
    assert split_file(tmp_path, "test", "test") is None
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 0}\n')
    with pytest.raises(DatasetError, match="train.jsonl and train.csv for the train split: keep one"):
        split_file(tmp_path, "train", "train")


def test_blank_trailing_lines_are_not_rows_and_empty_file_is_refused(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text('{"text": "a b", "label": 2}\n\n')
    assert [r[:3] for r in read_file(f, Columns())] == [("a b", None, 2)]
    f.write_text("\n")
    with pytest.raises(DatasetError, match=f"{f}: no rows"):
        read_file(f, Columns())


def test_hub_name_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="Point --data"):
        load_split("no-such-user/no-such-dataset", "test")


def test_validate_row_accepts_good_rows():
    assert validate_row({"text": " hi ", "label": 5}, "x") == (" hi ", None, 5, "x")
    assert validate_row({"a": "x", "b": "y", "c": " joy "}, "x", Columns("a", "b", "c")) == \
        ("x", "y", "joy", "x")
