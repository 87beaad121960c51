import json

import pytest

from common.data import DatasetError, load_split, validate_row
from common.labels import ID2LABEL, LABEL2ID, LABELS


def test_labels_one_place():
    assert LABELS == ("sadness", "joy", "love", "anger", "fear", "surprise")
    assert all(LABEL2ID[ID2LABEL[i]] == i for i in range(6))


def test_full_local_splits_sizes_and_order(shared_data):
    sizes = {s: len(load_split(shared_data, s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16000, "validation": 2000, "test": 2000}
    test = load_split(shared_data, "test")
    # the published first test row (see shared/data/emotion/README.md): order is never changed
    assert test.texts[0] == "im feeling rather rotten so im not very ambitious right now"
    assert test.labels[0] == 0
    raw = [json.loads(x) for x in (shared_data / "test.jsonl").read_text().splitlines()]
    assert list(test.texts) == [r["text"] for r in raw]


@pytest.mark.parametrize("line, reason", [
    ('{"text": "ok", "label": 6}', "out of range"),
    ('{"text": "ok", "label": -1}', "out of range"),
    ('{"text": "ok", "label": true}', "expected an integer"),
    ('{"text": "ok", "label": "joy"}', "expected an integer"),
    ('{"text": "ok", "label": 1.0}', "expected an integer"),
    ('{"text": "   ", "label": 1}', "empty or whitespace"),
    ('{"text": "", "label": 1}', "empty or whitespace"),
    ('{"text": 5, "label": 1}', "expected a string"),
    ('{"label": 1}', "missing field"),
    ('[1, 2]', "expected an object"),
    ('{"text": "ok", "label": 1', "not valid JSON"),
])
def test_bad_row_names_file_line_and_reason(tmp_path, line, reason):
    good = '{"text": "fine sentence", "label": 1}'
    (tmp_path / "test.jsonl").write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(DatasetError) as e:
        load_split(tmp_path, "test")
    msg = str(e.value)
    assert f"{tmp_path / 'test.jsonl'}:3" in msg
    assert reason in msg


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DatasetError, match="validation.jsonl not found"):
        load_split(tmp_path, "validation")
    with pytest.raises(DatasetError, match="unknown split"):
        load_split(tmp_path, "dev")
    with pytest.raises(DatasetError, match="not a folder"):
        load_split(tmp_path / "nope", "test")


def test_blank_trailing_lines_are_not_rows(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"text": "a b", "label": 2}\n\n')
    s = load_split(tmp_path, "test")
    assert s.texts == ("a b",) and s.labels == (2,)


def test_hub_name_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="Point --data"):
        load_split("no-such-user/no-such-dataset", "test")


def test_validate_row_accepts_good_row():
    assert validate_row({"text": " hi ", "label": 5}, "x") == (" hi ", 5)
