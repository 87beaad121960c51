"""The baseline study's pieces: the logit-bias fit (and where it is stored), its cross-fitted
validation score, and `python -m train.seeds` on the tiny model (resumable report)."""

import json

import numpy as np
import pytest

from common.errors import ConfigError
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

    # the ensemble of the two runs, from their saved logits: the mean softmax, scored
    from common.metrics import classification_metrics
    from train.seeds import softmax

    z = [np.load(tmp_path / "logits" / f"today-seed{s}.npz") for s in (0, 1)]
    want = classification_metrics(z[0]["test_labels"], np.mean(
        [softmax(x["test_logits"]) for x in z], 0).argmax(-1))["macro_f1"]
    ens = ["--ensemble", "today", "--out", str(tmp_path), "--logits", str(tmp_path / "logits")]
    assert main(ens) == 0
    e = json.loads((tmp_path / "baseline-seeds.json").read_text())["ensembles"]
    assert len(e) == 1 and e[0]["members"] == ["today"] and len(e[0]["runs"]) == 2
    assert e[0]["test_macro_f1"] == pytest.approx(want)
    assert "## Ensembles" in (tmp_path / "baseline-seeds.md").read_text()
    assert main(ens) == 0  # scored again: replaced, not added
    assert len(json.loads((tmp_path / "baseline-seeds.json").read_text())["ensembles"]) == 1
    (tmp_path / "logits" / "today-seed1.npz").unlink()
    assert main(ens) == 2
    assert "today-seed1.npz is missing" in capsys.readouterr().err
    assert main(["--ensemble", "nobody", "--out", str(tmp_path)]) == 2
    assert "no runs of ['nobody']" in capsys.readouterr().err


def test_the_default_recipe_is_marked_and_only_it():
    """The report marks the candidate whose recipe make engines trains (data, model, seed aside)."""
    from common.config import recipe
    from train.finetune import FinetuneConfig
    from train.seeds import is_default

    assert FinetuneConfig().class_weights == "sqrt-inverse"
    assert is_default(recipe(FinetuneConfig(seed=3, data="somewhere", limit_train=10)))
    assert not is_default(recipe(FinetuneConfig(class_weights="none")))
    assert not is_default(recipe(FinetuneConfig(epochs=3)))


def test_checkpoint_average_is_the_mean_of_the_chosen_steps():
    import torch

    from train.finetune import CheckpointAverage

    model = torch.nn.Linear(3, 2)
    avg = CheckpointAverage(model, steps=10, n=3)
    assert avg.at == {10, 7, 3}  # evenly spaced, the last step included
    seen = []
    for step in range(1, 11):
        with torch.no_grad():
            model.weight.fill_(float(step))
        if step in avg.at:
            seen.append(step)
        avg.after_step(step)
    live = avg.swap_in()
    assert torch.allclose(model.weight, torch.full((2, 3), sum(seen) / len(seen)))
    assert torch.equal(live["weight"], torch.full((2, 3), 10.0))  # what to restore
    assert CheckpointAverage(model, steps=2, n=5).n == 2  # never more points than steps


def test_averaged_checkpoint_competes_with_the_epochs_on_validation(tiny_model_dir, data_dir,
                                                                     tmp_path):
    from common.config import recipe
    from train.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(model=str(tiny_model_dir), data=str(data_dir), epochs=2, lr=5e-4,
                         max_length=64, average_last=3)
    meta = finetune(cfg, tmp_path / "m")
    h = meta["history"]
    assert [(x["epoch"], x.get("averaged_checkpoints", 0)) for x in h] == [(1, 0), (2, 0), (2, 3)]
    best = max(h, key=lambda x: x["val_macro_f1"])
    assert meta["best_val_macro_f1"] == best["val_macro_f1"]
    assert meta["best_averaged_checkpoints"] == best.get("averaged_checkpoints", 0)
    assert recipe(cfg)["fields"]["average_last"] == 3  # part of the recipe: a new candidate
    with pytest.raises(ConfigError, match="average_last"):
        FinetuneConfig(average_last=-1)


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2"])
def test_layer_decay_scales_each_layer_from_the_top(data_dir, tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    from tests.tiny_models import build_tiny
    from train.finetune import FinetuneConfig, param_groups

    model = AutoModelForSequenceClassification.from_pretrained(
        build_tiny(family, data_dir, tmp_path / family))
    names = {id(p): n for n, p in model.named_parameters()}
    # off: the two groups the recipe always had (decayed weights, then biases and LayerNorms)
    plain = param_groups(model, 0.01, 1.0)
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(0.01, 1.0), (0.0, 1.0)]
    # on: every parameter in exactly one group, its lr scale by its depth from the top
    groups = param_groups(model, 0.01, 0.5)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    layers = sorted({n.split(".layer.")[1].split(".")[0] for n in names.values() if ".layer." in n})
    assert layers == ["0", "1"]  # the tiny models have 2 layers
    for n, s in scale.items():
        if ".layer.1." in n:
            assert s == 0.5, n
        elif ".layer.0." in n:
            assert s == 0.25, n
        elif "embeddings" in n:
            assert s == 0.125, n
        elif n.startswith(("classifier", "pooler")) or ".pooler." in n:
            assert s == 1.0, n
    assert all(g["weight_decay"] == 0.0 for g in groups
               for p in g["params"] if names[id(p)].endswith("bias"))
    with pytest.raises(ConfigError, match="layer_decay"):
        FinetuneConfig(layer_decay=0)
