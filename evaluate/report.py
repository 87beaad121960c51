"""Write one evaluation as JSON (+ logits .npy), Markdown and a confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.classes import MANY_LABELS, WORST_K, confused_pairs, names_of, worst
from common.data import SPLITS
from evaluate.plots import confusion_png


def stem(backend: str, variant: str) -> str:
    return f"{backend}-{variant}"


def to_markdown(r: dict) -> str:
    dev = r["device"]
    lat, bl, tp = r["latency_ms"], r["batched_latency_ms"], r["throughput"]
    lines = [
        f"# {r['backend']} / {r['variant']}",
        "",
        f"- model: `{r['model']}`; data: `{r['data']}` split `{r['split']}` ({r['n_examples']} rows)",
        *task_lines(r),
        f"- device: {device_line(dev)}; provider: {r['provider']}; threads: {r['threads']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(r['versions'].items()))}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro F1 (batch 1) | {r['macro_f1']:.4f} |",
        f"| accuracy (batch 1) | {r['accuracy']:.4f} |",
        f"| macro F1 / accuracy (batch {r['batched']['batch_size']}) | "
        f"{r['batched']['macro_f1']:.4f} / {r['batched']['accuracy']:.4f} |",
        f"| batch-invariant (batch 1 vs batch {r['batched']['batch_size']}) | "
        f"{'yes' if r['batch_invariance']['batch_invariant'] else 'no'}: "
        f"{r['batch_invariance']['differ']} predictions differ |",
        f"| size MB | {r['size_mb']:.1f} |",
        *([f"| weights in memory MB | {r['weights_in_memory_mb']:.1f} |"]
          if r.get("weights_in_memory_mb") else []),
        *([f"| GPU memory MB: torch peak allocated / device in use (every allocator) | "
           f"{r['gpu_memory']['torch_peak_allocated_mb']:.0f} / "
           f"{r['gpu_memory']['device_in_use_mb']:.0f} |"] if r.get("gpu_memory") else []),
        f"| latency batch 1 p50 / p95 / p99 ms | {lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f} |",
        f"| latency batch {bl['batch_size']} p50 / p95 ms | {bl['p50']:.2f} / {bl['p95']:.2f} |",
        f"| throughput (batch {tp['batch_size']}) | {tp['examples_per_s']:.1f} examples/s |",
        "",
        f"Size: {r['size_note']}.",
        "",
        f"Measured: batch 1: {r['measurement']['batch1']}. Batched: {r['measurement']['batched']}. "
        f"Max length {r['measurement']['max_length']} ({r['measurement']['truncated_texts']} texts truncated).",
        "",
        *per_class_markdown(r),
        f"![confusion matrix]({stem(r['backend'], r['variant'])}-confusion.png)", "",
    ]
    if r.get("made_by"):
        lines += made_by_markdown(r["made_by"])
    return "\n".join(lines)


def device_line(dev: dict) -> str:
    """The device a report measured on: a GPU with its number, capability, memory, driver and
    CUDA; a CPU by name."""
    if dev.get("kind") != "cuda":
        return str(dev.get("name", dev.get("kind")))
    facts = [f"cuda:{dev['index']}" if "index" in dev else "",
             f"compute capability {dev['compute_capability']}" if dev.get("compute_capability") else "",
             f"{dev['memory_gb']} GB" if dev.get("memory_gb") else "",
             f"driver {dev['driver']}" if dev.get("driver") else "",
             f"CUDA {dev['cuda_runtime']}" if dev.get("cuda_runtime") else "",
             f"TensorRT {dev['tensorrt']}" if dev.get("tensorrt") else ""]
    return f"{dev.get('name')} ({', '.join(x for x in facts if x)})"


def task_lines(r: dict) -> list[str]:
    """What task was scored, and whether the rows are the whole split or a slice."""
    t, rows = r.get("task"), r.get("rows")
    out = []
    if isinstance(t, dict):
        cols = t["columns"]
        pair = f" + `{cols['text_pair']}` (text pairs)" if t.get("pair") else ""
        val = t["validation"]
        carved = (f"; validation carved from {val['carved_from']} ({100 * val['fraction']:g}%, "
                  f"stratified, seed {val['seed']})" if "carved_from" in val else "")
        out.append(f"- task: `{t['source']}`, text `{cols['text']}`{pair}, label `{cols['label']}`; "
                   f"{len(t['labels'])} labels from {t['label_source']}{carved}; rows "
                   + ", ".join(f"{k} {t['splits'][k]['rows']}" for k in SPLITS if k in t["splits"]))
    if isinstance(rows, dict) and rows.get("slice"):
        out.append(f"- **a slice**: the first {rows['scored']} of the {rows['split_rows']} rows of "
                   f"{r['split']} (`--limit`); not the split's result")
    return out


def per_class_markdown(r: dict) -> list[str]:
    """Every class up to MANY_LABELS (and the matrix); beyond, the WORST_K classes by F1 and the
    most-confused pairs; the report's JSON keeps every class and the whole matrix."""
    names = names_of(r)
    many = len(names) > MANY_LABELS
    shown = worst(r["per_class"], WORST_K) if many else names
    head = (f"## The {len(shown)} classes with the lowest F1 (of {len(names)}; every class and the "
            "whole confusion matrix are in the JSON)" if many else "## Per class")
    lines = [head, "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name in shown:
        c = r["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    if many:
        lines += ["", f"## The {WORST_K} most-confused pairs", "",
                  "| true | predicted | rows |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {n} |" for a, b, n in
                  confused_pairs(r["confusion_matrix"], names, WORST_K)]
        return lines + [""]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, r["confusion_matrix"], strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


def made_by_markdown(m: dict) -> list[str]:
    """How the variant was made, from its manifest entry: quantized / FP32 layers, recipe."""
    lines = ["## How this variant was made", "", f"Artifact `{m['artifact']}` (artifacts/manifest.json)."]
    q = m.get("quantization")
    if q:
        lines += ["", f"Quantized ({q['bits']}-bit):", *[f"- {x}" for x in q["quantized"]],
                  "", "Kept FP32: " + ", ".join(q["fp32"]) + ".", "",
                  f"Calibration: {q['calibration']}."]
    hp = {**m.get("qat", {}), **m.get("qat_training", {})}
    if hp:
        lines += ["", "| QAT setting | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in hp.items() if k not in {"data", "limit_train",
                                                                         "limit_eval", "device",
                                                                         "threads"}]]
    search = m.get("search")
    if search:
        sp = search["calibration_seed_spread"]
        lines += ["", "### Static-PTQ search (validation only)", "",
                  f"Criterion: {search['criterion']}; acceptance: {search['acceptance']}. Halves: "
                  f"A {search['halves']['a']} rows, B {search['halves']['b']} rows (seed "
                  f"{search['halves']['split_seed']}); FP32 macro F1 on B "
                  f"{search['val_b_macro_f1_fp32']:.4f}; FP32 batch-1 p50 "
                  f"{search['fp32_latency_ms_b1']:.2f} ms in the same interleaved rounds.", "",
                  "| recipe | KL (A) | top-1 (A) | drop on B (pt) | batch-1 ms | speed-up | size ratio "
                  "| chosen |", "|---|---|---|---|---|---|---|---|"]
        for r in search["tried"]:
            lines.append(f"| {r['label']} | {r['kl']:.4f} | {100 * r['top1']:.2f}% | "
                         f"{r['val_b_drop_pt']:+.2f} | {r.get('latency_ms_b1', float('nan')):.2f} | "
                         f"{r.get('speedup_vs_fp32_b1', float('nan')):.2f} | "
                         f"{r.get('size_ratio', float('nan')):.2f} | {'yes' if r.get('chosen') else ''} |")
        lines += ["", "The chosen recipe rebuilt with other calibration-sample seeds: " +
                  "; ".join(f"seed {x['seed']}: drop {x['val_b_drop_pt']:+.2f} pt, KL {x['kl']:.4f}"
                            for x in sp["rows"]) +
                  f" (drop on B over all seeds: mean {sp['val_b_drop_pt_mean']:+.2f}, sd "
                  f"{sp['val_b_drop_pt_sd']:.2f} pt)."]
    if m.get("qdq"):
        lines += ["", "Q/DQ in the graph: " + ", ".join(f"{k} {v}" for k, v in m["qdq"].items()) + "."]
    if not (q or hp):
        lines += ["", "Recipe: `" + json.dumps(m["recipe"], sort_keys=True) + "`"]
    return lines + [""]


def write_report(result: dict, out: Path) -> dict[str, Path]:
    """<stem>.json/.md/-confusion.png, plus the batch-1 and batched logits as .npy (the
    comparison's agreement and paired bootstrap read them)."""
    from common.manifest import atomic_output, sha256_of
    from common.reports import write_report as write_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = stem(result["backend"], result["variant"])
    r = dict(result)
    saved = {}
    for key, suffix in (("logits", "logits"), ("batched_logits", "batched-logits")):
        path = out / f"{s}.{suffix}.npy"
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(r.pop(key), dtype=np.float32))
        r[f"{key}_file"] = path.name
        r[f"{key}_sha256"] = sha256_of(path)  # the comparison checks the pair still belongs together
        saved[key] = path
    title = f"{s}: macro F1 {r['macro_f1']:.3f} (batch 1)"
    paths = write_files(out, s, r, to_markdown(r),
                        {"confusion": lambda p: confusion_png(r["confusion_matrix"], names_of(r),
                                                              r["per_class"], title, p)})
    return {**paths, "png": paths["confusion"], **saved}


def load_report(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
