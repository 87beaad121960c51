"""The baseline's seed spread: train a recipe with several seeds, score validation and test macro
F1 (FP32, PyTorch), and keep every run in one report, so "better" is judged against the spread.

    python -m train.seeds --data ../shared/data/emotion --name class-weights --seeds 42,1,2 [recipe flags]

Candidates are chosen on validation only; the test numbers are reported beside them, never used
to choose. A run that is already in the report (same name, recipe and seed) is not repeated, so
the study can be extended run by run. Each trained model is also scored with a per-class logit
bias fitted on its validation logits (train/bias.py), as the candidate `<name>+bias`, without
training it again. Writes <out>/baseline-seeds.{json,md}.

    python -m train.seeds --ensemble class-weights,class-weights+ls0.1 --logits DIR

scores the ensemble of every run of those candidates from their saved logits (no training): the
ceiling of distilling such an ensemble into one model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.config import add_flags, from_flags, recipe
from common.errors import ConfigError, cli
from common.probs import softmax
from train.finetune import FinetuneConfig


def score(ckpt: Path, data: str, limit_eval: int = 0) -> dict[str, Any]:
    """Validation and test logits of a saved checkpoint (batches by length, FP32)."""
    from transformers import AutoModelForSequenceClassification

    from common.checkpoint import TextEncoder
    from common.task import load_split
    from common.torch_infer import torch_logits

    te = TextEncoder.from_checkpoint(ckpt)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    out = {}
    for split in ("validation", "test"):
        s = load_split(data, split)
        s = s.head(limit_eval) if limit_eval else s
        out[split] = (torch_logits(model, te.encode_split(s), te.input_names, 128),
                      np.asarray(s.labels))
    return out


def crossfit_bias_f1(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Validation macro F1 of a logit bias that never saw the rows it is scored on: fitted on
    one stratified half, applied to the other, both ways; macro F1 over all rows. (The bias
    fitted on the whole split scores higher on it by construction: no basis to choose.)"""
    from common.data import stratified_halves
    from common.metrics import classification_metrics
    from train.bias import fit_logit_bias

    a, b = stratified_halves(labels, seed)
    pred = np.empty(len(labels), dtype=np.int64)
    for fit, score in ((a, b), (b, a)):
        bias, _, _ = fit_logit_bias(logits[fit], labels[fit])
        pred[score] = (logits[score] + bias).argmax(-1)
    return float(classification_metrics(labels, pred)["macro_f1"])


def run_one(cfg: FinetuneConfig, logits_to: Path | None = None) -> list[dict[str, Any]]:
    """Train once; the rows for the recipe and for the recipe + fitted logit bias. The
    validation and test logits are kept in `logits_to` (.npz) for later analysis."""
    from common.metrics import classification_metrics
    from common.task import load_task
    from train.bias import fit_logit_bias
    from train.finetune import finetune

    names = load_task(cfg.data).labels
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        t0 = time.time()
        meta = finetune(cfg, Path(tmp))
        minutes = (time.time() - t0) / 60
        logits = score(Path(tmp), cfg.data, cfg.limit_eval)
    (vl, vy), (tl, ty) = logits["validation"], logits["test"]
    if logits_to is not None:
        logits_to.parent.mkdir(parents=True, exist_ok=True)
        np.savez(logits_to, val_logits=vl, val_labels=vy, test_logits=tl, test_labels=ty)

    def row(bias: np.ndarray | None) -> dict[str, Any]:
        b = 0 if bias is None else bias
        v = classification_metrics(vy, (vl + b).argmax(-1), names)
        t = classification_metrics(ty, (tl + b).argmax(-1), names)
        return {"seed": cfg.seed, "val_macro_f1": v["macro_f1"], "test_macro_f1": t["macro_f1"],
                "test_accuracy": t["accuracy"], "best_epoch": meta["best_epoch"],
                "test_per_class_f1": {k: x["f1"] for k, x in t["per_class"].items()},
                "train_minutes": minutes, "logit_bias": None if bias is None else bias.tolist()}

    rows = [row(None)]
    if cfg.logit_bias:  # finetune fitted the bias on all of validation: score it cross-fitted
        rows[0]["val_macro_f1_in_sample"] = rows[0]["val_macro_f1"]
        rows[0]["val_macro_f1"] = crossfit_bias_f1(vl - np.asarray(meta["logit_bias"]), vy)
    else:  # the same model with a bias fitted on its validation logits
        bias, _, _ = fit_logit_bias(vl, vy)
        rows.append(row(bias))
        rows[-1]["val_macro_f1_in_sample"] = rows[-1]["val_macro_f1"]
        rows[-1]["val_macro_f1"] = crossfit_bias_f1(vl, vy)  # what choosing may look at
    return rows


