"""`make gpu-check` / `python -m evaluate --gpu-check`: every GPU row of the variant registry
(`gpu_row`) this machine can score, into reports/gpu/, one line per row it cannot, saying why. On
a machine without a CUDA GPU: one line saying so, and nothing else.

Each row runs in its own process (`python -m evaluate --variant ROW --device cuda`, its output in
reports/gpu/logs/ROW.log), so a device-side assert, an illegal address, an out-of-memory kill or a
native crash in bitsandbytes or TensorRT ends that row only; a row with no answer after
`--gpu-check-row-timeout-s` is killed. Whatever happens, the table (gpu-check.md) and its JSON are
rewritten as each row ends, so a run cut off loses nothing already measured.

Every scored row is checked against torch/fp32 scored on the same GPU and the same rows (and the
CUDA-graph rows also against eager FP16): top-1 agreement, max |delta logit| and the macro F1
delta with its paired bootstrap interval. A row whose agreement falls below its precision's bound
(AGREEMENT_BOUND_PCT) is marked failed, not published as a result. The exit code is 1 when any
row failed (a skipped row is not a failure)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import doc
from common.variants import Precision

# Lowest top-1 agreement with torch/fp32 (same GPU, same rows) a row may have and be published.
# From the CPU rows of the published comparison: FP32 graphs agree 100%, the INT8 graphs
# 95.95-99.45%, NF4 96.15%; FP16 rounds less than INT8 does. A row below its bound is a broken
# engine or kernel, not a precision trade-off.
AGREEMENT_BOUND_PCT = {Precision.FP32: 99.5, Precision.FP16: 99.0, Precision.INT8: 95.0,
                       Precision.NF4: 95.0}
REFERENCE = "torch/fp32"
# rows also checked against eager FP16 (what CUDA graphs replay must equal)
ALSO_AGAINST = {"torch/fp16-graphs": "torch/fp16"}


@dataclass(frozen=True)
class GpuCheckConfig:
    row_timeout_s: int = doc(1800, "a row with no answer after this many seconds is killed "
                                   "(its log kept) and the next row starts")

    def __post_init__(self) -> None:
        if self.row_timeout_s < 1:
            raise ValueError("row_timeout_s must be >= 1")


@dataclass
class GpuCheck:
    rows: list[dict[str, Any]] = field(default_factory=list)  # row, status, ...
    lines: list[str] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)  # the GPU's identity, when one is there

    @property
    def exit_code(self) -> int:
        return 1 if any(r["status"] == "failed" for r in self.rows) else 0

    def table(self) -> str:
        out = ["| row | status | macro F1 | vs torch/fp32: top-1 agree % (bound) | max abs dlogit "
               "| delta F1 pt [95% CI] | p50 ms (b=1) | throughput ex/s | size MB | GPU MB in use "
               "| note |", "|" + "---|" * 11]
        for r in self.rows:
            if "macro_f1" not in r:
                out.append(f"| {r['row']} | {r['status']} | - | - | - | - | - | - | - | - | "
                           f"{r['why']} |")
                continue
            a = r.get("agreement") or {}
            agree = (f"{a['top1_pct']:.2f} ({a['bound_pct']:.1f})" if "top1_pct" in a else "-")
            dlogit = f"{a['max_abs_logit_diff']:.3f}" if "max_abs_logit_diff" in a else "-"
            delta = (f"{100 * a['delta']:+.2f} [{100 * a['ci95'][0]:+.2f}, {100 * a['ci95'][1]:+.2f}]"
                     if "delta" in a else "-")
            mem = r.get("gpu_in_use_mb")
            note = "; ".join(x for x in (r.get("why", ""), r.get("also", "")) if x)
            out.append(f"| {r['row']} | {r['status']} | {r['macro_f1']:.4f} | {agree} | {dlogit} | "
                       f"{delta} | {r['p50_ms']:.2f} | {r['throughput']:.0f} | {r['size_mb']:.1f} "
                       f"| {'-' if mem is None else f'{mem:.0f}'} | {note} |")
        return "\n".join(out)

    def markdown(self) -> str:
        from evaluate.report import device_line

        who = device_line(self.gpu) if self.gpu else "-"
        return ("# gpu-check\n\nGPU: " + who + "\n\n" + self.table() + "\n\n## Log\n\n" +
                "\n".join(f"- {x}" for x in self.lines) + "\n")


def plan(device: str, man: Any) -> list[tuple[Any, str | None]]:
    """(variant, why it is skipped or None) for every GPU row of the registry: the reasons of
    `--all` (common.variants.not_runnable), the manifest's skip reasons included. torch/fp32,
    the reference of every row's agreement, comes first (the registry's order)."""
    from common.variants import not_runnable, variants

    return [(v, not_runnable(v, man, device)) for v in variants() if v.gpu_row]


def last_line(log: Path) -> str:
    """The line of a log that says how the process ended: the last error line, else the last
    non-empty line (progress bars' carriage returns split lines too)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [x.strip() for x in re.split(r"[\r\n]+", text) if x.strip()]
    errors = [x for x in lines if x.startswith("error:") or re.match(r"^[\w.]+(Error|Exception)\b", x)]
    return (errors or lines or ["(empty log)"])[-1][:300]


def run_row(cmd: list[str], log: Path, timeout_s: float) -> str | None:
    """Run one row's command in its own process group, its output into `log`: None when it
    exited 0, else one line saying how it ended (a crash, a signal, or no answer in time)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the row and anything it started
            p.wait()
            return f"no answer after {timeout_s:.0f} s: killed (log: {log})"
    if rc == 0:
        return None
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
    return f"{how}: {last_line(log)} (log: {log})"


def agreement(r: dict, ref: dict, folder: Path, bound: float | None) -> dict[str, Any]:
    """The comparison's agreement of report `r` with `ref` (top-1 agreement, max |delta logit|;
    evaluate.compare.agreement, both in `folder`, on the same rows) and the paired macro F1 delta
    of their batch-1 predictions."""
    import numpy as np

    from common.metrics import bootstrap_weights, paired_delta_ci
    from evaluate.compare import agreement as logits_agreement

    out = logits_agreement(r, ref, folder) or {"refused": "a report has no logits"}
    if "refused" in out:
        return out
    out["reference"] = f"{ref['backend']}/{ref['variant']}"  # the row's name, as the table says
    y = np.asarray(r["labels"])
    pred, ref_pred = (np.load(folder / x["logits_file"]).argmax(-1) for x in (r, ref))
    out.update(paired_delta_ci(bootstrap_weights(len(y)), y, pred, ref_pred))
    if bound is not None:
        out["bound_pct"] = bound
    return out


def score_rows(rows: list[tuple[Any, str | None]], score: Callable[[Any], Path],
               say: Callable[[str], None], folder: Path | None = None,
               written: Callable[[GpuCheck], None] | None = None) -> GpuCheck:
    """Score each runnable row with `score(variant) -> report path` (raising on failure); a row
    that fails is one line and a failed row, and the rest go on. With `folder` (where the
    reports are), each scored row is checked against torch/fp32's report (and ALSO_AGAINST);
    `written(check)` is called after every row (the caller rewrites the table)."""
    check = GpuCheck()
    reports: dict[str, dict] = {}
    for v, why in rows:
        if why:
            say(f"[skip] {v.key}: {why}")
            check.rows.append({"row": v.key, "status": "skipped", "why": why})
        else:
            check.rows.append(score_one(v, score, say, folder, reports))
        if written:
            written(check)
    return check


def score_one(v: Any, score: Callable[[Any], Path], say: Callable[[str], None],
              folder: Path | None, reports: dict[str, dict]) -> dict[str, Any]:
    try:
        path = score(v)
        r = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - one row's failure must not lose the others
        first = (str(exc).strip().splitlines() or [""])[0]
        why = first if isinstance(exc, RowFailed) else f"{type(exc).__name__}: {first}"
        say(f"[failed] {v.key}: {why}")
        return {"row": v.key, "status": "failed", "why": why}
    reports[v.key] = r
    row: dict[str, Any] = {
        "row": v.key, "status": "scored", "macro_f1": r["macro_f1"],
        "p50_ms": r["latency_ms"]["p50"], "throughput": r["throughput"]["examples_per_s"],
        "size_mb": r["size_mb"], "gpu_in_use_mb": (r.get("gpu_memory") or {}).get("device_in_use_mb"),
        "device": r.get("device"), "report": str(path)}
    if folder is not None and REFERENCE in reports:
        bound = AGREEMENT_BOUND_PCT.get(v.precision)
        a = agreement(r, reports[REFERENCE], folder, bound)
        row["agreement"] = a
        if "refused" in a:
            row["status"], row["why"] = "failed", f"not comparable with {REFERENCE}: {a['refused']}"
        elif bound is not None and a["top1_pct"] < bound:
            row["status"] = "failed"
            row["why"] = (f"agrees with {REFERENCE} on {a['top1_pct']:.2f}% of rows, below its "
                          f"bound {bound:.1f}%: not published")
        other = ALSO_AGAINST.get(v.key)
        if other in reports:
            b = agreement(r, reports[other], folder, None)
            row["also_against"] = b
            row["also"] = (f"vs {other}: {b['top1_pct']:.2f}% agree, max abs dlogit "
                           f"{b['max_abs_logit_diff']:.3f}" if "top1_pct" in b else b["refused"])
    say(f"[{row['status']}] {v.key} -> {path}" + (f": {row['why']}" if "why" in row else ""))
    return row


def child_command(base: Any, v: Any, device: str, out: Path) -> list[str]:
    """`python -m evaluate` for one row, with the parent's settings (common.config.to_flags)."""
    from common.config import to_flags

    return [sys.executable, "-m", "evaluate", "--variant", v.key, "--device", device,
            "--out", str(out), *to_flags(base, skip=("backend", "variant", "device", "out"))]


