"""QLoRA trained beside the baseline (engines/overlap.py): the real pipeline uses it on a CPU
build, the manifest says so, a failing child is reported with its error, nothing is left behind."""

from __future__ import annotations

import json

import pytest

from common.manifest import ArtifactError


def test_pipeline_trains_qlora_beside_the_baseline(tiny_artifacts):
    import os

    man = json.loads((tiny_artifacts / "manifest.json").read_text())
    # the tiny build ran on this CPU with the default config: both trainings were built there
    assert man["qlora"]["trained_beside_baseline"] is ((os.cpu_count() or 1) > 1)
    assert (tiny_artifacts / "qlora" / "adapter_config.json").is_file()
    assert not list(tiny_artifacts.glob(".qlora-overlap-*"))  # staging folder and log moved/removed


def test_overlap_only_where_both_are_built(tiny_model_dir, data_dir, tiny_artifacts, tmp_path):
    from engines.pipeline import Builder, start_overlap, steps_for
    from tests.conftest import tiny_build_config

    # an up-to-date artifacts folder: nothing to train, so no child is started
    cfg = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts)
    b = Builder(cfg)
    assert start_overlap(b, steps_for(b)) is None
    # one of the two stages only: nothing to overlap with
    cfg = tiny_build_config(tiny_model_dir, data_dir, tmp_path / "a", stages=("qlora",))
    b = Builder(cfg)
    assert start_overlap(b, steps_for(b)) is None
    cfg = tiny_build_config(tiny_model_dir, data_dir, tmp_path / "b", overlap=False)
    b = Builder(cfg)
    assert start_overlap(b, steps_for(b)) is None


def test_failing_child_is_reported_with_its_error(tiny_model_dir, tmp_path):
    from engines import overlap
    from train.qlora import QloraConfig

    missing = tmp_path / "no-such-data"
    bg = overlap.start(QloraConfig(model=str(tiny_model_dir), data=str(missing), epochs=1,
                                   max_length=32), tmp_path / "art")
    with pytest.raises(ArtifactError) as e:
        bg.collect(tmp_path / "art" / "qlora")
    msg = str(e.value)
    # one line: the child's own error and where its traceback is
    assert "no-such-data" in msg and "\n" not in msg and str(bg.log) in msg
    log = bg.log.read_text()
    assert "Traceback" in log and "lost sys.stderr" not in log
    assert bg.proc.exitcode == 1
    bg.abandon()
    assert not (tmp_path / "art" / "qlora").exists()
    # no staging folder left; the child's log stays (the error names it)
    assert [p.suffix for p in (tmp_path / "art").glob(".qlora-overlap-*")] == [".log"]


def test_cli_no_overlap():
    from engines.__main__ import parse

    assert parse([])[0].overlap is True
    assert parse(["--no-overlap"])[0].overlap is False


def test_baseline_gets_every_thread_back_when_the_child_ends(tmp_path):
    """While the child runs the baseline trains on one thread; from the first step after the
    child has ended it has all of them again (the hook runs on the training thread)."""
    import multiprocessing as mp
    import time

    import torch

    from engines.overlap import Background
    from train import loop

    before = torch.get_num_threads()
    proc = mp.get_context("spawn").Process(target=time.sleep, args=(1.5,))
    proc.start()
    bg = Background(proc, None, tmp_path / "staging", tmp_path / "log")
    with bg.sharing_cores():
        loop.run_step_hooks()
        assert torch.get_num_threads() == 1 and loop.STEP_HOOKS  # child alive: one thread
        proc.join()
        loop.run_step_hooks()
        assert torch.get_num_threads() == before and not loop.STEP_HOOKS
    assert torch.get_num_threads() == before
