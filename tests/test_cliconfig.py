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