def run_gpu_check(base: Any, out: Path, gc: GpuCheckConfig | None = None,
                  device: str | None = None) -> GpuCheck:
    """Score every GPU row it can, each in its own process; print a line per row and rewrite
    gpu-check.{md,json} as each row ends. `device`: the CUDA device (default: base.device when
    it names one, else cuda)."""
    import torch

    from common.manifest import Manifest, write_json_atomic, write_text_atomic

    gc = gc or GpuCheckConfig()
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    if not torch.cuda.is_available():
        say("gpu-check: no CUDA GPU here (torch sees none); nothing to score. Run it in the NGC "
            "image: docker/Dockerfile.gpu, `make gpu-check`.")
        return GpuCheck(lines=lines)
    from common.env import cuda_device
    from common.workdir import check_writable

    device = device or (base.device if str(base.device).startswith("cuda") else "cuda")
    out = Path(out)
    check_writable(out, 1 << 20, "--out")  # before the first row is scored
    rows = plan(device, Manifest(Path(base.artifacts)))
    gpu = cuda_device(device)
    say(f"gpu-check on {gpu.get('name')} ({device}, CUDA {gpu.get('cuda_runtime')}): "
        f"{sum(w is None for _, w in rows)} rows to score, {sum(w is not None for _, w in rows)} "
        f"skipped; each in its own process (timeout {gc.row_timeout_s} s)")

    def score(v: Any) -> Path:
        from evaluate.report import stem

        log = out / "logs" / f"{stem(v.backend, v.variant)}.log"
        failed = run_row(child_command(base, v, device, out), log, gc.row_timeout_s)
        if failed:
            raise RowFailed(failed)
        return out / f"{stem(v.backend, v.variant)}.json"

    def written(check: GpuCheck) -> None:
        check.lines, check.gpu = lines, gpu
        write_json_atomic(out / "gpu-check.json", {"gpu": gpu, "rows": check.rows,
                                                   "bounds_pct": {k.value: b for k, b in
                                                                  AGREEMENT_BOUND_PCT.items()},
                                                   "lines": lines})
        write_text_atomic(out / "gpu-check.md", check.markdown())

    check = score_rows(rows, score, say, folder=out, written=written)  # written after each row
    print(check.table())
    if not check.rows:  # nothing scored or skipped: the (empty) table is still written
        written(check)
    return check


class RowFailed(Exception):
    """A row's process ended badly; the message is its one line."""
