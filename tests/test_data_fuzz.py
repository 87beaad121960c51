"""Corrupted dataset files, at seeded random bytes: each either loads or stops with the dataset
error naming the file and line, never another exception; and every `python -m` entry point turns
such a user error into one line on stderr and exit code 2, never a traceback."""

import re
import subprocess
import sys

import numpy as np
import pytest

from common.data import Columns, DatasetError, read_file
from common.task import load_split
from tests.conftest import REPO

CASES = 400


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(0, 8)
    pos = int(rng.integers(0, len(raw)))
    if kind == 0:  # truncated mid-row
        return raw[:pos]
    if kind == 1:  # stray random bytes inserted
        return raw[:pos] + rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8).tobytes() + raw[pos:]
    if kind == 2:  # bytes overwritten
        b = bytearray(raw)
        for p in rng.integers(0, len(b), int(rng.integers(1, 6))):
            b[int(p)] = int(rng.integers(0, 256))
        return bytes(b)
    if kind == 3:  # a byte deleted (a quote, a brace, a digit ...)
        return raw[:pos] + raw[pos + 1:]
    if kind == 4:  # another encoding
        enc = ["utf-16", "latin-1", "utf-8-sig", "utf-32"][int(rng.integers(0, 4))]
        return raw.decode("utf-8").replace("i", "\u00ef").encode(enc, errors="replace")
    if kind == 5:  # control characters and separators that str.splitlines() would split on
        ch = ["\x0b", "\x0c", "\x1c", "\u2028", "\r", "\x00"][int(rng.integers(0, 6))].encode()
        return raw[:pos] + ch + raw[pos:]
    if kind == 6:  # a line duplicated and cut
        lines = raw.split(b"\n")
        i = int(rng.integers(0, len(lines)))
        return b"\n".join(lines[:i] + [lines[i][: len(lines[i]) // 2]] + lines[i:])
    # a value swapped for another JSON type
    return re.sub(rb'"label": \d', [b'"label": 6', b'"label": -1', b'"label": "1"',
                                    b'"label": 1.5', b'"label": true', b'"label": null'][
        int(rng.integers(0, 6))], raw, count=1)


def test_fuzzed_files_load_or_fail_with_file_and_line(shared_data, tmp_path):
    raw = b"\n".join((shared_data / "validation.jsonl").read_bytes().split(b"\n")[:30]) + b"\n"
    rng = np.random.default_rng(12345)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES):
        d = tmp_path / f"c{case}"
        d.mkdir()
        f = d / "validation.jsonl"
        f.write_bytes(mutate(raw, rng))
        try:
            rows = read_file(f, Columns())
        except DatasetError as exc:
            msg = str(exc)
            assert str(f) in msg, (case, msg)
            assert re.search(rf"{re.escape(str(f))}(:\d+: | \(|: no rows|: cannot)", msg), (case, msg)
            outcomes["refused"] += 1
            continue
        assert len(rows) >= 1 and all(isinstance(r[0], str) and r[0].strip() for r in rows)
        assert all(isinstance(r[2], int | str) and not isinstance(r[2], bool) for r in rows)
        outcomes["loaded"] += 1
    # both branches really happen (a fuzzer that only ever breaks or never breaks tests nothing)
    assert outcomes["loaded"] > 20 and outcomes["refused"] > 100, outcomes


def test_line_numbers_count_file_lines_not_unicode_separators(tmp_path):
    rows = ['{"text": "one\u2028two", "label": 0}', '{"text": "ok", "label": 1}',
            '{"text": "bad", "label": 9}']
    (tmp_path / "train.jsonl").write_text("\n".join(rows[:2]) + "\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test\.jsonl:3: label 9 never appears in the training"):
        load_split(tmp_path, "test")


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("broken")
    for split in ("train", "validation", "test"):
        lines = (shared_data / f"{split}.jsonl").read_text().splitlines()[:20]
        d.joinpath(f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    d.joinpath("validation.jsonl").write_bytes(b'{"text": "fine", "label": 1}\n\xff\xfe broken\n')
    return d


@pytest.mark.parametrize("argv, says", [
    (["engines", "--stages", "baseline", "--artifacts", "{tmp}/a", "--data", "{data}"],
     r"validation\.jsonl:2: not valid UTF-8"),
    (["evaluate", "--backend", "ort", "--artifacts", "{tmp}/none", "--data", "{data}"],
     "not built.*make engines"),
    (["deploy", "triton-repo", "--artifacts", "{tmp}/none", "--out", "{tmp}/repo"],
     "not built.*make engines"),
    (["study", "--task", "lm", "--model", "{tmp}/no-model", "--data", "{tmp}/no-ptb"],
     "cannot load .*no-model.*--model"),
    (["engines", "--trt-profile-min-seq", "0", "--dry-run"], "min_seq"),
    (["evaluate", "--backend", "trt", "--variant", "int8", "--artifacts", "{tmp}/none"],
     "TensorRT"),
])
def test_entry_points_print_one_line_for_user_errors(argv, says, broken_data, tmp_path):
    from common.trt import tensorrt_status

    if "trt" in argv and tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here")
    argv = [a.format(tmp=tmp_path, data=broken_data) for a in argv]
    r = run_module(*argv)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and re.search(says, errors[0]), r.stderr[-2000:]
