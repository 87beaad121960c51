"""The comparison: every current variant report in one table, with ratios formed only within one
backend, device and thread count, agreement with the PyTorch FP32 model, the rows that could not
be measured, each with its reason, and the reports that are stale.

A report is compared only when the artifact it measured is the one the manifest says is current
(same sha256 and key: recipe, inputs and the code's fingerprint) and one a build would not remake
because its code changed since (the rule `--dry-run` applies); any other is listed as stale,
with its reason and the fix (`make report`), and its numbers are left out. Publishing (the README's
Results block and docs/results/) copies exactly what the comparison lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.classes import largest_changes, names_of
from common.manifest import Manifest, write_json_atomic, write_text_atomic
from common.reports import md_table
from evaluate.report import load_report, stem

AGREEMENT_REFERENCE = ("torch", "fp32")
FIX = "make report"
# report families besides the variant reports: file prefix -> kind
OTHER_REPORTS = {"serve-": "serving", "study-": "study", "speedup-": "speedup", "ops-": "ops",
                 "saturation-": "saturation"}
NOT_REPORTS = ("comparison", "ptq-search", "baseline-", "build-record")


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
    return {"reference": stem(ref["backend"], ref["variant"]), "n": int(a.shape[0]),
            "top1_pct": 100 * float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max())}


def what_changed(r: dict, ref: dict | None) -> str:
    if ref is None:
        return ""
    deltas = {c: r["per_class"][c]["f1"] - ref["per_class"][c]["f1"] for c in r["per_class"]
              if c in ref["per_class"]}
    worst = sorted(deltas, key=deltas.get)[:2]  # type: ignore[arg-type]
    if all(abs(v) < 0.005 for v in deltas.values()):
        return "per-class F1 within 0.5 pt of the FP32 reference for every class"
    return "largest per-class F1 changes: " + ", ".join(f"{c} {100 * deltas[c]:+.1f} pt" for c in worst)


def _preds(r: dict, reports_dir: Path, key: str = "logits_file") -> np.ndarray | None:
    return np.load(reports_dir / r[key]).argmax(-1) if key in r else None


def report_files(reports_dir: Path) -> dict[str, list[Path]]:
    """The JSON reports of a folder by kind: "variant" or one of OTHER_REPORTS' kinds."""
    out: dict[str, list[Path]] = {"variant": [], **{k: [] for k in OTHER_REPORTS.values()}}
    for p in sorted(Path(reports_dir).glob("*.json")):
        if p.name.startswith(NOT_REPORTS):
            continue
        kind = next((k for pre, k in OTHER_REPORTS.items() if p.name.startswith(pre)), "variant")
        out[kind].append(p)
    return out


def why_stale(report: Any, man: Manifest, kind: str,
              code: dict[str, str] | None = None) -> str | None:
    """None when every artifact the report measured is the manifest's current one and a build
    would not remake it (`code`: engines.freshness.code_stale, the rule of `--dry-run`)."""
    code = code or {}

    def fresh(m: Any) -> str | None:
        why = man.freshness(m)
        name = m.get("artifact") if isinstance(m, dict) else None
        if why is None and name in code:
            return f"{name} would be rebuilt: {code[name]} (`python -m engines --dry-run`)"
        return why

    if not isinstance(report, dict):
        return "not a report (no JSON object)"
    if kind == "study" and report.get("task") != "classifier":
        return None  # a language-model study reads no artifact
    made = report.get("made_by")
    if kind in ("speedup", "ops", "saturation"):  # one artifact per variant
        if not isinstance(made, dict) or not made:
            return "it records no artifact hashes (written by older code)"
        for variant, m in made.items():
            why = fresh(m)
            if why:
                return f"{variant}: {why}"
        return None
    return fresh(made)


def logits_problem(r: dict, folder: Path) -> str | None:
    """None when the report's logits files are there and are the ones written with it."""
    from common.manifest import sha256_of

    for key in ("logits", "batched_logits"):
        name, want = r.get(f"{key}_file"), r.get(f"{key}_sha256")
        if name is None or want is None:
            return f"it records no {key} file and hash (written by older code)"
        f = Path(folder) / name
        if not f.is_file():
            return f"its {key} file {name} is missing"
        if sha256_of(f) != want:
            return f"its {key} file {name} was rewritten since (another run's)"
    return None


