"""What `make engines` checks before its first step, each one line and exit code 2: numeric flags
in range, a usable base model folder, every input of the run built or built in it, a Hub
look-up that cannot succeed said at once."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from common.modelsource import ModelSourceError, validate_model


def run_engines(argv: list[str], capsys) -> tuple[int, str, str]:
    from engines.__main__ import main

    code = main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err.strip()


def assert_one_line(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and "\n" not in err, (code, err)
    return err


# 7. numeric flags in range ----------------------------------------------------------------------

BAD_FLAGS = [["--limit-train", "-1"], ["--limit-eval", "-1"], ["--threads", "-1"],
             ["--batch-size", "0"], ["--seed", "-1"], ["--epochs", "0"], ["--lr", "0"],
             ["--max-length", "2"], ["--warmup-ratio", "-0.1"], ["--qat-epochs", "0"],
             ["--qat-seed", "-1"], ["--qat-percentile", "0"], ["--qlora-lr", "0"],
             ["--qlora-seed", "-1"], ["--qlora-rank", "0"], ["--qlora-dropout", "1"],
             ["--calib-batch-size", "0"], ["--calib-seed", "-1"],
             ["--calib-size", "8", "--ptq-calib-rows", "8"],
             ["--ptq-calib-rows", "8"], ["--ptq-calib-rows", "2048"], ["--ptq-latency-rounds", "0"],
             ["--export-n-validate", "0"], ["--export-opset", "9"], ["--fuse-n-validate", "0"],
             ["--dynamic-min-top1", "2"], ["--qat-export-n-validate", "0"],
             ["--optimum-n-compare", "0"], ["--trt-workspace-mb", "0"]]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=[" ".join(f) for f in BAD_FLAGS])
def test_a_numeric_flag_out_of_range_is_one_line(flags, tmp_path, capsys):
    code, out, err = run_engines(flags + ["--dry-run", "--artifacts", str(tmp_path)], capsys)
    assert_one_line(code, err)
    assert out == ""


@pytest.mark.parametrize("argv", [["study", "--threads", "-1"], ["study", "--limit", "-5"],
                                  ["deploy", "k8s", "--cpu-target", "0"],
                                  ["deploy", "serve", "--threads", "-1"]])
def test_other_entry_points_range_check_too(argv, tmp_path, capsys):
    from deploy.__main__ import main as deploy_main
    from study.__main__ import main as study_main

    main = study_main if argv[0] == "study" else deploy_main
    code = main(argv[1:] + ["--out" if argv[:2] != ["deploy", "serve"] else "--repo",
                            str(tmp_path / "out")])
    assert_one_line(code, capsys.readouterr().err.strip())


def test_limit_train_minus_one_never_trains(tmp_path, tiny_model_dir, data_dir, capsys):
    """It used to train on every row but the last (rows[:-1])."""
    code, out, err = run_engines(["--limit-train", "-1", "--model", str(tiny_model_dir),
                                  "--data", str(data_dir), "--artifacts", str(tmp_path),
                                  "--stages", "baseline"], capsys)
    assert "limit_train must be >= 0, not -1" in assert_one_line(code, err)
    assert "[build]" not in out


def test_a_validation_split_smaller_than_a_calibration_batch(tmp_path, tiny_model_dir, data_dir,
                                                            capsys):
    small = Path(shutil.copytree(data_dir, tmp_path / "small"))
    rows = (small / "validation.jsonl").read_text().splitlines()[:8]
    (small / "validation.jsonl").write_text("\n".join(rows) + "\n")
    code, out, err = run_engines(["--model", str(tiny_model_dir), "--data", str(small),
                                  "--artifacts", str(tmp_path / "art"), "--stages",
                                  "baseline,calibration", "--no-overlap"], capsys)
    assert "8 rows, fewer than one calibration batch" in assert_one_line(code, err)
    assert "[build]" not in out  # said before the baseline's training, not after


def test_the_calibration_set_builder_says_it_too(tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoTokenizer

    from calibration.calibset import CalibConfig, build_calibration_set
    from common.errors import ConfigError

    small = Path(shutil.copytree(data_dir, tmp_path / "small"))
    rows = (small / "validation.jsonl").read_text().splitlines()[:8]
    (small / "validation.jsonl").write_text("\n".join(rows) + "\n")
    from common.checkpoint import TextEncoder

    te = TextEncoder(AutoTokenizer.from_pretrained(str(tiny_model_dir)), 64,
                     ("input_ids", "attention_mask"))
    with pytest.raises(ConfigError, match="fewer than one calibration batch"):
        build_calibration_set(str(small), te, CalibConfig(size=64, batch_size=16),
                              tmp_path / "c.npz")


# 8. the base model folder -----------------------------------------------------------------------

def damage(folder: Path, how: str) -> None:
    cfg_path = folder / "config.json"
    if how == "no config.json":
        cfg_path.unlink()
    elif how == "no tokenizer":
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
                f.unlink()
    elif how == "truncated weights":
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "unreadable header":
        w = folder / "model.safetensors"
        w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + w.read_bytes()[24:])
    elif how == "3-label head":
        cfg = json.loads(cfg_path.read_text())
        cfg.update(id2label={str(i): f"L{i}" for i in range(3)},
                   label2id={f"L{i}": i for i in range(3)},
                   architectures=["BertForSequenceClassification"])
        cfg_path.write_text(json.dumps(cfg))


DAMAGE = {"no config.json": "has no config.json", "no tokenizer": "has no tokenizer files",
          "truncated weights": "truncated or corrupt", "unreadable header": "header is unreadable",
          "3-label head": "with 3 labels, this task has 6"}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_model_folder_is_refused_before_anything(how, tiny_model_dir, data_dir, tmp_path,
                                                           capsys):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    damage(model, how)
    with pytest.raises(ModelSourceError, match=DAMAGE[how]):
        validate_model(str(model), 64, num_labels=6)
    code, out, err = run_engines(["--model", str(model), "--data", str(data_dir), "--dry-run",
                                  "--artifacts", str(tmp_path / "art")], capsys)
    assert DAMAGE[how] in assert_one_line(code, err)


def test_max_length_beyond_the_positions(tiny_model_dir, data_dir, tmp_path, capsys):
    from train.finetune import FinetuneConfig, finetune

    with pytest.raises(ModelSourceError, match="128 positions; lower --max-length to at most 128"):
        finetune(FinetuneConfig(model=str(tiny_model_dir), data=str(data_dir), max_length=129),
                 tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code, _, err = run_engines(["--model", str(tiny_model_dir), "--data", str(data_dir),
                                "--qlora-max-length", "200", "--max-length", "64", "--dry-run",
                                "--artifacts", str(tmp_path / "art")], capsys)
    assert "--qlora-max-length 200" in assert_one_line(code, err)


def test_roberta_positions_count_its_padding_offset(data_dir, tmp_path):
    from tests.tiny_models import SIZES, build_tiny

    model = build_tiny("roberta", data_dir, tmp_path / "roberta")  # 130 positions, 128 usable
    validate_model(str(model), SIZES["positions"])
    with pytest.raises(ModelSourceError, match="at most 128"):
        validate_model(str(model), SIZES["positions"] + 1)


# 9. a stage whose inputs are missing ------------------------------------------------------------

@pytest.mark.parametrize("dry", [False, True])
def test_a_stage_without_its_inputs_fails_naming_the_stages(dry, tiny_model_dir, data_dir,
                                                           tmp_path, capsys):
    code, out, err = run_engines(["--model", str(tiny_model_dir), "--data", str(data_dir),
                                  "--artifacts", str(tmp_path / "art"), "--stages", "ptq"]
                                 + (["--dry-run"] if dry else []), capsys)
    err = assert_one_line(code, err)
    assert "onnx-ptq reads onnx-fp32, which is not built" in err
    assert "add stage(s) baseline, onnx, calibration (--stages baseline,onnx,calibration,ptq)" in err
    assert "[skip]" not in out and "[build]" not in out


# 10. a Hub look-up that cannot succeed ----------------------------------------------------------

@pytest.mark.parametrize("spec", ["sentence-transformers/all-MiniLM-L6-v3", "./models/no-such"])
def test_a_mistyped_model_fails_at_once_offline(spec, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    code, _, err = run_engines(["--model", spec, "--data", str(data_dir), "--dry-run",
                                "--artifacts", str(tmp_path)], capsys)
    assert time.time() - t0 < 5
    assert spec in assert_one_line(code, err)


# 11. a Hub model is named by its revision --------------------------------------------------------

def fake_hub_cache(root: Path, repo: str, sha: str) -> None:
    """A Hugging Face cache as huggingface_hub lays it out: refs/main names the snapshot."""
    cache = root / f"models--{repo.replace('/', '--')}"
    (cache / "snapshots" / sha).mkdir(parents=True)
    (cache / "snapshots" / sha / "config.json").write_text('{"model_type": "bert"}')
    (cache / "refs").mkdir(exist_ok=True)
    (cache / "refs" / "main").write_text(sha)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from common import modelsource

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    modelsource.hub_revision.cache_clear()
    modelsource.check_hub_model.cache_clear()
    yield tmp_path
    modelsource.hub_revision.cache_clear()
    modelsource.check_hub_model.cache_clear()


def test_a_hub_models_fingerprint_follows_its_revision(hub_cache, monkeypatch):
    from common import modelsource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old, new = "a" * 40, "b" * 40
    fake_hub_cache(hub_cache, "acme/tiny-bert", old)
    assert modelsource.model_fingerprint("acme/tiny-bert") == f"hub:acme/tiny-bert@{old}"
    fake_hub_cache(hub_cache, "acme/tiny-bert", new)  # the cache now loads a newer commit
    modelsource.hub_revision.cache_clear()
    assert modelsource.model_fingerprint("acme/tiny-bert") == f"hub:acme/tiny-bert@{new}"


def test_an_unreachable_hub_falls_back_to_the_cached_revision(hub_cache, monkeypatch):
    import huggingface_hub.constants

    from common import modelsource

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused
    fake_hub_cache(hub_cache, "acme/tiny-bert", "c" * 40)
    assert modelsource.hub_revision("acme/tiny-bert") == "c" * 40
    with pytest.raises(modelsource.ModelSourceError, match="cannot tell which revision"):
        modelsource.hub_revision("acme/not-cached")