def ensemble_row(report: dict[str, Any], names: list[str], logits_dir: Path) -> dict[str, Any]:
    """Macro F1 of the mean softmax of every stored run of the candidates `names`: what an
    ensemble of those models scores, so the ceiling of distilling it into one model (a student
    rarely beats its teacher). No training; reads each run's saved logits."""
    from common.metrics import classification_metrics

    runs = [r for r in report["runs"] if r["candidate"] in names]
    missing = sorted(set(names) - {r["candidate"] for r in runs})
    if missing:
        raise ConfigError(f"no runs of {missing} in the report; train them first (--name)")
    probs: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    labels: dict[str, np.ndarray] = {}
    for r in runs:
        f = logits_dir / f"{r['candidate']}-seed{r['seed']}.npz"
        if not f.is_file():
            raise ConfigError(f"{f} is missing: --logits must name the folder the runs were "
                              "trained with (their logits are kept there)")
        with np.load(f) as z:
            for split in probs:
                probs[split].append(softmax(z[f"{split}_logits"]))
                if not np.array_equal(labels.setdefault(split, z[f"{split}_labels"]),
                                      z[f"{split}_labels"]):
                    raise ConfigError(f"{f} was scored on other {split} rows than the others")
    score = {split: classification_metrics(labels[split], np.mean(p, 0).argmax(-1))
             for split, p in probs.items()}
    return {"members": names, "runs": [f"{r['candidate']} seed {r['seed']}" for r in runs],
            "val_macro_f1": score["val"]["macro_f1"], "test_macro_f1": score["test"]["macro_f1"],
            "test_accuracy": score["test"]["accuracy"]}


def sample_sd(a: Any) -> float:
    """The sample standard deviation over seeds (0 for a single run)."""
    a = np.asarray(a, dtype=float)
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["candidate"] for r in runs):
        rs = [r for r in runs if r["candidate"] == name]
        v = np.array([r["val_macro_f1"] for r in rs])
        t = np.array([r["test_macro_f1"] for r in rs])
        out.append({"candidate": name, "seeds": [r["seed"] for r in rs], "n": len(rs),
                    "val_mean": float(v.mean()), "val_sd": sample_sd(v), "test_mean": float(t.mean()),
                    "test_sd": sample_sd(t), "minutes_per_run": float(np.mean([r["train_minutes"] for r in rs])),
                    "recipe": rs[0]["recipe"]})
    return out


_NOT_RECIPE = {"model", "data", "limit_train", "limit_eval", "seed"}


def _recipe_fields(r: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe's fields that make the recipe (model, data, row limits and seed aside)."""
    return {k: v for k, v in r["fields"].items() if k not in _NOT_RECIPE}


def is_default(r: dict[str, Any]) -> bool:
    """Whether a run's recipe is FinetuneConfig's default (model, data and seed aside)."""
    d = recipe(FinetuneConfig())
    return r["type"] == d["type"] and _recipe_fields(r) == _recipe_fields(d)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Baseline seed study", "",
             f"Model: `{report['model']}`; data: `{report['data']}`; device: {report['device']}. "
             "Each candidate is trained with each seed (FP32, PyTorch, batch 32); macro F1 is "
             "scored on the whole validation and test splits. Candidates are compared on "
             "validation; test is reported, never used to choose. `+bias`: the same models with "
             "a per-class logit bias fitted on validation for macro F1 (no retraining); its "
             "validation score is cross-fitted (the bias fitted on one stratified half scores "
             "the other), its test score uses the bias fitted on all of validation. **default**: "
             "the recipe `make engines` trains (train/finetune.py's FinetuneConfig).",
             *(["", f"Note: {report['note']}"] if report.get("note") else []), "",
             "| candidate | seeds | validation macro F1 mean (sd) | test macro F1 mean (sd) | "
             "minutes per run |", "|---|---|---|---|---|"]
    for s in report["summary"]:
        name = s["candidate"] + (" **default**" if is_default(s["recipe"])
                                 and not s["candidate"].endswith("+bias") else "")
        lines.append(f"| {name} | {', '.join(map(str, s['seeds']))} | "
                     f"{s['val_mean']:.4f} ({s['val_sd']:.4f}) | {s['test_mean']:.4f} "
                     f"({s['test_sd']:.4f}) | {s['minutes_per_run']:.1f} |")
    # the two classes with the lowest mean test F1 over the runs: where the macro F1 is held down
    classes = list(report["runs"][0]["test_per_class_f1"]) if report["runs"] else []
    low = sorted(classes, key=lambda c: np.mean([r["test_per_class_f1"][c]
                                                  for r in report["runs"]]))[:2]
    lines += ["", "## Every run", "", "| candidate | seed | best epoch | validation | test | "
              "test accuracy | " + " | ".join(f"{c} F1" for c in low) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(low)]
    for r in report["runs"]:
        pc = r["test_per_class_f1"]
        lines.append(f"| {r['candidate']} | {r['seed']} | {r['best_epoch']} | {r['val_macro_f1']:.4f} | "
                     f"{r['test_macro_f1']:.4f} | {r['test_accuracy']:.4f} | "
                     + " | ".join(f"{pc[c]:.3f}" for c in low) + " |")
    if report.get("ensembles"):
        lines += ["", "## Ensembles", "", "The mean softmax of several trained runs (no training: "
                  "their saved logits). A model distilled from such an ensemble rarely scores "
                  "above it, so its score is the ceiling of that candidate.", "",
                  "| members | models | validation macro F1 | test macro F1 | test accuracy |",
                  "|---|---|---|---|---|"]
        for e in report["ensembles"]:
            lines.append(f"| {' + '.join(e['members'])} | {len(e['runs'])} | "
                         f"{e['val_macro_f1']:.4f} | {e['test_macro_f1']:.4f} | "
                         f"{e['test_accuracy']:.4f} |")
    lines += ["", "## Recipes", ""]
    for s in report["summary"]:
        shown = _recipe_fields(s["recipe"])
        then = " + a logit bias fitted on validation after training" if s["candidate"].endswith(
            "+bias") else ""
        lines.append(f"- **{s['candidate']}**: `{json.dumps(shown, sort_keys=True)}`{then}")
    return "\n".join(lines) + "\n"