def load_current(reports_dir: Path, man: Manifest, files: list[Path] | None = None
                 ) -> tuple[dict[str, list[tuple[Path, dict]]], list[dict[str, str]]]:
    """The reports whose artifacts are current, by kind, and the stale ones with why."""
    found = report_files(reports_dir)
    if files is not None:
        found["variant"] = list(files)
    from engines.freshness import code_stale

    current: dict[str, list[tuple[Path, dict]]] = {k: [] for k in found}
    stale = []
    code = code_stale(man)
    for kind, paths in found.items():
        for p in paths:
            try:
                r = load_report(p)
            except (OSError, ValueError) as exc:
                stale.append({"report": p.name, "why": f"unreadable ({type(exc).__name__})",
                              "fix": FIX})
                continue
            why = why_stale(r, man, kind, code) or (
                logits_problem(r, p.parent) if kind == "variant" else None)
            if why:
                stale.append({"report": p.name, "why": why, "fix": FIX})
            else:
                current[kind].append((p, r))
    return current, stale


def same_rows(found: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """The reports scored on the same test rows as the FP32 reference (else the most common rows),
    and the others as stale: a delta or ratio between different rows means nothing."""
    from collections import Counter

    def rows_of(r: dict) -> Any:
        return (r.get("data_fingerprint"), r.get("split"), r.get("n_examples"))

    if not found:
        return found, []
    ref = next((r for _, r in found if (r["backend"], r["variant"]) == AGREEMENT_REFERENCE), None)
    want = rows_of(ref) if ref else Counter(rows_of(r) for _, r in found).most_common(1)[0][0]
    keep = [(p, r) for p, r in found if rows_of(r) == want]
    other = [{"report": p.name, "why": f"scored on other rows ({r.get('n_examples')} of split "
              f"{r.get('split')}, {str(r.get('data_fingerprint'))[:12]}) than the reference",
              "fix": FIX} for p, r in found if rows_of(r) != want]
    return keep, other


def build_comparison(reports: list[dict], missing: list[dict], reports_dir: Path,
                     others: dict[str, list[tuple[Path, dict]]] | None = None,
                     stale: list[dict] | None = None) -> dict:
    from common.metrics import bootstrap_weights, paired_delta_ci
    from common.variants import fp32_references

    others = others or {}
    by = {(r["backend"], r["variant"]): r for r in reports}
    agree_ref = by.get(AGREEMENT_REFERENCE) or by.get(("ort", "fp32"))
    # delta F1 of every row against the FP32 model's batch-1 predictions, on one set of
    # bootstrap resamples (paired: both sides scored on the same rows of each resample)
    ref_pred = _preds(agree_ref, reports_dir) if agree_ref and "labels" in agree_ref else None
    weights = bootstrap_weights(len(ref_pred)) if ref_pred is not None else None
    ref_name = stem(*AGREEMENT_REFERENCE) if agree_ref is by.get(AGREEMENT_REFERENCE) else "ort-fp32"
    rows = []
    for r in reports:
        refs = [by[k] for k in fp32_references(r["backend"]) if k in by]
        same = [x for x in refs if device_key(x) == device_key(r)]
        # headline reference: the fastest FP32 graph of this backend on this device/threads
        head = min(same, key=lambda x: x["latency_ms"]["p50"]) if same else (refs[0] if refs else None)
        pred = _preds(r, reports_dir)
        delta = None
        if (weights is not None and ref_pred is not None and pred is not None
                and len(pred) == len(ref_pred) and "labels" in r):
            delta = {"reference": ref_name,
                     **paired_delta_ci(weights, np.asarray(r["labels"]), pred, ref_pred)}
        ref_pc = agree_ref if head is None else head
        rows.append({
            "backend": r["backend"], "variant": r["variant"], "device": r["device"].get("name"),
            "device_kind": r["device"].get("kind"), "threads": r["threads"], "provider": r.get("provider"),
            "macro_f1": r["macro_f1"], "accuracy": r["accuracy"], "size_mb": r["size_mb"],
            "weights_in_memory_mb": r.get("weights_in_memory_mb"),
            "batched": r.get("batched"), "batch_invariance": r.get("batch_invariance"),
            "delta_f1": delta,
            "latency_ms": r["latency_ms"], "throughput": r["throughput"],
            "cold_first_calls_ms": r.get("cold_first_calls_ms"),
            "vs_fp32": ratio_vs(r, head), "vs_each_fp32": [ratio_vs(r, x) for x in refs],
            "agreement": agreement(r, agree_ref, reports_dir),
            "what_changed": what_changed(r, ref_pc),
            "per_class_f1": {c: r["per_class"][c]["f1"] for c in names_of(r)},
            "per_class_delta_pt": None if agree_ref is None else {
                c: 100 * (r["per_class"][c]["f1"] - agree_ref["per_class"][c]["f1"])
                for c in names_of(r)},
            "confusion_matrix": r["confusion_matrix"], "measurement": r["measurement"],
            "versions": r["versions"], "made_by": {k: r["made_by"].get(k) for k in
                                                   ("artifact", "sha256", "key", "code")},
            "report": f"{stem(r['backend'], r['variant'])}.md",
        })
    serving = []
    for f, b in others.get("serving", []):  # `python -m deploy bench` reports
        serving.append({"backend": b["backend"], "variant": b["variant"],
                        "device": b["device"].get("name"), "goals": b["goals"],
                        "recommended": b.get("recommended"), "report": f.with_suffix(".md").name,
                        "figure": f.with_suffix(".png").name})
    studies = [{"task": st["task"], "report": f.with_suffix(".md").name,
                "figures": [p.name for p in sorted(f.parent.glob(f"{f.stem}-*.png"))]}
               for f, st in others.get("study", [])]
    speedups = []
    for f, sp in others.get("speedup", []):  # `python -m evaluate --speedup`
        speedups.append({"backend": sp["backend"], "reference": sp["reference"],
                         "device": sp["device"].get("name"), "threads": sp["threads"],
                         "rows": [{k: x[k] for k in ("variant", "p50_ms", "speedup_b1", "speedup_b1_ci95",
                                                     "speedup_batched")} for x in sp["rows"]],
                         "report": f.with_suffix(".md").name, "figure": f.with_suffix(".png").name})
    profiles = [{"backend": op["backend"], "device": op["device"].get("name"),
                 "threads": op["threads"], "variants": [x["variant"] for x in op["rows"]],
                 "report": f.with_suffix(".md").name, "figure": f.with_suffix(".png").name}
                for f, op in others.get("ops", [])]  # `python -m evaluate --profile-ops`
    saturation = [{"backend": sa["backend"], "device": sa["device"].get("name"),
                   "rows": [{k: x[k] for k in ("variant", "predictions_differ", "max_abs_dlogit")}
                            for x in sa["rows"] if "skipped" not in x],
                   "not_checked": [x["variant"] for x in sa["rows"] if "skipped" in x],
                   "report": f.with_suffix(".md").name}
                  for f, sa in others.get("saturation", [])]  # `python -m evaluate --saturation`
    first = agree_ref or (reports[0] if reports else None)
    return {"rows": rows, "labels": names_of(first) if first else [],
            "task": first.get("task") if first else None,
            "missing": missing, "stale": stale or [], "serving": serving,
            "studies": studies, "speedups": speedups, "profiles": profiles,
            "saturation": saturation, "reference": ref_name}


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


FIGURES = {"headline": "comparison-f1-vs-speedup.png", "per_class": "comparison-per-class-delta.png"}


def comparison_markdown(c: dict) -> str:
    from evaluate.report import task_lines

    out = ["# Comparison", "", *task_lines({"task": c.get("task")}),
           *([""] if c.get("task") else []),
           "Macro F1 is scored at batch 1 (every test sentence on its own, as a per-request "
           "deployment answers); the batched F1 (batches of 32, padded) stands beside it, and "
           "`batch-invariant` says whether any prediction differs between the two (dynamic INT8 "
           "takes activation ranges per batch). delta F1: against the PyTorch FP32 model's batch-1 "
           "predictions, with a paired bootstrap 95% interval (the same 2,000 resamples of the test "
           "rows for every row); `*` marks a delta whose interval excludes zero, every other delta "
           "is a tie with FP32. Latency and throughput are warm: every distinct input shape ran "
           "once before the timed pass (those first calls are in each report). The sequential "
           "ratios below compare a variant with the fastest FP32 graph of its own backend, timed "
           "minutes apart; the interleaved speed-ups further down are the ones to read. Size: "
           "what the variant ships and loads (QLoRA: its adapters and the whole base it "
           "re-quantizes); in memory: its weights' bytes once loaded. Only reports of the artifacts "
           "the manifest holds now are listed.",
           "",
           "| variant | backend | device | threads | macro F1 (b=1) | delta F1 pt [95% CI] | "
           "macro F1 (batched) | batch-invariant | accuracy | size MB | weights in memory MB | "
           "p50 ms (b=1) | p95 ms (b=1) | throughput ex/s (batch) | vs | speed-up b=1 | size ratio | "
           "top-1 agree % | max abs dlogit |",
           "|" + "---|" * 19]
    for r in c["rows"]:
        v, a = r["vs_fp32"] or {}, r["agreement"] or {}
        batched = r.get("batched") or {}
        out.append(
            f"| {r['variant']} | {r['backend']} | {r['device']} | {r['threads']} | {r['macro_f1']:.4f} | "
            f"{_ci(r.get('delta_f1'))} | {_fmt(batched.get('macro_f1'), '.4f')} | {_invariant(r)} | "
            f"{r['accuracy']:.4f} | {r['size_mb']:.1f} | {_fmt(r.get('weights_in_memory_mb'), '.1f')} | "
            f"{r['latency_ms']['p50']:.2f} | "
            f"{r['latency_ms']['p95']:.2f} | {r['throughput']['examples_per_s']:.0f} ({r['throughput']['batch_size']}) | "
            f"{v.get('reference', '-')} | {_fmt(v.get('speedup_batch1'), '.2f')} | "
            f"{_fmt(v.get('size_ratio'), '.2f')} | "
            f"{_fmt(a.get('top1_pct'), '.2f')} | {_fmt(a.get('max_abs_logit_diff'), '.3f')} |")
    if c["missing"]:
        out += ["", "## Not measured", ""]
        out += md_table(["variant", "backend", "why"],
                        ([m["variant"], m["backend"], m["reason"]] for m in c["missing"]))
    if c.get("stale"):
        out += ["", "## Stale reports (left out)", "",
                "Each measured an artifact that is no longer the current one; rerun the fix to "
                "measure the current build.", ""]
        out += md_table(["report", "why", "fix"],
                        ([s["report"], s["why"], f"`{s['fix']}`"] for s in c["stale"]))
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
                f"[{sp['report']}]({sp['report']}).",
                "", "| variant | p50 ms (b=1) | speed-up b=1 | 95% interval | speed-up batched |",
                "|---|---|---|---|---|"]
        out += [f"| {x['variant']} | {x['p50_ms']:.2f} | {x['speedup_b1']:.2f} | "
                f"{x['speedup_b1_ci95'][0]:.2f}-{x['speedup_b1_ci95'][1]:.2f} | {x['speedup_batched']:.2f} |"
                for x in sp["rows"]]
    for op in c.get("profiles", []):
        out += ["", f"Where the time goes ({op['backend']} op profile, {op['device']}, "
                f"{op['threads']} threads, batch 1: {', '.join(op['variants'])}): "
                f"[{op['report']}]({op['report']})."]
    for sa in c.get("saturation", []):
        out += ["", f"Does the answer depend on the CPU ({sa['backend']}, {sa['device']}: answers "
                "that differ from exact INT8 sums, where U8S8 products saturate without VNNI): "
                + ", ".join(f"{x['variant']} {x['predictions_differ']}" for x in sa["rows"])
                + "".join(f"; {v} not checked (its weights are already U8)"
                          for v in sa.get("not_checked", []))
                + f": [{sa['report']}]({sa['report']})."]
    if c.get("studies"):
        out += ["", "## Quantization study (`python -m study`)", ""]
        out += md_table(["task", "report"], ([st["task"], f"[{st['report']}]({st['report']})"]
                                             for st in c["studies"]))
    names = c.get("labels") or []
    shown = largest_changes(c["rows"], "per_class_delta_pt", names)
    which = ("" if len(shown) == len(names) else
             f" (the {len(shown)} of {len(names)} classes whose F1 changes most against "
             f"{c['reference']}; every class is in comparison.json)")
    out += ["", f"## Per-class F1{which}", "",
            "| variant | backend | " + " | ".join(shown) + " | what changed |",
            "|" + "---|" * (len(shown) + 3)]
    for r in c["rows"]:
        out.append(f"| {r['variant']} | {r['backend']} | " +
                   " | ".join(f"{r['per_class_f1'][x]:.3f}" for x in shown) + f" | {r['what_changed']} |")
    out += ["", "## How each row was measured", ""]
    for r in c["rows"]:
        m = r["measurement"]
        vers = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))
        out.append(f"- **{r['backend']}/{r['variant']}**: {r['provider']} on {r['device']}, {r['threads']} "
                   f"threads; batch 1: {m['batch1']}; batched: {m['batched']}; max length "
                   f"{m['max_length']}; artifact {r['made_by']['artifact']} sha256 "
                   f"{str(r['made_by']['sha256'])[:12]}; {vers}. Details: [{r['report']}]({r['report']})")
    out += ["", f"![macro F1 delta vs interleaved speed-up]({FIGURES['headline']})", "",
            f"![per-class F1 delta]({FIGURES['per_class']})", ""]
    return "\n".join(out)


