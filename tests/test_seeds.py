"""The baseline study's pieces: the logit-bias fit (and where it is stored), its cross-fitted
validation score, and `python -m train.seeds` on the tiny model (resumable report)."""

import json

import numpy as np
import pytest

from train.bias import apply_logit_bias, fit_logit_bias, logits_layer


def test_bias_fit_moves_thresholds_toward_macro_f1():
    rng = np.random.default_rng(0)
    y = rng.choice(6, size=600, p=[0.3, 0.35, 0.09, 0.13, 0.1, 0.03])
    logits = rng.normal(size=(600, 6))
    logits[np.arange(600), y] += 1.5
    logits[:, 5] -= 1.0  # the rare class is under-predicted
    bias, before, after = fit_logit_bias(logits, y)
    assert after > before
    rare = y == 5  # the under-predicted class is predicted more often after the fit
    assert ((logits + bias).argmax(-1)[rare] == 5).mean() > (logits.argmax(-1)[rare] == 5).mean()
    one = np.zeros((1, 6))
    assert fit_logit_bias(one, np.array([0]))[0].tolist() == [0.0] * 6  # nothing to gain: no move


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_bias_is_stored_in_the_layer_that_writes_the_logits(data_dir, tmp_path, family):
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.tiny_models import build_tiny

    path = build_tiny(family, data_dir, tmp_path / family)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    layer = logits_layer(model)
    assert layer is (model.classifier.out_proj if family == "roberta" else model.classifier)
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        apply_logit_bias(model, np.array([1.0, 0, 0, 0, 0, -2.0]))
        after = model(input_ids=ids).logits
    np.testing.assert_allclose((after - before).numpy(), [[1.0, 0, 0, 0, 0, -2.0]], atol=1e-5)


def test_crossfitted_score_never_sees_its_own_rows():
    from train.seeds import crossfit_bias_f1

    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 400)
    logits = rng.normal(size=(400, 6))  # no signal: an in-sample fit still finds some
    _, _, in_sample = fit_logit_bias(logits, y)
    assert crossfit_bias_f1(logits, y) < in_sample


def test_seed_study_runs_reports_and_resumes(tiny_model_dir, data_dir, tmp_path, capsys):
    from train.seeds import main

    argv = ["--name", "today", "--seeds", "0,1", "--model", str(tiny_model_dir), "--data",
            str(data_dir), "--epochs", "1", "--lr", "5e-4", "--max-length", "64", "--out",
            str(tmp_path), "--logits", str(tmp_path / "logits")]
    assert main(argv) == 0
    r = json.loads((tmp_path / "baseline-seeds.json").read_text())
    assert [(x["candidate"], x["seed"]) for x in r["runs"]] == [
        ("today", 0), ("today+bias", 0), ("today", 1), ("today+bias", 1)]
    for x in r["runs"]:
        assert 0 <= x["val_macro_f1"] <= 1 and 0 <= x["test_macro_f1"] <= 1
    s = {x["candidate"]: x for x in r["summary"]}
    assert s["today"]["n"] == 2 and s["today"]["test_sd"] >= 0
    assert "| today | 0, 1 |" in (tmp_path / "baseline-seeds.md").read_text()
    assert (tmp_path / "logits" / "today-seed1.npz").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # the same runs again: nothing is retrained
    assert capsys.readouterr().out.count("[done]") == 2
    # the same name with another recipe would mix two recipes in one spread: refused, nothing lost
    before = (tmp_path / "baseline-seeds.json").read_text()
    assert main([*argv, "--class-weights", "none"]) == 2
    assert "trained with another recipe" in capsys.readouterr().err
    assert (tmp_path / "baseline-seeds.json").read_text() == before


def test_the_default_recipe_is_marked_and_only_it():
    """The report marks the candidate whose recipe make engines trains (data, model, seed aside)."""
    from common.config import recipe
    from train.finetune import FinetuneConfig
    from train.seeds import is_default

    assert FinetuneConfig().class_weights == "sqrt-inverse"
    assert is_default(recipe(FinetuneConfig(seed=3, data="somewhere", limit_train=10)))
    assert not is_default(recipe(FinetuneConfig(class_weights="none")))
    assert not is_default(recipe(FinetuneConfig(epochs=3)))
