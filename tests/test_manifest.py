import json

import pytest

from common.manifest import ArtifactError, Manifest, atomic_output, sha256_of


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "x.onnx"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_replaces_folder(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_record_current_corrupt_stale(tmp_path):
    m = Manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    m.record("a", "a.bin", {"r": 1}, {"data": "h"}, {}, {})
    m.record("b", "b.bin", {"r": 2}, {"artifact:a": sha256_of(tmp_path / "a.bin")}, {}, {})
    assert m.is_current("a", {"r": 1}, {"data": "h"})
    assert not m.is_current("a", {"r": 9}, {"data": "h"})  # recipe changed
    assert not m.is_current("a", {"r": 1}, {"data": "other"})  # input changed
    assert Manifest(tmp_path).verify("b") == tmp_path / "b.bin"
    # a rebuilt input makes b stale, and the error names the fix
    (tmp_path / "a.bin").write_bytes(b"a2")
    m.record("a", "a.bin", {"r": 1}, {"data": "h"}, {}, {})
    with pytest.raises(ArtifactError, match="stale.*make engines"):
        Manifest(tmp_path).verify("b")
    # a modified file is refused
    (tmp_path / "a.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match its manifest hash"):
        Manifest(tmp_path).verify("a")
    assert not m.is_current("a", {"r": 1}, {"data": "h"})
    with pytest.raises(ArtifactError, match="not built"):
        Manifest(tmp_path).verify("zzz")


def test_corrupt_manifest_file_says_how_to_fix(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="make engines"):
        Manifest(tmp_path)


def test_pipeline_second_run_rebuilds_nothing(tiny_artifacts, tiny_model_dir, data_dir, capsys):
    from engines.pipeline import build_all
    from tests.conftest import tiny_build_config

    before = json.loads((tiny_artifacts / "manifest.json").read_text())
    b = build_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts))
    assert b.built == []
    assert "nothing to rebuild" in capsys.readouterr().out
    assert json.loads((tiny_artifacts / "manifest.json").read_text()) == before
