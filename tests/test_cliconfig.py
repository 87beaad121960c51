"""`--config FILE` (TOML or YAML, keys = flag names, flags win) and `--print-config` on every
command: a recipe kept in a file means what the same flags mean; bad files get one line naming
the key and the file."""

from __future__ import annotations

import pytest


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_an_engines_recipe_in_a_toml_file(tmp_path):
    from engines.__main__ import parse

    f = tmp_path / "recipe.toml"
    f.write_text('epochs = 3\nstudent-layers = "0,2"\nno-overlap = true\n'
                 "ptq-calib-rows = [256, 512]\nqat-embeddings = false\n"
                 "no-ptq-block-fallback = true\n")
    cfg, _ = parse(["--config", str(f)])
    assert cfg.finetune.epochs == 3 and cfg.student.layers == "0,2" and cfg.overlap is False
    assert cfg.static.calib_rows == (256, 512) and cfg.qat.embeddings is False
    assert cfg.static.block_fallback is False
    # the command line wins over the file
    cfg, _ = parse(["--config", str(f), "--epochs", "5", "--ptq-calib-rows", "512"])
    assert cfg.finetune.epochs == 5 and cfg.static.calib_rows == (512,)
    assert cfg.student.layers == "0,2"


def test_print_config_reads_back_as_the_same_build(tmp_path, capsys):
    from engines.__main__ import parse

    f = tmp_path / "recipe.toml"
    f.write_text("epochs = 3\nqat-lr = 2e-5\n")
    with pytest.raises(SystemExit) as e:
        parse(["--config", str(f), "--student-distill", "0.7", "--print-config"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "epochs = 3\n" in printed and "student-distill = 0.7\n" in printed
    assert "# data = (unset)" in printed  # not given: the task the artifacts were built for
    kept = tmp_path / "effective.toml"
    kept.write_text(printed)
    want, _ = parse(["--config", str(f), "--student-distill", "0.7"])
    got, _ = parse(["--config", str(kept)])
    assert got == want
    assert got.finetune.epochs == 3 and got.qat.lr == 2e-5 and got.student.distill == 0.7


def test_evaluate_reads_yaml_and_deploy_a_subcommand_s_keys(tmp_path, capsys):
    from deploy.__main__ import main as deploy_main
    from evaluate.__main__ import parse

    f = tmp_path / "score.yaml"
    f.write_text("variant: ort/ptq-fused\nbatch-size: 8\nlatency-samples: 100\n")
    cfg, _ = parse(["--config", str(f)])
    assert (cfg.backend, cfg.variant, cfg.batch_size, cfg.latency_samples) == (
        "ort", "ptq-fused", 8, 100)
    k = tmp_path / "k8s.toml"
    k.write_text('replicas = 3\nnamespace = "ml"\ncpu = true\n')
    out = tmp_path / "k8s"
    assert deploy_main(["k8s", "--config", str(k), "--variant", "ort/fp32", "--out", str(out)]) == 0
    text = (out / "deployment.yaml").read_text()
    assert "replicas: 3" in text and "namespace: ml" in text
    with pytest.raises(SystemExit):
        deploy_main(["k8s", "--config", str(k), "--print-config"])
    printed = capsys.readouterr().out
    assert "replicas = 3\n" in printed and "cpu = true\n" in printed and "max-replicas = 4\n" in printed


@pytest.mark.parametrize("text, says", [
    ("epochz = 3\n", "unknown key 'epochz': not a flag of python -m engines"),
    ('epochs = "three"\n', "key 'epochs' takes an integer; it is 'three'"),
    ("epochs = true\n", "key 'epochs' takes an integer; it is True"),
    ("epochs = [1, 2]\n", "key 'epochs' takes one value, not a list; it is [1, 2]"),
    ("force = 1\n", "key 'force' takes true or false; it is 1"),
    ("logit-bias = \"yes\"\n", "key 'logit-bias' takes true or false"),
    ("ptq-calib-rows = [\"a\"]\n", "key 'ptq-calib-rows' takes a value its flag accepts"),
    ("epochs = \n", "cannot be read (TOMLDecodeError"),
])
def test_a_bad_file_is_one_line_naming_the_key_and_the_file(text, says, tmp_path, capsys):
    from engines.__main__ import main

    f = tmp_path / "bad.toml"
    f.write_text(text)
    assert main(["--config", str(f), "--dry-run"]) == 2
    err = _err(capsys)
    assert f"--config {f}" in err and says in err


def test_a_missing_or_non_table_file(tmp_path, capsys):
    from evaluate.__main__ import main

    assert main(["--config", str(tmp_path / "none.toml"), "--compare"]) == 2
    assert "no such file" in _err(capsys)
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    assert main(["--config", str(f), "--compare"]) == 2
    assert "expected a table of flag = value, not a list" in _err(capsys)
    f.write_text("split: dev\n")
    assert main(["--config", str(f), "--compare"]) == 2
    assert "key 'split' is one of train, validation, test, not 'dev'" in _err(capsys)


def test_evaluate_modes_take_their_own_generated_flags(tmp_path, capsys):
    """--speedup, --profile-ops and --saturation read their configs' own fields from flags
    generated like the rest (`--speedup-sentences` is not `--latency-samples`), from a config
    file too, with out-of-range values refused in one line naming the mode."""
    from evaluate.__main__ import mode_config, mode_configs, parse
    from evaluate.op_profile import OpProfileConfig
    from evaluate.saturation import SaturationConfig
    from evaluate.speedup import SpeedupConfig

    f = tmp_path / "bench.toml"
    f.write_text("speedup-sentences = 40\nspeedup-round-size = 10\nprofile-ops-sentences = 7\n"
                 "saturation-sentences = 9\nlatency-samples = 3\nthreads = 1\n")
    cfg, a = parse(["--backend", "ort", "--speedup", "default", "--config", str(f),
                    "--speedup-batches", "2"])
    sc = mode_config(SpeedupConfig, "speedup-", cfg, a, variants=("fp32", "ptq"))
    assert (sc.sentences, sc.round_size, sc.batches, sc.threads) == (40, 10, 2, 1)
    assert mode_config(OpProfileConfig, "profile-ops-", cfg, a, variants=("fp32",)).sentences == 7
    assert mode_config(SaturationConfig, "saturation-", cfg, a, variants=("ptq",)).sentences == 9
    from evaluate.gpu_check import GpuCheckConfig

    assert {c for c, _ in mode_configs()} == {SpeedupConfig, OpProfileConfig, SaturationConfig,
                                              GpuCheckConfig}
    assert mode_config(GpuCheckConfig, "gpu-check-", *parse(
        ["--gpu-check", "--gpu-check-row-timeout-s", "60"])).row_timeout_s == 60
    with pytest.raises(SystemExit):
        parse(["--backend", "ort", "--speedup", "default", "--print-config"])
    printed = capsys.readouterr().out
    assert "speedup-sentences = 2000\n" in printed and "saturation-sentences = 0\n" in printed
    from common.errors import ConfigError

    cfg, a = parse(["--backend", "ort", "--speedup", "default", "--speedup-round-size", "0"])
    with pytest.raises(ConfigError, match="^--speedup: SpeedupConfig: .*round_size"):
        mode_config(SpeedupConfig, "speedup-", cfg, a, variants=("fp32", "ptq"))


def test_a_config_handed_to_a_child_process_comes_back_equal():
    """common.config.to_flags: the flags that give a config back through the same parser (how
    --gpu-check hands its settings to each row's process)."""
    from common.config import to_flags
    from evaluate.__main__ import parse
    from evaluate.run import EvalConfig

    cfg = EvalConfig(backend="ort", variant="ptq", data="/x/y", threads=3, limit=16,
                     latency_samples=4, batch_size=8, split="validation")
    assert to_flags(EvalConfig()) == []
    got, _ = parse(to_flags(cfg))
    assert got == cfg
