"""Faults and tampering around the artifacts folder: every read verified, one build at a time,
what a killed build left cleaned, a corrupt manifest rebuilt without losing intact artifacts,
malformed reports ignored, unwritable outputs said before long work. Each error is one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from common.manifest import ArtifactError, Manifest, ManifestCorrupt
from common.workdir import build_lock, clean_leftovers
from tests.conftest import tiny_build_config

DEAD_PID = 4194304 + 17  # above Linux's largest pid_max: never a live process


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture
def art(tiny_artifacts, tmp_path) -> Path:
    """A private copy of the tiny artifacts, to damage."""
    return Path(shutil.copytree(tiny_artifacts, tmp_path / "artifacts"))


def quiet_build(cfg):
    from engines.pipeline import build_all

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        b = build_all(cfg)
    return b, out.getvalue()


# 1. every read of a built artifact is verified ------------------------------------------------

@pytest.mark.parametrize("edit", ["tokenizer", "max_length"])
def test_edited_baseline_is_refused_by_scoring_and_serving(art, data_dir, tmp_path, capsys, edit):
    from deploy.service import ClassifierService
    from evaluate.__main__ import main as evaluate_main

    if edit == "tokenizer":
        tok = art / "baseline" / "tokenizer.json"
        tok.write_text(tok.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    else:
        meta = json.loads((art / "baseline" / "recipe.json").read_text())
        (art / "baseline" / "recipe.json").write_text(json.dumps({**meta, "max_length": 8}))
    code = evaluate_main(["--variant", "ort/fp32", "--artifacts", str(art), "--data",
                          str(data_dir), "--limit", "4", "--out", str(tmp_path / "reports")])
    assert code == 2
    err = one_line_error(capsys)
    assert "baseline" in err and "make engines" in err
    with pytest.raises(ArtifactError, match="does not match its manifest hash"):
        ClassifierService(art, "ort", "fp32")
    assert not (tmp_path / "reports" / "ort-fp32.json").exists()
    from deploy.__main__ import main as deploy_main

    repo = tmp_path / "repo"
    assert deploy_main(["triton-repo", "--out", str(repo), "--variant", "ort/fp32", "--cpu",
                        "--artifacts", str(art)]) == 2
    assert "baseline" in one_line_error(capsys) and not repo.exists()
    # the local server refuses before it starts (the error would otherwise be in its log)
    from deploy.triton_repo import ServeConfig, write_local_repo

    with pytest.raises(ArtifactError, match="baseline.*does not match its manifest hash"):
        write_local_repo(tmp_path / "local", ServeConfig(backend="ort", variant="fp32"), art)


def test_a_build_step_reads_its_inputs_verified(art, tiny_model_dir, data_dir):
    """A step of this run reading an artifact built earlier (not in the run) refuses a tampered
    one instead of exporting from it."""
    meta = json.loads((art / "baseline" / "recipe.json").read_text())
    (art / "baseline" / "recipe.json").write_text(json.dumps({**meta, "max_length": 8}))
    cfg = tiny_build_config(tiny_model_dir, data_dir, art, stages=("onnx",), force=True)
    with pytest.raises(ArtifactError, match="baseline.*does not match its manifest hash"):
        quiet_build(cfg)


# 2. one build at a time (the only writer of the manifest) -------------------------------------

def test_a_second_build_into_the_same_folder_is_refused(tmp_path, tiny_model_dir, data_dir,
                                                       capsys):
    from engines.__main__ import main

    root = tmp_path / "artifacts"
    root.mkdir()
    with build_lock(root):
        code = main(["--artifacts", str(root), "--model", str(tiny_model_dir), "--data",
                     str(data_dir), "--stages", "baseline"])
    assert code == 2
    err = one_line_error(capsys)
    assert f"another build is running in {root} (pid {os.getpid()})" in err
    assert "[build]" not in capsys.readouterr().out


# 3. leftovers of killed builds ----------------------------------------------------------------

def test_leftovers_of_a_killed_build_are_cleaned(art, tiny_model_dir, data_dir):
    made = [art / f".baseline.tmp-{DEAD_PID}-123", art / "onnx" / f".fp32.onnx.tmp-{DEAD_PID}-9",
            art / f".manifest.json.{DEAD_PID}-abcd1234.tmp", art / ".manifest.json.k2j4h5g6.tmp",
            art / "onnx" / f".fp32.onnx.old-{DEAD_PID}", art / f".qlora-overlap-{DEAD_PID}.log"]
    made[0].mkdir()
    (made[0] / "model.safetensors").write_bytes(b"half")
    for p in made[1:]:
        p.write_bytes(b"half")
    b, log = quiet_build(tiny_build_config(tiny_model_dir, data_dir, art,
                                           stages=("baseline", "onnx")))
    assert [p for p in made if p.exists()] == []
    assert b.built == [] and "[clean] removed" in log


def test_a_live_process_keeps_its_temporary_files(tmp_path):
    mine = tmp_path / f".x.onnx.tmp-{os.getpid()}-1"
    theirs = tmp_path / f".x.onnx.tmp-{DEAD_PID}-1"
    unknown = tmp_path / ".manifest.json.k2j4h5g6.tmp"  # no pid: only a lock holder removes it
    for p in (mine, theirs, unknown):
        p.write_bytes(b"")
    clean_leftovers(tmp_path)
    assert (mine.exists(), theirs.exists(), unknown.exists()) == (True, False, True)
    clean_leftovers(tmp_path, locked=True)
    assert not mine.exists() and not unknown.exists()


def test_an_interrupted_folder_swap_is_put_back_not_retrained(art, tiny_model_dir, data_dir):
    os.replace(art / "baseline", art / f".baseline.old-{DEAD_PID}")
    b, log = quiet_build(tiny_build_config(tiny_model_dir, data_dir, art, stages=("baseline",)))
    assert f"restored {art / 'baseline'}" in log
    assert b.built == [] and "[build]" not in log
    Manifest(art).verify("baseline")


# 4. a corrupt manifest ------------------------------------------------------------------------

CORRUPT = {"invalid JSON": b"{not json", "array": b"[]", "null": b"null",
           "binary": bytes(range(256)), "entry not an object": b'{"baseline": 3}',
           "entry without sha256": b'{"baseline": {"path": "baseline", "key": "k"}}'}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=list(CORRUPT))
def test_a_corrupt_manifest_is_one_line_that_never_says_delete(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestCorrupt) as exc:
        Manifest(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and "make engines" in msg and "delete" not in msg.lower()


def test_a_corrupt_manifest_is_rebuilt_from_the_entry_copies(art, tiny_model_dir, data_dir,
                                                             capsys):
    from engines.pipeline import plan_all
    from evaluate.__main__ import main as evaluate_main

    intact = {k for k, e in Manifest(art).entries.items() if "skipped" not in e}
    (art / "manifest.json").write_bytes(b'{"baseline": {"path": "baseline"')  # cut mid-write
    assert evaluate_main(["--variant", "ort/fp32", "--artifacts", str(art), "--data",
                          str(data_dir), "--out", str(art.parent / "reports")]) == 2
    err = one_line_error(capsys)
    assert "make engines" in err and "delete" not in err.lower()

    cfg = tiny_build_config(tiny_model_dir, data_dir, art, stages=("baseline", "onnx", "dynamic"))
    plan = plan_all(cfg)  # plans with what a build would recover, writes nothing
    assert {v for v in plan.values() if not v.startswith("skip")} == {"up to date"}
    assert not (art / "manifest.json").read_bytes().endswith(b"}")
    b, log = quiet_build(cfg)
    assert "[repair]" in log and b.built == []
    assert {k for k, e in Manifest(art).entries.items() if "skipped" not in e} == intact
    assert len(list(art.glob("manifest.json.corrupt-*"))) == 1


def test_a_deleted_manifest_is_rebuilt_too(art, tiny_model_dir, data_dir):
    (art / "manifest.json").unlink()
    b, log = quiet_build(tiny_build_config(tiny_model_dir, data_dir, art, stages=("baseline",)))
    assert "it was missing" in log and b.built == []


def test_only_intact_artifacts_are_recovered(art, tiny_model_dir, data_dir):
    from engines.pipeline import plan_all

    (art / "onnx" / "dynamic.onnx").write_bytes(b"tampered")
    (art / "manifest.json").write_bytes(b"null")
    plan = plan_all(tiny_build_config(tiny_model_dir, data_dir, art,
                                      stages=("baseline", "onnx", "dynamic")))
    assert plan["onnx-dynamic"].startswith("build") and plan["onnx-fp32"] == "up to date"


# 5. reports that are not reports --------------------------------------------------------------

def test_malformed_reports_never_break_the_hf_steps(art, tiny_model_dir, data_dir, tmp_path):
    from engines.pipeline import plan_all

    reports = tmp_path / "reports"
    reports.mkdir()
    sha = Manifest(art).get("onnx-fp32")["sha256"]
    (reports / "ort-fp32.json").write_text(json.dumps({"made_by": {"sha256": sha}}))  # no scores
    (reports / "ort-dynamic.json").write_text(json.dumps({"made_by": ["x"]}))
    (reports / "ort-ptq.json").write_text("[]")
    (reports / "torch-fp32.json").write_text('{"made_by": {"sha256": ')
    cfg = tiny_build_config(tiny_model_dir, data_dir, art, stages=("hf",), reports=str(reports))
    assert {v for v in plan_all(cfg).values() if not v.startswith("skip")} == {"up to date"}
    b, _ = quiet_build(cfg)
    assert b.built == []


# 6. unwritable outputs, said before long work -------------------------------------------------

def read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    for cand in (Path("/sys"), Path("/proc")):  # root writes anywhere else
        try:
            (cand / ".probe").write_bytes(b"")
        except OSError:
            return cand
        (cand / ".probe").unlink()
    pytest.skip("no read-only folder here (running as root)")


@pytest.mark.parametrize("case", ["file", "read-only", "full disk"])
def test_an_unwritable_artifacts_folder_stops_the_build_before_training(
        case, tmp_path, tiny_model_dir, data_dir, capsys, monkeypatch):
    from engines.__main__ import main

    root = tmp_path / "artifacts"
    if case == "file":
        root.write_text("")
    elif case == "read-only":
        root = read_only_folder(tmp_path)
    else:
        import collections
        import shutil as sh

        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    code = main(["--artifacts", str(root), "--model", str(tiny_model_dir), "--data",
                 str(data_dir), "--stages", "baseline", "--no-overlap"])
    assert code == 2
    assert str(root) in one_line_error(capsys)
    assert "[build]" not in capsys.readouterr().out


def test_a_build_with_nothing_to_do_writes_nothing(tmp_path, tiny_artifacts, tiny_model_dir,
                                                   data_dir):
    """An up-to-date build takes no lock and writes no file (so it succeeds on a read-only
    folder: made read-only here where the tests do not run as root); one with a leftover to
    clean takes the usual path."""
    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    (art / ".lock").unlink(missing_ok=True)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(art)): (p.stat().st_mtime_ns, p.stat().st_size)
                for p in art.rglob("*")}

    cfg = tiny_build_config(tiny_model_dir, data_dir, art)
    before = snapshot()
    read_only = os.geteuid() != 0
    if read_only:
        for p in [art, *art.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
    try:
        b, out = quiet_build(cfg)
    finally:
        if read_only:
            for p in [art, *art.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)
    assert b.built == [] and "baseline" in b.up_to_date and "onnx-fp32" in b.up_to_date
    assert "nothing to rebuild" in out and "(nothing written)" in out
    assert snapshot() == before and not (art / ".lock").exists()
    # a leftover of a killed build: the usual path (lock, clean), which says what it removed
    (art / "onnx" / ".fp32.onnx.tmp-999999-1").write_bytes(b"")
    b, out = quiet_build(cfg)
    assert "[clean] removed" in out and "(nothing written)" not in out and b.built == []
    assert (art / ".lock").exists()


@pytest.mark.parametrize("cmd", [
    ["evaluate", "--variant", "ort/fp32"], ["evaluate", "--compare"],
    ["evaluate", "--backend", "ort", "--speedup", "default"], ["engines", "--dry-run"],
    ["engines"], ["deploy", "triton-repo", "--variant", "ort/fp32"],
    ["deploy", "bench", "--variant", "ort/fp32"]])
def test_a_file_given_for_the_artifacts_folder_is_named_as_such(cmd, tmp_path, capsys):
    import importlib

    art = tmp_path / "artifacts.tar"
    art.write_text("")
    main = importlib.import_module(f"{cmd[0]}.__main__").main
    args = [*cmd[1:], "--artifacts", str(art)]
    if cmd[0] == "deploy" or "--compare" in cmd:
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert f"--artifacts {art} is a file, not a folder" in one_line_error(capsys)


def test_an_unwritable_evaluate_out_is_said_before_scoring(art, data_dir, tmp_path, capsys,
                                                          monkeypatch):
    import evaluate.__main__ as ev

    monkeypatch.setattr(ev, "run_one", lambda cfg: pytest.fail("scored before checking --out"))
    out = tmp_path / "reports"
    out.write_text("")
    assert ev.main(["--variant", "ort/fp32", "--artifacts", str(art), "--data", str(data_dir),
                    "--out", str(out)]) == 2
    assert f"--out {out} is a file" in one_line_error(capsys)


@pytest.mark.parametrize("cmd", [["triton-repo", "--out"], ["k8s", "--out"], ["serve", "--repo"],
                                 ["bench", "--out"]])
def test_an_unwritable_deploy_output_is_said_first(cmd, art, tmp_path, capsys):
    from deploy.__main__ import main

    target = tmp_path / "blocked"
    target.write_text("")
    out = target / "sub" if cmd[0] != "triton-repo" else target
    assert main([cmd[0], cmd[1], str(out), "--variant", "ort/fp32", "--artifacts", str(art)]) == 2
    assert str(target) in one_line_error(capsys)