@cli
def main(argv: list[str] | None = None) -> int:
    from common.env import cpu_device
    from common.reports import write_report

    p = argparse.ArgumentParser(prog="python -m train.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="the candidate's name in the report")
    p.add_argument("--ensemble", metavar="NAME[,NAME...]",
                   help="instead of training: score the ensemble of every run of these "
                        "candidates from their saved logits (--logits) and add it to the report")
    p.add_argument("--seeds", default="42,1,2")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--logits", default="reports/baseline-seeds",
                   help="where each run's validation and test logits go (.npz)")
    add_flags(p, FinetuneConfig)
    a = p.parse_args(argv)
    base = from_flags(FinetuneConfig, a)
    out = Path(a.out)
    path = out / "baseline-seeds.json"
    report = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    if a.ensemble:
        names = [n.strip() for n in a.ensemble.split(",") if n.strip()]
        row = ensemble_row(report, names, Path(a.logits))
        report["ensembles"] = [e for e in report.get("ensembles", []) if e["members"] != names]
        report["ensembles"].append(row)
        print(f"ensemble of {len(row['runs'])} models: validation {row['val_macro_f1']:.4f}, "
              f"test {row['test_macro_f1']:.4f}")
        write_report(out, "baseline-seeds", report, markdown(report))
        return 0
    if not a.name:
        raise ConfigError("give --name (a candidate to train) or --ensemble (candidates to score)")
    def unseeded(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "fields": {k: v for k, v in r["fields"].items() if k != "seed"}}

    mine = recipe(base)
    for name in (a.name, f"{a.name}+bias"):
        other = next((x for x in report["runs"] if x["candidate"] == name
                      and unseeded(x["recipe"]) != unseeded(mine)), None)
        if other is not None:  # one name, one recipe: the spread is of one recipe
            raise ConfigError(f"candidate {name!r} in {path} was trained with another recipe "
                              f"({json.dumps(other['recipe']['fields'], sort_keys=True)}); give "
                              "this recipe a new --name, or delete that candidate's runs")
    for seed in (int(s) for s in a.seeds.split(",")):
        cfg = dataclasses.replace(base, seed=seed)
        r = recipe(cfg)
        if any(x["candidate"] == a.name and x["recipe"] == r for x in report["runs"]):
            print(f"[done] {a.name} seed {seed}")
            continue
        print(f"[train] {a.name} seed {seed}")
        rows = run_one(cfg, Path(a.logits) / f"{a.name}-seed{seed}.npz")
        for row, name in zip(rows, (a.name, f"{a.name}+bias"), strict=False):
            report["runs"] = [x for x in report["runs"]
                              if not (x["candidate"] == name and x["seed"] == seed)]
            report["runs"].append({"candidate": name, "recipe": r, **row})
            print(f"  {name} seed {seed}: validation {row['val_macro_f1']:.4f}, test "
                  f"{row['test_macro_f1']:.4f}")
        report.update({"model": base.model, "data": base.data, "device": cpu_device()["name"],
                       "summary": summarise(report["runs"])})
        write_report(out, "baseline-seeds", report, markdown(report))  # after every run
    return 0


if __name__ == "__main__":
    sys.exit(main())
