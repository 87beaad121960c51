"""Hugging Face folders of the built variants: `artifacts/hf/<variant>/` holds model.onnx (or the
PyTorch weights, for the baseline), config.json with id2label/label2id, the tokenizer files,
ort_config.json for quantized graphs and a generated README.md model card, so that
`ORTModelForSequenceClassification.from_pretrained(folder)` (optimum) or
`AutoModelForSequenceClassification.from_pretrained(folder)` and a transformers `pipeline` load it
as they are.

The card is generated from the task the baseline was trained on (dataset, columns, label names,
rows per split), the artifact's manifest entry (the recipe: quantization settings, layers kept
FP32) and, once `make report` has scored the variant, from its report (test macro F1, accuracy
and per-class F1 at batch 1, size, latency with device and threads), in the layout the Hub reads
(YAML metadata with model-index results). A score of a `--limit` slice is said to be one and
never enters model-index as the split's result. The report file is an input of the step, so a new
report rewrites the card on the next `make engines` (`make report` does that itself).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.classes import MANY_LABELS, WORST_K, worst
from common.config import doc

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HfConfig:
    license: str = doc("apache-2.0", "license field of the model cards (the base model's)")
    language: str = doc("en", "language field of the model cards (the data's)")


def write_folder(out: Path, checkpoint: Path, onnx_path: Path | None, entry: dict[str, Any],
                 report: dict[str, Any] | None, name: str, cfg: HfConfig,
                 precision: str = "fp32") -> dict[str, Any]:
    """One self-contained folder: the config and tokenizer of the checkpoint the variant was
    made from (the baseline, or the student), and its ONNX graph (or, onnx_path None, the
    checkpoint's PyTorch weights); returns what the manifest records. `precision`: the
    registry's (common.variants.Precision value), for the card's tags."""
    from common.checkpoint import read_recipe

    out.mkdir(parents=True)
    meta = read_recipe(checkpoint)
    shutil.copy(checkpoint / "config.json", out / "config.json")
    for f in TOKENIZER_FILES:
        if (checkpoint / f).is_file():
            shutil.copy(checkpoint / f, out / f)
    # the pipeline truncates at model_max_length: make it the max length every variant was built for
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["model_max_length"] = int(meta["max_length"])
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    if onnx_path is None:
        for f in WEIGHT_FILES:
            if (checkpoint / f).is_file():
                shutil.copy(checkpoint / f, out / f)
    else:
        shutil.copy(onnx_path, out / "model.onnx")
        quant = ort_config(entry)
        if quant:
            (out / "ort_config.json").write_text(json.dumps(quant, indent=2) + "\n")
    (out / "README.md").write_text(model_card(name, meta, entry, report, cfg,
                                              onnx_path is not None, precision), encoding="utf-8")
    return {"files": sorted(p.name for p in out.iterdir()), "card_has_results": report is not None}


def graph_ops(entry: dict[str, Any]) -> dict[str, int]:
    """The quantized operators the shipped graph runs, from its manifest entry."""
    return {**entry.get("quantized_ops", {}), **entry.get("qdq_ops", {}), **entry.get("qdq", {})}


def ort_config(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What was quantized and how, in the keys of optimum's ORTConfig.quantization where they
    exist (informational: ORTModel runs the graph as it is), describing the graph shipped."""
    if "static" in entry:
        s = entry["static"]
        fused = "static_qattention" in entry  # ort/ptq-fused: QAttention + QDQ MatMuls
        return {"quantization": {
            "is_static": True, "format": "QDQ + QOperator (QAttention)" if fused else "QDQ",
            "mode": "QLinearOps",
            "activations_dtype": "QUInt8" if s["activation_type"] == "u8" else "QInt8",
            "activations_symmetric": s["symmetric"], "weights_dtype": "QInt8",
            "weights_symmetric": True, "per_channel": True,
            "operators_to_quantize": (["Attention", "EmbedLayerNormalization", "MatMul"] if fused
                                      else ["MatMul", "Gather"]),
            "graph_ops": graph_ops(entry),
            "calibration": {"method": s["method"], "percentile": s["percentile"],
                            "rows": s["calib_rows"]},
            "placement": s["placement"], "blocks_fp32": s["fp32_blocks"]}}
    if "qdq" in entry:
        return {"quantization": {"is_static": True, "format": "QDQ", "source": "QAT",
                                 "flavour": entry.get("flavour"), "graph_ops": graph_ops(entry),
                                 **entry.get("quantization", {})}}
    if "quantized_ops" in entry:
        return {"quantization": {"is_static": False, "format": "QOperator",
                                 "weights_dtype": "QInt8", "graph_ops": graph_ops(entry),
                                 **entry.get("recipe", {}).get("fields", {})}}
    if "optimum" in entry:
        return {"quantization": entry["optimum"]}
    return None


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML scalar


def usage(name: str, pair: bool = False, onnx: bool = True) -> list[str]:
    """The card's snippet: runs as written once `path` names this folder (tests run it)."""
    load = (["from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
             "", f'path = "artifacts/hf/{name}"  # this folder',
             "model = AutoModelForSequenceClassification.from_pretrained(path)"]
            if not onnx else
            ["from optimum.onnxruntime import ORTModelForSequenceClassification",
             "from transformers import AutoTokenizer, pipeline", "",
             f'path = "artifacts/hf/{name}"  # this folder',
             "model = ORTModelForSequenceClassification.from_pretrained(path)"])
    return ["```python", *load,
            'clf = pipeline("text-classification", model=model,',
            "               tokenizer=AutoTokenizer.from_pretrained(path), truncation=True)",
            ('print(clf({"text": "a first text", "text_pair": "a second text"}))' if pair else
             'print(clf("i feel wonderful today"))'), "```"]


def model_card(name: str, meta: dict[str, Any], entry: dict[str, Any],
               report: dict[str, Any] | None, cfg: HfConfig, onnx: bool = True,
               precision: str = "fp32") -> str:
    """A Hugging Face model card: YAML metadata (license, language, library, base_model as a Hub
    id, the dataset where it is a Hub one, metrics, model-index results of a whole split), then
    the task it was trained for, what the folder ships, its intended use and limitations, how to
    run it, how it was made, its scores, and how to rebuild it."""
    from common.modelsource import DEFAULT_MODEL, hub_id

    ref = meta.get("base_model")
    source = ref.get("source") if isinstance(ref, dict) else ref
    base = hub_id(source) or str(source)
    task = meta["task"]
    labels, pair, data = task["labels"], task["pair"], task["source"]
    tags = ["text-classification"] + (["onnx"] if onnx else []) + (
        ["int8", "quantized"] if precision == "int8" else [])
    lines = ["---", f"license: {cfg.license}", f"language:\n- {cfg.language}",
             "library_name: " + ("optimum" if onnx else "transformers"),
             "pipeline_tag: text-classification",
             *([f"datasets:\n- {data.split(' ')[0]}"] if task.get("hub") else []),
             "metrics:\n- f1\n- accuracy", "tags:\n" + "\n".join(f"- {t}" for t in tags),
             f"base_model: {_yaml_str(base)}"]
    rows = (report or {}).get("rows", {})
    whole = bool(report) and not rows.get("slice", True)
    if report and whole:
        lines += ["model-index:", f"- name: {_yaml_str(Path(data).name + '-' + name)}", "  results:",
                  "  - task:", "      type: text-classification", "      name: Text Classification",
                  "    dataset:", f"      name: {_yaml_str(data)}", f"      type: {_yaml_str(data)}",
                  *([f"      config: {_yaml_str(task['spec']['hub_config'])}"]
                    if task.get("hub") and task["spec"].get("hub_config") else []),
                  f"      split: {report['split']}", "    metrics:",
                  f"    - type: f1\n      name: macro F1 (batch 1)\n      value: {report['macro_f1']:.4f}"
                  "\n      args:\n        average: macro",
                  f"    - type: accuracy\n      name: accuracy (batch 1)\n      value: {report['accuracy']:.4f}"]
    what = ("the PyTorch weights (safetensors)" if not onnx else
            "an ONNX graph for ONNX Runtime" + (
                f" running {', '.join(f'{v} {k}' for k, v in sorted(graph_ops(entry).items()))}"
                if graph_ops(entry) else ""))
    shown = ", ".join(labels[:10]) + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")
    cols = task["columns"]
    inputs = (f"text pairs (`{cols['text']}`, `{cols['text_pair']}`)" if pair
              else f"texts (`{cols['text']}`)")
    val = task["validation"]
    carved = (f"; validation carved from {val['carved_from']} ({100 * val['fraction']:g}%, "
              f"stratified, seed {val['seed']})" if "carved_from" in val else "")
    from common.data import SPLITS

    splits = task["splits"]
    sizes = " / ".join(f"{k} {splits[k]['rows']:,}" for k in SPLITS) + " rows"
    trained = meta.get("train_rows", splits["train"]["rows"])
    limited = trained < splits["train"]["rows"]
    if limited:  # --limit-train: say what the model really saw
        sizes += f"; trained on the first {trained:,} training rows"
    lines += ["---", "", f"# {Path(data).name} / {name}", "",
              f"A {len(labels)}-way classifier of {inputs} into {shown} (label column "
              f"`{cols['label']}`, names from {task['label_source']}), fine-tuned from `{base}` "
              f"on {data} ({sizes}{carved}). This folder ships {what}, with the tokenizer and "
              f"config (id2label holds the names). Max length {meta['max_length']} tokens; inputs "
              f"{', '.join(meta['input_names'])}.", "",
              "## Intended use and limitations", "",
              f"Classifying {'text pairs' if pair else 'texts'} like those of {data} into its "
              f"{len(labels)} labels. Out of scope: inputs unlike that data (other languages, "
              "domains or lengths), and decisions about people. The labels are the dataset's and "
              "carry its noise. "
              + (f"Pairs longer than {meta['max_length']} tokens are cut a token at a time from "
                 "the longer text." if pair else
                 f"Texts longer than {meta['max_length']} tokens are cut.")
              + (" This graph takes activation ranges per batch: run it one input at a time "
                 "for answers that do not depend on other requests." if "quantized_ops" in entry
                 and "static" not in entry else ""), "",
              "## Use", "", *usage(name, pair, onnx), ""]
    lines += ["## How it was made", ""] + student_lines(meta) + recipe_lines(name, entry) + [""]
    if report:
        lat = report["latency_ms"]
        dev = report["device"]
        where = (f"the {report['split']} split ({rows.get('scored', report['n_examples'])} rows)"
                 if whole else
                 f"**a slice: the first {rows.get('scored')} of the {rows.get('split_rows')} rows "
                 f"of the {report['split']} split** (`--limit`), not the split's result")
        many = len(labels) > MANY_LABELS
        shown_pc = worst(report["per_class"], WORST_K) if many else labels
        lines += [f"## Results ({report['split']} split{'' if whole else ', a slice'})", "",
                  f"Scored by `python -m evaluate` at batch 1 (each input on its own) on {where}: "
                  f"macro F1 **{report['macro_f1']:.4f}**, accuracy {report['accuracy']:.4f}; "
                  f"batched (batch {report['batched']['batch_size']}) macro F1 "
                  f"{report['batched']['macro_f1']:.4f} ({report['batch_invariance']['differ']} "
                  f"predictions differ). Size {report['size_mb']:.1f} MB. Batch-1 latency p50 "
                  f"{lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms on {dev.get('name')} "
                  f"({report['provider']}, {report['threads']} threads).", "",
                  *([f"The {len(shown_pc)} classes with the lowest F1 (of {len(labels)}):", ""]
                    if many else []),
                  "| class | precision | recall | F1 |", "|---|---|---|---|"]
        lines += [f"| {c} | {report['per_class'][c]['precision']:.3f} | "
                  f"{report['per_class'][c]['recall']:.3f} | {report['per_class'][c]['f1']:.3f} |"
                  for c in shown_pc]
    else:
        lines += ["## Results", "", "Not scored yet: `make report` scores it and rewrites this card."]
    model_arg = "" if source in (None, "", DEFAULT_MODEL) else f" MODEL={base}"
    lines += ["", "## Rebuild", "", "```bash",
              f"make engines DATA=<{data}>{model_arg}"
              f"{engine_args(task, [f'--limit-train {trained}'] if limited else [])}",
              "make report",
              "```", ""]
    return "\n".join(lines)


def engine_args(task: dict[str, Any], more: list[str]) -> str:
    """ENGINE_ARGS of the `make engines` that declares this task (its flags where not the
    defaults) and `more`."""
    from common.task import TaskSpec

    default = TaskSpec()
    flags = [f"--{k.replace('_', '-')} {json.dumps(v) if isinstance(v, str) else v}"
             for k, v in task["spec"].items() if getattr(default, k, None) != v] + more
    return f" ENGINE_ARGS='{' '.join(flags)}'" if flags else ""


def student_lines(meta: dict[str, Any]) -> list[str]:
    """What a student is (its checkpoint's recipe.json names the layers it kept)."""
    if "layers_kept" not in meta:
        return []
    f = meta.get("config", {}).get("fields", {})
    keep = meta["layers_kept"]
    return [f"A student: {len(keep)} of the fine-tuned baseline's {meta['baseline_layers']} encoder "
            f"layers (kept: {', '.join(map(str, keep))}) with its embeddings and head, distilled "
            f"from the baseline's logits (temperature {f.get('temperature')}, weight "
            f"{f.get('distill')} beside the labels) for {f.get('epochs')} epochs; validation macro "
            f"F1 {meta['best_val_macro_f1']:.4f} (baseline {meta['baseline_best_val_macro_f1']:.4f}).",
            ""]


def recipe_lines(name: str, entry: dict[str, Any]) -> list[str]:
    if "layers_kept" in entry:  # the student's own folder: its PyTorch weights
        return ["Its FP32 PyTorch weights, the epoch with the best validation macro F1 kept."]
    if name == "baseline":
        f = entry.get("recipe", {}).get("fields", {})
        return [f"Fine-tuned in FP32: {f.get('epochs')} epochs, AdamW lr {f.get('lr')}, batch "
                f"{f.get('batch_size')}, seed {f.get('seed')}, class weights "
                f"{f.get('class_weights')}; the epoch with the best validation macro F1 kept."]
    if "static" in entry:
        s = entry["static"]
        calib = (f"{s['method']} calibration"
                 + (f" (percentile {s['percentile']})" if s["method"] == "percentile" else "")
                 + f" on {s['calib_rows']} validation rows, "
                 f"{'U8' if s['activation_type'] == 'u8' else 'S8'} activations "
                 f"({'symmetric' if s['symmetric'] else 'asymmetric'}), S8 per-channel weights")
        blocks = [f"layer {b}" for b in s["fp32_blocks"]]
        if "static_qattention" in entry:
            return [f"Static INT8 on ONNX Runtime's fused graph, with the recipe the accuracy-aware "
                    f"search chose on validation ({calib}): {entry['static_qattention']} fused "
                    "attention blocks as QAttention with constant (calibrated) input scales, the "
                    "word embedding with LayerNorm as QEmbedLayerNormalization, "
                    f"{entry.get('qdq_matmuls', '?')} layer MatMuls with Q/DQ on their inputs.",
                    "Kept FP32: the residual connections and LayerNorm (they read the "
                    "float tensors), GELU, the classification head"
                    + (", " + ", ".join(blocks) if blocks else "") + "."]
        return [f"Static INT8 (ONNX Runtime, QDQ) chosen by an accuracy-aware search on validation: "
                f"{calib}, MatMul placement `{s['placement']}`.",
                "Kept FP32: " + ", ".join(entry.get("kept_fp32_ops", []) + blocks) + "."]
    q = entry.get("quantization")
    if q and "quantized" in q:
        return ["Quantization-aware training (fake-quant fine-tuning), exported with Q/DQ:"] + \
            [f"- {x}" for x in q["quantized"]] + ["", "Kept FP32: " + ", ".join(q["fp32"]) + "."]
    if "quantized_ops" in entry:
        return ["ONNX Runtime dynamic INT8 (`quantize_dynamic`): INT8 weights, activations "
                "quantized per batch at run time (predictions depend on the batch)."]
    if "optimum" in entry:
        return [f"Built by Optimum's own API as a reference row: {entry['optimum'].get('how')}."]
    return ["The FP32 export of the fine-tuned model"
            + (" after ONNX Runtime's transformers optimizer (fused attention, LayerNorm)."
               if "fused_ops" in entry else ", validated against PyTorch.")]
