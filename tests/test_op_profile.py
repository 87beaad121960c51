"""Per-op profile of ORT graphs: real profiled sessions over tiny graphs, the trace arithmetic,
the CLI."""

import json

import pytest

from evaluate.op_profile import OpProfileConfig, op_times, profile_ops, write_op_profile


def _trace(tmp_path, runs):
    """A chrome trace as ONNX Runtime writes it: a model_run event per run, node kernel events."""
    ev, ts = [], 0
    for ops in runs:
        ev.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": sum(ops.values()) + 5})
        for op, dur in ops.items():
            ev.append({"cat": "Node", "name": f"n_{op}_kernel_time", "ts": ts + 1, "dur": dur,
                       "args": {"op_name": op}})
        ts += 1000
    p = tmp_path / "trace.json"
    p.write_text(json.dumps(ev))
    return p


def test_the_warm_pass_is_left_out_of_the_sums(tmp_path):
    # the first run (a shape's first call) is 100x slower; only the two after it count
    p = _trace(tmp_path, [{"MatMul": 100_000, "Add": 100_000}, {"MatMul": 100_000, "Add": 1},
                          {"MatMul": 1000, "Add": 200}, {"MatMul": 3000, "Add": 200}])
    ms, per_run, run_ms = op_times(p, skip_runs=2)
    assert ms == {"MatMul": 2.0, "Add": 0.2} and per_run == {"MatMul": 1, "Add": 1}
    assert run_ms == pytest.approx(2.205)
    # a trace cut short (ONNX Runtime's event cap) is refused, not averaged
    with pytest.raises(RuntimeError, match="4 runs recorded, 6 expected"):
        op_times(p, skip_runs=3)


def test_config_refuses_repeats():
    with pytest.raises(ValueError, match="repeat"):
        OpProfileConfig(variants=("fp32", "fp32"))


def test_profile_of_real_sessions(tiny_artifacts, data_dir, tmp_path):
    # 6 sentences in rounds of 4: a short last round still counts every sentence once
    r = profile_ops(OpProfileConfig(variants=("fp32-fused", "ptq-fused"), data=str(data_dir),
                                    sentences=6, round_size=4, settle_ms=0, threads=1,
                                    artifacts=str(tiny_artifacts), out=str(tmp_path)))
    rows = {x["variant"]: x for x in r["rows"]}
    f, q = rows["fp32-fused"]["ops"], rows["ptq-fused"]["ops"]
    # what the graphs hold, as the session runs them: fused FP32 attention and LayerNorm (the
    # SkipLayerNormalization was unfused), INT8 attention and matrix products
    assert {"Attention", "LayerNormalization", "MatMul"} <= {o["op"] for o in f}
    assert {"QAttention", "MatMulIntegerToFloat", "QuantizeLinear"} <= {o["op"] for o in q}
    assert "SkipLayerNormalization" not in {o["op"] for o in f + q}
    by_op = {o["op"]: o for o in f}
    assert by_op["Attention"]["per_run"] == 2 and by_op["LayerNormalization"]["per_run"] == 4
    for row in rows.values():
        assert 0 < row["ops_ms"] <= row["run_ms"]
        assert sum(o["share"] for o in row["ops"]) == pytest.approx(1.0)
    paths = write_op_profile(r, tmp_path)
    md = paths["md"].read_text()
    assert "## ptq-fused" in md and "| QAttention |" in md and paths["png"].stat().st_size > 0
    from evaluate.compare import published_files, write_comparison

    # linked by the comparison and published with it, never read as a variant report
    out = write_comparison(tmp_path, [], artifacts=tiny_artifacts)
    assert "[ops-ort.md](ops-ort.md)" in out["md"].read_text()
    c = json.loads(out["json"].read_text())
    assert c["rows"] == [] and c["profiles"][0]["variants"] == ["fp32-fused", "ptq-fused"]
    assert {p.name for p in published_files(c, tmp_path)} >= {"ops-ort.md", "ops-ort.png"}
    # a profile of another build's graph is left out as stale
    r["made_by"]["ptq-fused"] = {**r["made_by"]["ptq-fused"], "sha256": "0" * 64}
    write_op_profile(r, tmp_path)
    c = json.loads(write_comparison(tmp_path, [], artifacts=tiny_artifacts)["json"].read_text())
    assert c["profiles"] == [] and [x["report"] for x in c["stale"]] == ["ops-ort.json"]


def test_cli_profiles_ort_graphs_only(tiny_artifacts, data_dir, tmp_path, capsys):
    from evaluate.__main__ import main

    with pytest.raises(SystemExit):
        main(["--backend", "torch", "--profile-ops", "fp32"])
    assert "--backend ort" in capsys.readouterr().err
    rc = main(["--backend", "ort", "--profile-ops", "fp32,no-such", "--artifacts",
               str(tiny_artifacts), "--data", str(data_dir), "--out", str(tmp_path)])
    assert rc == 2 and "no-such" in capsys.readouterr().err
    rc = main(["--backend", "ort", "--profile-ops", "fp32", "--profile-ops-sentences", "3", "--threads",
               "1", "--artifacts", str(tiny_artifacts), "--data", str(data_dir), "--out",
               str(tmp_path)])
    assert rc == 0 and (tmp_path / "ops-ort.json").is_file()
    assert "ort/fp32:" in capsys.readouterr().out