def write_comparison(reports_dir: Path, missing: list[dict],
                     report_paths: list[Path] | None = None,
                     artifacts: Path = Path("artifacts")) -> dict[str, Path]:
    """Compare the current reports of reports_dir (`report_paths`: these variant reports only)
    against the manifest in `artifacts`."""
    from evaluate import plots

    reports_dir = Path(reports_dir)
    current, stale = load_current(reports_dir, Manifest(Path(artifacts)), report_paths)
    current["variant"], other_rows = same_rows(current["variant"])
    stale += other_rows
    c = build_comparison([r for _, r in current["variant"]], missing, reports_dir, current, stale)
    paths = {"json": reports_dir / "comparison.json", "md": reports_dir / "comparison.md",
             "headline": reports_dir / FIGURES["headline"],
             "per_class": reports_dir / FIGURES["per_class"]}
    write_json_atomic(paths["json"], c)
    write_text_atomic(paths["md"], comparison_markdown(c))
    if c["rows"]:
        plots.f1_delta_vs_speedup(c, paths["headline"])
        plots.per_class_delta(c["rows"], c["reference"], c["labels"], paths["per_class"])
    for s in stale:
        print(f"stale: {s['report']} ({s['why']}); left out - run `{s['fix']}`")
    return paths


RESULTS_START = "<!-- results:start (generated by `make readme-results`; do not edit by hand) -->"
RESULTS_END = "<!-- results:end -->"


