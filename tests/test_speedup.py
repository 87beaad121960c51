"""Interleaved speed-up benchmark: ratio arithmetic, a real run over tiny ORT graphs, the CLI."""

import json

import numpy as np
import pytest

from evaluate.speedup import SpeedupConfig, ratio_ci, run_speedup, write_speedup


def test_ratio_is_median_of_round_ratios_with_interval():
    ref = [np.full(5, 2.0), np.full(5, 4.0), np.full(5, 2.0)]
    half = [np.full(5, 1.0), np.full(5, 2.0), np.full(5, 1.0)]
    assert ratio_ci(ref, half, seed=0) == (2.0, 2.0, 2.0)
    # drift that slows a whole round down hits both sides alike and cancels: the variant is 2x
    # faster in every round although the machine's speed changes 3x between rounds
    drift = np.random.default_rng(1).uniform(1.0, 3.0, size=20)
    ref = [np.full(7, 4.0) * d for d in drift]
    var = [np.full(7, 2.0) * d for d in drift]
    assert ratio_ci(ref, var, seed=0) == (2.0, 2.0, 2.0)
    # one disturbed round (the variant hit by a neighbour, 10x slower) moves neither the median
    # nor its interval (a mean of the round ratios would give 1.91)
    var[3] = var[3] * 10
    assert ratio_ci(ref, var, seed=0) == (2.0, 2.0, 2.0)


def test_config_refuses_bad_comparisons():
    with pytest.raises(ValueError, match="at least two"):
        SpeedupConfig(variants=("fp32",))
    with pytest.raises(ValueError, match="reference"):
        SpeedupConfig(variants=("fp32", "ptq"), reference="qat")
    with pytest.raises(ValueError, match="repeat"):
        SpeedupConfig(variants=("fp32", "fp32"))


def test_interleaved_run_on_real_sessions(tiny_artifacts, data_dir, tmp_path):
    cfg = SpeedupConfig(backend="ort", variants=("fp32", "dynamic", "ptq"), data=str(data_dir),
                        sentences=12, round_size=4, batches=2, batch_size=4, threads=1,
                        artifacts=str(tiny_artifacts), out=str(tmp_path))
    r = run_speedup(cfg)
    assert r["rounds"] == 3 and r["reference"] == "fp32"
    rows = {x["variant"]: x for x in r["rows"]}
    assert set(rows) == {"fp32", "dynamic", "ptq"}
    assert rows["fp32"]["speedup_b1"] == 1.0 and rows["fp32"]["speedup_b1_ci95"] == [1.0, 1.0]
    for x in rows.values():
        assert 0 < x["p50_ms"] <= x["p95_ms"] and x["batched_ms_median"] > 0
        lo, hi = x["speedup_b1_ci95"]
        assert lo <= x["speedup_b1"] <= hi
    paths = write_speedup(r, tmp_path)
    assert "| ptq |" in paths["md"].read_text() and paths["png"].stat().st_size > 0
    from evaluate.compare import write_comparison

    # the speed-up report is linked by the comparison, never read as a variant report
    md = write_comparison(tmp_path, [], artifacts=tiny_artifacts)["md"].read_text()
    assert "[speedup-ort.md](speedup-ort.md)" in md
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"] == []


def test_each_turn_starts_after_the_settle_pause(tiny_artifacts, data_dir, tmp_path, monkeypatch):
    """The pause that lets the previous variant's spinning threads stop comes before every turn
    (batch 1 and batched), outside the timed calls."""
    import evaluate.speedup as sp

    pauses: list[float] = []
    monkeypatch.setattr(sp.time, "sleep", pauses.append)
    cfg = SpeedupConfig(backend="ort", variants=("fp32", "ptq"), data=str(data_dir), sentences=8,
                        round_size=4, batches=3, batch_size=4, threads=1, settle_ms=250,
                        artifacts=str(tiny_artifacts), out=str(tmp_path))
    r = run_speedup(cfg)
    assert pauses == [0.25] * (2 * 2 + 3 * 2)
    assert "pause of 250 ms" in sp.markdown(r)
    with pytest.raises(ValueError, match="settle_ms"):
        SpeedupConfig(settle_ms=-1)


def test_cli_needs_a_backend_and_two_variants(tiny_artifacts, data_dir, tmp_path, capsys):
    from evaluate.__main__ import main

    with pytest.raises(SystemExit):
        main(["--speedup", "fp32,ptq"])
    rc = main(["--backend", "ort", "--speedup", "fp32", "--artifacts", str(tiny_artifacts),
               "--data", str(data_dir), "--out", str(tmp_path)])
    assert rc == 2 and "at least two variants" in capsys.readouterr().err
    rc = main(["--backend", "ort", "--speedup", "fp32,no-such", "--artifacts", str(tiny_artifacts),
               "--data", str(data_dir), "--out", str(tmp_path)])
    assert rc == 2 and "no-such" in capsys.readouterr().err
