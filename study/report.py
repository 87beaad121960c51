"""The study's JSON, Markdown table and plots (quality vs weight memory, latency bars)."""

from __future__ import annotations

from pathlib import Path

from common.plots import pyplot, save
from common.reports import write_report


def markdown(r: dict, stem: str) -> str:
    metric = r["metric"]
    ref = next(x for x in r["rows"] if x["method"] == "fp32")
    lines = [f"# Quantization study: {r['task']}", "",
             f"Device: {r['device'].get('name')}, {r['threads']} threads; one process, rows measured "
             "one after another. Weight memory: bytes of every parameter and buffer the model holds "
             "(packed 4-bit codes as stored, scales, zero points, bitsandbytes state, FP parts). "
             "Peak inference: weight memory + the largest number of bytes a forward holds on top "
             f"of it ({r['probe']}), counted from torch's allocator events (activations, weights "
             "dequantized on the fly; a C kernel's private scratch is not seen). Peak RSS: the "
             "process's resident high-water mark while scoring the row (reset before each row; it "
             "includes everything the process holds, so it barely separates rows). Latency: median "
             "batch-1 forward.", "",
             f"Selective policy keeps in full precision: `{', '.join(r['selective_keep'])}` (head + "
             "the most sensitive block(s); sensitivity below).", "",
             f"| method | family | policy | {metric} | delta vs FP32 | weight MB | x FP32 | "
             "peak inference MB | x FP32 | peak RSS MB | latency ms (b=1) | layers quantized |",
             "|" + "---|" * 12]
    for x in r["rows"]:
        rss = f"{x['peak_rss_mb']:.0f}" if x["peak_rss_mb"] else "-"
        lines.append(f"| {x['method']} | {x['family']} | {x['policy']} | {x[metric]:.4f} | "
                     f"{x[metric] - ref[metric]:+.4f} | {x['weight_bytes'] / 1e6:.1f} | "
                     f"{x['weight_bytes'] / ref['weight_bytes']:.2f} | "
                     f"{x['peak_inference_bytes'] / 1e6:.1f} | "
                     f"{x['peak_inference_bytes'] / ref['peak_inference_bytes']:.2f} | {rss} | "
                     f"{x['latency_ms_b1']:.2f} | {x['quantized_layers']}/{x['linear_layers']} |")
    nf = r.get("nf4_reconstruction")
    if nf and nf["layers"]:
        lines += ["", f"NF4 reconstruction error on the same {nf['layers']} weight matrices (blocks of "
                  f"{nf['block']}): ours mean {nf['ours_mean']:.3e} / max {nf['ours_max']:.3e}; "
                  f"bitsandbytes mean {nf['bnb_mean']:.3e} / max {nf['bnb_max']:.3e}."]
    if r["sensitivity"]:
        lines += ["", f"Sensitivity (validation {metric} lost when only that block is absmax int4 "
                  "per channel):", "", "| block | loss |", "|---|---|"]
        lines += [f"| {b} | {v:+.4f} |" for b, v in r["sensitivity"].items()]
    lines += ["", f"![quality vs memory]({stem}-quality-memory.png)", "",
              f"![latency]({stem}-latency.png)", ""]
    return "\n".join(lines)


COLORS = {"ours": "tab:blue", "bitsandbytes": "tab:orange", "reference": "black"}


def quality_memory_plot(r: dict, path: Path) -> Path:
    metric = r["metric"]
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for x in r["rows"]:
        ax.scatter(x["weight_bytes"] / 1e6, x[metric], color=COLORS[x["family"]],
                   marker="o" if x["policy"] == "whole" else "s")
        ax.annotate(f"{x['method']} ({x['policy'][0]})", (x["weight_bytes"] / 1e6, x[metric]),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("weight memory (MB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{r['task']}: quality vs weight memory (o whole, s selective; blue ours, "
                 "orange bitsandbytes)", fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def latency_plot(r: dict, path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 0.25 * len(r["rows"]) + 1.2))
    labels = [f"{x['method']} ({x['policy']})" for x in r["rows"]]
    ax.barh(labels, [x["latency_ms_b1"] for x in r["rows"]],
            color=[COLORS[x["family"]] for x in r["rows"]])
    ax.invert_yaxis()
    ax.set_xlabel("batch-1 latency (ms, median)")
    ax.tick_params(axis="y", labelsize=7)
    return save(fig, path)


def write_study(r: dict, out: Path) -> dict[str, Path]:
    stem = f"study-{r['task']}"
    paths = write_report(out, stem, r, markdown(r, stem),
                         {"quality-memory": lambda p: quality_memory_plot(r, p),
                          "latency": lambda p: latency_plot(r, p)})
    return {**paths, "quality_png": paths["quality-memory"], "latency_png": paths["latency"]}
