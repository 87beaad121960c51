"""The seed spread of a trained compressed variant (QLoRA, QAT, the student), trained as `make
engines` trains it (its step's config and code) with each seed:

    python -m engines.seeds --variant qlora --seeds 42,1,2 [--name NAME] [engines flags...]

Each run is scored on validation (all that choosing a recipe may look at) and on the test split
at batch 1, the way the variant is deployed (QLoRA: the NF4 base + adapters in PyTorch; QAT: its
exported CPU graph in ONNX Runtime; the student: its static INT8 fused graph, `student`, and its
FP32 graph, `student-fp32`, both in ONNX Runtime and both built by the build's own student
steps), beside the FP32 graph and the static PTQ graph of the same artifacts folder. The delta against FP32 is the mean over seeds with a paired bootstrap 95%
interval over the test rows (each resample scores every seed and the reference on the same rows).
Runs already in the report (same variant, name, recipe and seed) are not repeated. Writes
<out>/variant-seeds.{json,md}. Every flag of `python -m engines` is taken (--data, --artifacts,
--qlora-*, --qat-*, ...).
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

from common.config import recipe
from common.errors import ConfigError, cli

VARIANTS = ("qlora", "qat", "student")
# what a student run is scored as: the graphs the build's student steps make
STUDENT_GRAPHS = {"student": "onnx-student-ptq-fused", "student-fp32": "onnx-student"}


def _ort_logits(path: Path, enc: Any, names: tuple[str, ...]) -> np.ndarray:
    from export.onnx_export import ort_fn

    run = ort_fn(path)
    return np.concatenate([run(enc.batch([i], names)) for i in range(len(enc))])


def _torch_logits_b1(model: Any, enc: Any, names: tuple[str, ...]) -> np.ndarray:
    from common.torch_infer import torch_logits

    return torch_logits(model, enc, names, batch_size=1)


def train_and_score(variant: str, cfg: Any, build: Any, work: Path) -> dict[str, Any]:
    """Train one run into `work`; its validation macro F1 (the training's own selection score)
    and its test logits at batch 1."""
    from common.checkpoint import TextEncoder
    from common.manifest import Manifest
    from common.task import task_of

    man = Manifest(Path(build.artifacts))
    test = task_of(Path(build.artifacts)).split("test")
    t0 = time.time()
    if variant == "qlora":
        from common.qlora_model import load_qlora
        from train.qlora import train_qlora

        r = train_qlora(cfg, work)
        te = TextEncoder.from_checkpoint(work)
        model, _ = load_qlora(work)
        logits = _torch_logits_b1(model, te.encode_split(test), te.input_names)
        val = r["best_val_macro_f1"]
    elif variant == "qat":
        from export.qat_export import export_qat
        from train.qat import train_qat

        r = train_qat(cfg, man.verify("baseline"), man.verify("calibration"),
                      build.calib.batch_size, work / "qat")
        export_qat(work / "qat", work / "qat.onnx", build.qat_export)
        te = TextEncoder.from_checkpoint(man.verify("baseline"))
        logits = _ort_logits(work / "qat.onnx", te.encode_split(test), te.input_names)
        val = r["best_val_macro_f1"]
    else:
        out = student_run(cfg, build, work)
        te = TextEncoder.from_checkpoint(man.verify("baseline"))
        enc = te.encode_split(test)
        graphs = {name: _ort_logits(out.verify(art), enc, te.input_names)
                  for name, art in STUDENT_GRAPHS.items()}
        logits = graphs.pop("student")
        val = out.get("student")["best_val_macro_f1"]
        return {"val_macro_f1": float(val), "logits": logits, "labels": np.asarray(test.labels),
                "train_minutes": (time.time() - t0) / 60, "also": graphs}
    return {"val_macro_f1": float(val), "logits": logits, "labels": np.asarray(test.labels),
            "train_minutes": (time.time() - t0) / 60}


def student_run(cfg: Any, build: Any, work: Path) -> Any:
    """Build the student stage with recipe `cfg` into `work`, by the build's own steps, on top of
    the artifacts folder's other artifacts (linked, with their manifest entries); returns the
    manifest of `work`."""
    from common.manifest import MANIFEST_NAME, Manifest, write_json_atomic
    from engines.pipeline import build_all

    src = Manifest(Path(build.artifacts))
    keep = {k: e for k, e in src.entries.items() if "skipped" not in e
            and not k.startswith(("student", "onnx-student", "hf-", "trt-"))}
    for e in keep.values():
        target = work / e["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((src.root / e["path"]).resolve())
    write_json_atomic(work / MANIFEST_NAME, keep)
    build_all(dataclasses.replace(build, artifacts=str(work), stages=("student",), student=cfg,
                                  overlap=False))
    return Manifest(work)


def run_inputs(variant: str, build: Any) -> dict[str, str]:
    """What a run is made from besides its recipe: the data, the code that trains and scores it,
    and (QAT, the student) the baseline and calibration set it starts from. A run made from other inputs is
    trained again, not reused."""
    from common.codehash import code_fingerprint
    from common.manifest import Manifest

    man = Manifest(Path(build.artifacts))
    out = {"task": man.get("task")["sha256"], "code": code_fingerprint(train_and_score)}
    if variant in ("qat", "student"):  # a student also takes ort/ptq's recipe for its INT8 graph
        out.update({"baseline": man.get("baseline")["sha256"],
                    "calibration": man.get("calibration")["sha256"],
                    **({"onnx-ptq": man.get("onnx-ptq")["sha256"]} if variant == "student" else {})})
    else:
        from common.modelsource import model_fingerprint

        out["model"] = model_fingerprint(build.qlora.model)
    return out


def references(build: Any) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """Test logits at batch 1 of the FP32 and static-PTQ graphs the artifacts folder holds, and
    the test labels."""
    from common.checkpoint import TextEncoder
    from common.manifest import Manifest
    from common.task import task_of

    man = Manifest(Path(build.artifacts))
    te = TextEncoder.from_checkpoint(man.verify("baseline"))
    test = task_of(Path(build.artifacts)).split("test")
    enc = te.encode_split(test)
    out = {}
    from common.variants import listed

    for name, art in ((v.variant, v.artifact) for v in listed("seed-reference", "ort")):
        if man.built(art):
            out[name] = {"artifact": art, "sha256": man.get(art)["sha256"],
                         "logits": _ort_logits(man.verify(art), enc, te.input_names)}
    return out, np.asarray(test.labels)


def summarise(runs: list[dict[str, Any]], refs: dict[str, dict[str, Any]],
              labels: np.ndarray) -> list[dict[str, Any]]:
    """Per (variant, name): validation and test mean and sd over seeds, and the mean test delta
    against each reference with a paired bootstrap 95% interval over the test rows."""
    from common.metrics import bootstrap_weights, classification_metrics, macro_f1_resampled
    from train.seeds import sample_sd

    w = bootstrap_weights(len(labels))
    out = []
    for key in dict.fromkeys((r["variant"], r["name"]) for r in runs):
        mine = [r for r in runs if (r["variant"], r["name"]) == key]
        preds = [np.asarray(r["test_pred"]) for r in mine]
        per_seed = np.mean([macro_f1_resampled(w, labels, p) for p in preds], axis=0)
        row: dict[str, Any] = {
            "variant": key[0], "name": key[1], "seeds": [r["seed"] for r in mine],
            "val_mean": float(np.mean([r["val_macro_f1"] for r in mine])),
            "val_sd": sample_sd([r["val_macro_f1"] for r in mine]),
            "test_mean": float(np.mean([r["test_macro_f1"] for r in mine])),
            "test_sd": sample_sd([r["test_macro_f1"] for r in mine]),
            "train_minutes_mean": float(np.mean([r["train_minutes"] for r in mine])), "vs": {}}
        for name, ref in refs.items():
            ref_pred = ref["logits"].argmax(-1)
            d = per_seed - macro_f1_resampled(w, labels, ref_pred)
            ref_f1 = classification_metrics(labels, ref_pred)["macro_f1"]
            lo, hi = np.percentile(d, [2.5, 97.5])
            row["vs"][name] = {"reference_test": ref_f1, "delta_pt": 100 * (row["test_mean"] - ref_f1),
                               "ci95_pt": [100 * float(lo), 100 * float(hi)]}
        out.append(row)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Seed spread of the trained compressed variants", "",
             "Each run trained as `make engines` trains the variant (its step's config and code) with "
             "the seed shown; validation macro F1 is what the training selected on; test macro F1 "
             "at batch 1, the way the variant is deployed (QLoRA in PyTorch, QAT's CPU graph in "
             "ONNX Runtime). Deltas: the mean over seeds minus the reference, with a paired "
             "bootstrap 95% interval over the test rows (`python -m engines.seeds`).", "",
             "| variant | name | seeds | validation mean (sd) | test mean (sd) | vs FP32 pt [95% CI] "
             "| vs static PTQ (fused) pt [95% CI] | train min |", "|---|---|---|---|---|---|---|---|"]
    def vs(s: dict[str, Any], name: str) -> str:
        v = s["vs"].get(name)
        return "-" if v is None else (f"{v['delta_pt']:+.2f} [{v['ci95_pt'][0]:+.2f}, "
                                      f"{v['ci95_pt'][1]:+.2f}]")

    for s in report["summary"]:
        lines.append(f"| {s['variant']} | {s['name']} | {','.join(map(str, s['seeds']))} | "
                     f"{s['val_mean']:.4f} ({s['val_sd']:.4f}) | {s['test_mean']:.4f} "
                     f"({s['test_sd']:.4f}) | {vs(s, 'fp32')} | {vs(s, 'ptq-fused')} | "
                     f"{s['train_minutes_mean']:.1f} |")
    refs = ", ".join(f"{k} {v['test']:.4f}" for k, v in report["references"].items())
    lines += ["", f"References (test macro F1 at batch 1, same artifacts): {refs}.", "",
              "| variant | name | seed | validation | test | train min | recipe |",
              "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        fields = {k: v for k, v in r["recipe"]["fields"].items() if k != "seed"}
        lines.append(f"| {r['variant']} | {r['name']} | {r['seed']} | {r['val_macro_f1']:.4f} | "
                     f"{r['test_macro_f1']:.4f} | {r['train_minutes']:.1f} | `{json.dumps(fields)}` |")
    return "\n".join(lines) + "\n"


@cli
def main(argv: list[str] | None = None) -> int:
    from common.metrics import classification_metrics
    from common.reports import write_report
    from engines.__main__ import parse as parse_engines

    p = argparse.ArgumentParser(prog="python -m engines.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--seeds", default="42,1,2")
    p.add_argument("--name", default="default", help="the recipe's name in the report")
    p.add_argument("--out", default="docs/results")
    a, rest = p.parse_known_args(argv)
    build, _ = parse_engines(rest)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds takes seeds >= 0, not {a.seeds!r}")
    base_cfg: Any = {"qlora": build.qlora, "qat": build.qat, "student": build.student}[a.variant]
    out = Path(a.out)
    path = out / "variant-seeds.json"
    report = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    inputs = run_inputs(a.variant, build)
    for seed in seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed)
        rec = recipe(cfg)
        done = [r for r in report["runs"] if (r["variant"], r["name"], r["seed"]) == (a.variant, a.name, seed)]
        if done and done[0]["recipe"] == rec and done[0].get("inputs") == inputs:
            print(f"{a.variant}/{a.name} seed {seed}: in the report already")
            continue
        if done and done[0]["recipe"] != rec:
            raise ConfigError(f"{a.name!r} holds another {a.variant} recipe in {path}: pick another "
                              "--name (one name, one recipe)")
        report["runs"] = [r for r in report["runs"] if r not in done]  # made from other inputs
        with tempfile.TemporaryDirectory() as tmp:
            r = train_and_score(a.variant, cfg, build, Path(tmp) / "run")
        test = classification_metrics(r["labels"], r["logits"].argmax(-1))["macro_f1"]
        for name, logits in {a.variant: r["logits"], **r.get("also", {})}.items():
            report["runs"] = [x for x in report["runs"]
                              if (x["variant"], x["name"], x["seed"]) != (name, a.name, seed)]
            report["runs"].append({
                "variant": name, "name": a.name, "seed": seed, "recipe": rec,
                "val_macro_f1": r["val_macro_f1"],
                "test_macro_f1": classification_metrics(r["labels"], logits.argmax(-1))["macro_f1"],
                "train_minutes": r["train_minutes"], "inputs": inputs,
                # the predictions (not the logits): the report stays self-contained
                "test_pred": logits.argmax(-1).tolist()})
        write_report(out, "variant-seeds", report, "")  # a later failure keeps this run
        print(f"{a.variant}/{a.name} seed {seed}: validation {r['val_macro_f1']:.4f}, test "
              f"{test:.4f} (batch 1), {r['train_minutes']:.1f} min")
    refs, labels = references(build)
    report["summary"] = summarise(report["runs"], refs, labels)
    report["references"] = {k: {"artifact": v["artifact"], "sha256": v["sha256"],
                                "test": classification_metrics(labels, v["logits"].argmax(-1))["macro_f1"]}
                            for k, v in refs.items()}
    write_report(out, "variant-seeds", report, markdown(report))
    print(f"seed spread -> {out / 'variant-seeds.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
