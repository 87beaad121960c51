"""The comparison: every variant's report in one table, with ratios formed only within one
backend, device and thread count, agreement with the PyTorch FP32 model, and the rows that could
not be measured, each with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.labels import LABELS
from common.manifest import write_json_atomic, write_text_atomic
from evaluate.report import load_report, stem

AGREEMENT_REFERENCE = ("torch", "fp32")
# FP32 rows each backend is divided by; QLoRA runs in PyTorch, so its reference is torch/fp32.
FP32_REFS = {"torch": (("torch", "fp32"),), "ort": (("ort", "fp32"), ("ort", "fp32-fused")),
             "trt": (("trt", "fp32"),), "qlora": (("torch", "fp32"),)}


def device_key(r: dict) -> tuple:
    """What must be equal for two numbers to share a ratio: device and thread count."""
    d = r["device"]
    return (d.get("kind"), d.get("name"), r.get("threads"))


def ratio_vs(r: dict, ref: dict | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    if device_key(r) != device_key(ref):
        return {"reference": stem(ref["backend"], ref["variant"]),
                "refused": f"different device/threads ({device_key(r)} vs {device_key(ref)})"}
    return {"reference": stem(ref["backend"], ref["variant"]),
            "speedup_batch1": ref["latency_ms"]["p50"] / r["latency_ms"]["p50"],
            "throughput_ratio": r["throughput"]["examples_per_s"] / ref["throughput"]["examples_per_s"],
            "size_ratio": r["size_mb"] / ref["size_mb"],
            "delta_macro_f1_pt": 100 * (r["macro_f1"] - ref["macro_f1"])}


def agreement(r: dict, ref: dict | None, reports_dir: Path) -> dict[str, Any] | None:
    if ref is None or "logits_file" not in r or "logits_file" not in ref:
        return None
    a = np.load(reports_dir / r["logits_file"])
    b = np.load(reports_dir / ref["logits_file"])
    if a.shape != b.shape:
        return {"refused": f"different inputs ({a.shape} vs {b.shape})"}
    return {"reference": stem(*AGREEMENT_REFERENCE), "n": int(a.shape[0]),
            "top1_pct": 100 * float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max())}


def what_changed(r: dict, ref: dict | None) -> str:
    if ref is None:
        return ""
    deltas = {c: r["per_class"][c]["f1"] - ref["per_class"][c]["f1"] for c in LABELS}
    worst = sorted(deltas, key=deltas.get)[:2]  # type: ignore[arg-type]
    if all(abs(v) < 0.005 for v in deltas.values()):
        return "per-class F1 within 0.5 pt of the FP32 reference for every class"
    return "largest per-class F1 changes: " + ", ".join(f"{c} {100 * deltas[c]:+.1f} pt" for c in worst)


def _preds(r: dict, reports_dir: Path, key: str = "logits_file") -> np.ndarray | None:
    return np.load(reports_dir / r[key]).argmax(-1) if key in r else None


def build_comparison(reports: list[dict], missing: list[dict], reports_dir: Path) -> dict:
    from common.metrics import bootstrap_weights, paired_delta_ci

    by = {(r["backend"], r["variant"]): r for r in reports}
    agree_ref = by.get(AGREEMENT_REFERENCE) or by.get(("ort", "fp32"))
    # delta F1 of every row against the FP32 model's batch-1 predictions, on one set of
    # bootstrap resamples (paired: both sides scored on the same rows of each resample)
    ref_pred = _preds(agree_ref, reports_dir) if agree_ref and "labels" in agree_ref else None
    weights = bootstrap_weights(len(ref_pred)) if ref_pred is not None else None
    rows = []
    for r in reports:
        refs = [by[k] for k in FP32_REFS.get(r["backend"], ()) if k in by]
        same = [x for x in refs if device_key(x) == device_key(r)]
        # headline reference: the fastest FP32 graph of this backend on this device/threads
        head = min(same, key=lambda x: x["latency_ms"]["p50"]) if same else (refs[0] if refs else None)
        pred = _preds(r, reports_dir)
        delta = None
        if (weights is not None and ref_pred is not None and pred is not None
                and len(pred) == len(ref_pred) and "labels" in r):
            delta = {"reference": stem(*AGREEMENT_REFERENCE if agree_ref is by.get(
                AGREEMENT_REFERENCE) else ("ort", "fp32")),
                **paired_delta_ci(weights, np.asarray(r["labels"]), pred, ref_pred)}
        rows.append({
            "backend": r["backend"], "variant": r["variant"], "device": r["device"].get("name"),
            "device_kind": r["device"].get("kind"), "threads": r["threads"], "provider": r.get("provider"),
            "macro_f1": r["macro_f1"], "accuracy": r["accuracy"], "size_mb": r["size_mb"],
            "batched": r.get("batched"), "batch_invariance": r.get("batch_invariance"),
            "delta_f1": delta,
            "latency_ms": r["latency_ms"], "throughput": r["throughput"],
            "vs_fp32": ratio_vs(r, head), "vs_each_fp32": [ratio_vs(r, x) for x in refs],
            "agreement": agreement(r, agree_ref, reports_dir),
            "what_changed": what_changed(r, agree_ref if head is None else head),
            "per_class_f1": {c: r["per_class"][c]["f1"] for c in LABELS},
            "confusion_matrix": r["confusion_matrix"], "measurement": r["measurement"],
            "versions": r["versions"], "report": f"{stem(r['backend'], r['variant'])}.md",
        })
    serving = []
    for f in sorted(Path(reports_dir).glob("serve-*.json")):  # `python -m deploy bench` reports
        b = load_report(f)
        serving.append({"backend": b["backend"], "variant": b["variant"],
                        "device": b["device"].get("name"), "goals": b["goals"],
                        "recommended": b.get("recommended"), "report": f.with_suffix(".md").name})
    studies = [{"task": load_report(f)["task"], "report": f.with_suffix(".md").name}
               for f in sorted(Path(reports_dir).glob("study-*.json"))]  # `python -m study`
    speedups = []
    for f in sorted(Path(reports_dir).glob("speedup-*.json")):  # `python -m evaluate --speedup`
        sp = load_report(f)
        speedups.append({"backend": sp["backend"], "reference": sp["reference"],
                         "device": sp["device"].get("name"), "threads": sp["threads"],
                         "rows": [{k: x[k] for k in ("variant", "p50_ms", "speedup_b1", "speedup_b1_ci95",
                                                     "speedup_batched")} for x in sp["rows"]],
                         "report": f.with_suffix(".md").name})
    return {"rows": rows, "missing": missing, "serving": serving, "studies": studies,
            "speedups": speedups}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _overheads(g: dict[str, Any]) -> str:
    """1-client p50 overhead per client kind (raw: bare http.client; http/grpc: tritonclient)."""
    per = g.get("p50_overhead_ms_1_client_by_protocol") or {}
    return " / ".join(f"{v:+.2f} {p}" for p, v in per.items()) or _fmt(
        g.get("p50_overhead_ms_1_client"), "+.2f")


def _ci(d: dict | None) -> str:
    if not d:
        return "-"
    lo, hi = d["ci95"]
    return f"{100 * d['delta']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]" + (" *" if d["distinguishable"] else "")


def _invariant(r: dict) -> str:
    inv = r.get("batch_invariance")
    return "-" if not inv else ("yes" if inv["batch_invariant"] else f"no ({inv['differ']} differ)")


def comparison_markdown(c: dict) -> str:
    out = ["# Comparison", "",
           "Macro F1 is scored at batch 1 (every test sentence on its own, as a per-request "
           "deployment answers); the batched F1 (batches of 32, padded) stands beside it, and "
           "`batch-invariant` says whether any prediction differs between the two (dynamic INT8 "
           "takes activation ranges per batch). delta F1: against the PyTorch FP32 model's batch-1 "
           "predictions, with a paired bootstrap 95% interval (the same 2,000 resamples of the test "
           "rows for every row); `*` marks a delta whose interval excludes zero. Ratios compare a "
           "variant with the fastest FP32 graph of its own backend (QLoRA: the PyTorch FP32 model) "
           "measured on the same device with the same threads (named in `vs`); other pairs are "
           "refused. QLoRA's size is its adapter files; its in-memory NF4 weight bytes are in "
           "its report (`weight_memory`). Agreement: top-1 agreement and max |delta logit| against "
           "the PyTorch FP32 model on the same test inputs.",
           "",
           "| variant | backend | device | threads | macro F1 (b=1) | delta F1 pt [95% CI] | "
           "macro F1 (batched) | batch-invariant | accuracy | size MB | p50 ms (b=1) | "
           "p95 ms (b=1) | throughput ex/s (batch) | vs | speed-up b=1 | size ratio | "
           "top-1 agree % | max abs dlogit |",
           "|" + "---|" * 18]
    for r in c["rows"]:
        v, a = r["vs_fp32"] or {}, r["agreement"] or {}
        batched = r.get("batched") or {}
        out.append(
            f"| {r['variant']} | {r['backend']} | {r['device']} | {r['threads']} | {r['macro_f1']:.4f} | "
            f"{_ci(r.get('delta_f1'))} | {_fmt(batched.get('macro_f1'), '.4f')} | {_invariant(r)} | "
            f"{r['accuracy']:.4f} | {r['size_mb']:.1f} | {r['latency_ms']['p50']:.2f} | "
            f"{r['latency_ms']['p95']:.2f} | {r['throughput']['examples_per_s']:.0f} ({r['throughput']['batch_size']}) | "
            f"{v.get('reference', '-')} | {_fmt(v.get('speedup_batch1'), '.2f')} | "
            f"{_fmt(v.get('size_ratio'), '.2f')} | "
            f"{_fmt(a.get('top1_pct'), '.2f')} | {_fmt(a.get('max_abs_logit_diff'), '.3f')} |")
    if c["missing"]:
        out += ["", "## Not measured", "", "| variant | backend | why |", "|---|---|---|"]
        out += [f"| {m['variant']} | {m['backend']} | {m['reason']} |" for m in c["missing"]]
    if c.get("serving"):
        out += ["", "## Serving on Triton (`python -m deploy bench`)", "",
                "| variant | backend | device | failed / requests | recommended server | req/s at 16 "
                "clients | server CPU / in-process | 1-client p50 overhead ms (per client) | top-1 agreement % | "
                "report |", "|" + "---|" * 10]
        for sv in c["serving"]:
            g = sv["goals"]
            out.append(f"| {sv['variant']} | {sv['backend']} | {sv['device']} | {g['failed_total']} / "
                       f"{g['requests_total']} | {g.get('recommended', '-')} | "
                       f"{_fmt(g.get('throughput_rps_16'), '.0f')} | "
                       f"{_fmt(g.get('server_cpu_over_in_process_max'), '.2f')} | "
                       f"{_overheads(g)} | "
                       f"{_fmt(g.get('agreement_top1_pct'), '.2f')} | [{sv['report']}]({sv['report']}) |")
    for sp in c.get("speedups", []):
        out += ["", f"## Interleaved speed-up, {sp['backend']} (`python -m evaluate --speedup`)", "",
                f"{sp['device']}, {sp['threads']} threads; every variant timed in the same rounds, "
                f"ratios vs `{sp['reference']}` with bootstrap 95% intervals: "
                f"[{sp['report']}]({sp['report']}). Read these ratios before the sequential ones above.",
                "", "| variant | p50 ms (b=1) | speed-up b=1 | 95% interval | speed-up batched |",
                "|---|---|---|---|---|"]
        out += [f"| {x['variant']} | {x['p50_ms']:.2f} | {x['speedup_b1']:.2f} | "
                f"{x['speedup_b1_ci95'][0]:.2f}-{x['speedup_b1_ci95'][1]:.2f} | {x['speedup_batched']:.2f} |"
                for x in sp["rows"]]
    if c.get("studies"):
        out += ["", "## Quantization study (`python -m study`)", "", "| task | report |", "|---|---|"]
        out += [f"| {st['task']} | [{st['report']}]({st['report']}) |" for st in c["studies"]]
    out += ["", "## Per-class F1", "", "| variant | backend | " + " | ".join(LABELS) + " | what changed |",
            "|" + "---|" * (len(LABELS) + 3)]
    for r in c["rows"]:
        out.append(f"| {r['variant']} | {r['backend']} | " +
                   " | ".join(f"{r['per_class_f1'][x]:.3f}" for x in LABELS) + f" | {r['what_changed']} |")
    out += ["", "## How each row was measured", ""]
    for r in c["rows"]:
        m = r["measurement"]
        vers = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))
        out.append(f"- **{r['backend']}/{r['variant']}**: {r['provider']} on {r['device']}, {r['threads']} "
                   f"threads; batch 1: {m['batch1']}; batched: {m['batched']}; max length "
                   f"{m['max_length']}; {vers}. Details: [{r['report']}]({r['report']})")
    out += ["", "![confusion matrices](comparison-confusion.png)", "",
            "![per-class F1](comparison-per-class-f1.png)", "",
            "![macro F1 vs latency](comparison-f1-vs-latency.png)", ""]
    return "\n".join(out)


def write_comparison(reports_dir: Path, missing: list[dict],
                     report_files: list[Path] | None = None) -> dict[str, Path]:
    """Compare `report_files` (default: every variant report in reports_dir)."""
    from evaluate import plots

    reports_dir = Path(reports_dir)
    if report_files is None:
        report_files = [p for p in sorted(reports_dir.glob("*.json"))
                        if not p.name.startswith(("comparison", "serve-", "study-", "speedup-",
                                                  "ptq-search", "baseline-"))]
    reports = [load_report(p) for p in report_files]
    c = build_comparison(reports, missing, reports_dir)
    paths = {"json": reports_dir / "comparison.json", "md": reports_dir / "comparison.md",
             "confusion": reports_dir / "comparison-confusion.png",
             "per_class": reports_dir / "comparison-per-class-f1.png",
             "scatter": reports_dir / "comparison-f1-vs-latency.png"}
    write_json_atomic(paths["json"], c)
    write_text_atomic(paths["md"], comparison_markdown(c))
    if c["rows"]:
        plots.confusion_grid(c["rows"], paths["confusion"])
        plots.per_class_bars(c["rows"], paths["per_class"])
        plots.f1_vs_latency(c["rows"], paths["scatter"])
    return paths


RESULTS_START = "<!-- results:start (generated by `make readme-results`; do not edit by hand) -->"
RESULTS_END = "<!-- results:end -->"


def readme_table(c: dict) -> str:
    """The compact results table of the README: one line per measured row. Speed-ups come from
    the interleaved benchmark where it measured the row (drift-free), else the sequential runs."""
    inter = {(sp["backend"], x["variant"]): (x, sp["reference"]) for sp in c.get("speedups", [])
             for x in sp["rows"]}
    lines = ["| variant | macro F1 (b=1) | delta F1 pt [95% CI] | batch-invariant | size ratio | "
             "speed-up b=1 [95% CI] (vs) |", "|---|---|---|---|---|---|"]
    for r in c["rows"]:
        v = r["vs_fp32"] or {}
        if (r["backend"], r["variant"]) in inter:
            x, ref = inter[(r["backend"], r["variant"])]
            lo, hi = x["speedup_b1_ci95"]
            speed = f"{x['speedup_b1']:.2f} [{lo:.2f}, {hi:.2f}] ({r['backend']}-{ref}, interleaved)"
        else:
            speed = f"{_fmt(v.get('speedup_batch1'), '.2f')} ({v.get('reference', '-')})"
        lines.append(f"| {r['backend']}/{r['variant']} | {r['macro_f1']:.4f} | {_ci(r.get('delta_f1'))} | "
                     f"{_invariant(r)} | {_fmt(v.get('size_ratio'), '.2f')} | {speed} |")
    return "\n".join(lines)


PUBLISHED = "published.txt"  # what the last publish copied (so the next one replaces only that)


def publish(reports_dir: Path, results_dir: Path) -> list[Path]:
    """Copy the comparison and the reports it links (Markdown and PNG only; no logits, no JSON
    dumps) into a committed folder, so the README's links work on a fresh clone."""
    import shutil

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    # Only what the previous publish copied is replaced: other committed results (the baseline
    # seed study, written by `python -m train.seeds`) live in the same folder.
    listing = results_dir / PUBLISHED
    if listing.is_file():
        for name in listing.read_text(encoding="utf-8").split():
            (results_dir / Path(name).name).unlink(missing_ok=True)
    copied = []
    for f in sorted(Path(reports_dir).iterdir()):
        if f.suffix in {".md", ".png"}:
            copied.append(Path(shutil.copy2(f, results_dir / f.name)))
    listing.write_text("".join(f"{p.name}\n" for p in copied), encoding="utf-8")
    return copied


def update_readme(readme: Path, comparison_md: Path, results_dir: Path) -> None:
    """Publish reports/ into results_dir and replace the README's Results block with the compact
    table, linking the full comparison there (paths relative to the README)."""
    import json

    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if RESULTS_START not in text or RESULTS_END not in text:
        raise ValueError(f"{readme} has no results markers ({RESULTS_START} ... {RESULTS_END})")
    reports_dir = Path(comparison_md).parent
    publish(reports_dir, results_dir)
    c = json.loads((reports_dir / "comparison.json").read_text(encoding="utf-8"))
    rel = Path(results_dir).resolve().relative_to(readme.resolve().parent).as_posix()
    dev = sorted({f"{r['device']} ({r['threads']} threads)" for r in c["rows"]})
    body = "\n".join([
        f"Measured on {', '.join(dev)}; every number, its interval and how it was measured: "
        f"[{rel}/comparison.md]({rel}/comparison.md). `*`: the interval excludes zero.", "",
        readme_table(c), "", f"![macro F1 vs latency]({rel}/comparison-f1-vs-latency.png)"])
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    from common.manifest import write_text_atomic

    write_text_atomic(readme, f"{head}{RESULTS_START}\n{body}\n{RESULTS_END}{tail}")