def interleaved(c: dict) -> dict[tuple[str, str], tuple[dict, str]]:
    """(backend, variant) -> (its interleaved speed-up row, the run's reference)."""
    return {(sp["backend"], x["variant"]): (x, sp["reference"]) for sp in c.get("speedups", [])
            for x in sp["rows"]}


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def readme_table(c: dict) -> str:
    """The README's results table, on one speed-up basis: the interleaved ONNX Runtime run
    (absolute batch-1 ms and the ratio to its reference, with intervals). Rows of other backends
    show their own interleaved run's numbers below the table, never in the same column."""
    inter = interleaved(c)
    ort_ref = next((sp["reference"] for sp in c.get("speedups", []) if sp["backend"] == "ort"), None)
    lines = ["| variant | macro F1 (b=1) | delta F1 pt [95% CI] | batch-invariant | size MB (ratio) | "
             f"p50 ms b=1 | speed-up b=1 vs ort/{ort_ref or '-'} [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        v = r["vs_fp32"] or {}
        x = inter.get((r["backend"], r["variant"])) if r["backend"] == "ort" else None
        if x is not None:
            row, _ = x
            lo, hi = row["speedup_b1_ci95"]
            ms, speed = f"{row['p50_ms']:.2f}", f"{row['speedup_b1']:.2f} [{lo:.2f}, {hi:.2f}]"
        else:
            ms, speed = "-", "-"
        size = f"{r['size_mb']:.1f} ({_fmt(v.get('size_ratio'), '.2f')})"
        lines.append(f"| {r['backend']}/{r['variant']} | {r['macro_f1']:.4f} | {_ci(r.get('delta_f1'))} | "
                     f"{_invariant(r)} | {size} | {ms} | {speed} |")
    return "\n".join(lines)


def readme_notes(c: dict) -> list[str]:
    """Generated sentences under the table: other backends' interleaved runs, and which speed-ups
    tie (overlapping intervals) with the fastest quantized ONNX Runtime graph."""
    notes = []
    for sp in c.get("speedups", []):
        if sp["backend"] == "ort":
            quant = [x for x in sp["rows"] if "fp32" not in x["variant"]]
            if quant:
                best = max(quant, key=lambda x: x["speedup_b1"])
                ties = [x["variant"] for x in quant if x is not best
                        and _overlaps(x["speedup_b1_ci95"], best["speedup_b1_ci95"])]
                notes.append(f"Fastest INT8 graph at batch 1 in this run: ort/{best['variant']} "
                             f"({best['speedup_b1']:.2f}x)" + (
                                 f"; its interval overlaps {', '.join('ort/' + t for t in ties)}, "
                                 "so those tie with it." if ties else ", ahead of every other "
                                 "INT8 graph (no interval overlaps)."))
        else:
            notes.append(f"{sp['backend']} rows in their own interleaved run vs "
                         f"{sp['backend']}/{sp['reference']}: " + "; ".join(
                             f"{x['variant']} {x['p50_ms']:.2f} ms, {x['speedup_b1']:.2f}x "
                             f"[{x['speedup_b1_ci95'][0]:.2f}, {x['speedup_b1_ci95'][1]:.2f}]"
                             for x in sp["rows"]) + ".")
    ties = [f"{r['backend']}/{r['variant']}" for r in c["rows"]
            if r.get("delta_f1") and not r["delta_f1"]["distinguishable"]
            and (r["backend"], r["variant"]) != AGREEMENT_REFERENCE]
    if ties:
        notes.append("Macro F1 ties with FP32 (interval includes zero): " + ", ".join(ties) + ".")
    return notes


PUBLISHED = "published.txt"  # what the last publish copied (so the next one replaces only that)


def published_files(c: dict, reports_dir: Path) -> list[Path]:
    """Exactly what the comparison lists: itself, its figures, and each listed report's Markdown
    and figures."""
    names = ["comparison.md", "comparison.json", *FIGURES.values()]
    for r in c["rows"]:
        s = Path(r["report"]).stem
        names += [f"{s}.md", f"{s}-confusion.png"]
    for kind in ("serving", "speedups", "profiles", "saturation"):
        for x in c.get(kind, []):
            names += [x["report"], *([x["figure"]] if "figure" in x else [])]
    for st in c.get("studies", []):
        names += [st["report"], *st["figures"]]
    return [Path(reports_dir) / n for n in dict.fromkeys(names) if (Path(reports_dir) / n).is_file()]


def publish(reports_dir: Path, results_dir: Path, artifacts: Path | None = None) -> list[Path]:
    """Copy what the comparison lists (and the build record) into a committed folder, so the
    README's links work on a fresh clone."""
    import json
    import shutil

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    # Only what the previous publish copied is replaced: other committed results (the baseline
    # seed study, written by `python -m train.seeds`) live in the same folder.
    listing = results_dir / PUBLISHED
    if listing.is_file():
        for name in listing.read_text(encoding="utf-8").split():
            (results_dir / Path(name).name).unlink(missing_ok=True)
    c = json.loads((Path(reports_dir) / "comparison.json").read_text(encoding="utf-8"))
    copied = [Path(shutil.copy2(f, results_dir / f.name)) for f in published_files(c, reports_dir)]
    if artifacts is not None:
        from evaluate.build_record import write_build_record

        copied += write_build_record(Path(artifacts), results_dir)
    listing.write_text("".join(f"{p.name}\n" for p in copied), encoding="utf-8")
    return copied


def update_readme(readme: Path, comparison_md: Path, results_dir: Path,
                  artifacts: Path | None = None) -> None:
    """Publish what the comparison lists into results_dir and replace the README's Results block
    with the table, linking the full comparison there (paths relative to the README)."""
    import json

    from common.reports import replace_block

    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    replace_block(text, "results", "")  # no markers: refused before anything is published
    reports_dir = Path(comparison_md).parent
    publish(reports_dir, results_dir, artifacts)
    c = json.loads((reports_dir / "comparison.json").read_text(encoding="utf-8"))
    rel = Path(results_dir).resolve().relative_to(readme.resolve().parent).as_posix()
    dev = sorted({f"{r['device']} ({r['threads']} threads)" for r in c["rows"]})
    body = [f"Measured on {', '.join(dev) or '-'}; every number, its interval and how it was "
            f"measured: [{rel}/comparison.md]({rel}/comparison.md) (machine-readable: "
            f"[{rel}/comparison.json]({rel}/comparison.json)). `*`: the interval excludes zero.",
            "", readme_table(c), ""]
    body += [f"- {n}" for n in readme_notes(c)]
    if c.get("stale"):
        body += [f"- Left out as stale ({len(c['stale'])} reports): rerun `{FIX}`."]
    body += ["", f"![macro F1 delta vs interleaved speed-up]({rel}/{FIGURES['headline']})"]
    write_text_atomic(readme, replace_block(text, "results", "\n".join(body)))
