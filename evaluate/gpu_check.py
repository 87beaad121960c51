"""`make gpu-check` / `python -m evaluate --gpu-check`: every GPU row of the variant registry
(`gpu_row`) this machine can score, into reports/gpu/, one line per row it cannot, saying why. On
a machine without a CUDA GPU: one line saying so, and nothing else.

Each row is isolated: a row that fails prints one line with its error and the others still score;
the end prints a table (row, macro F1, p50, throughput, size, or why not) and the exit code is 1
when any row failed (a skipped row is not a failure)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GpuCheck:
    rows: list[dict[str, Any]] = field(default_factory=list)  # backend, variant, status, ...
    lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(r["status"] == "failed" for r in self.rows) else 0

    def table(self) -> str:
        out = ["| row | status | macro F1 | p50 ms (b=1) | throughput ex/s | size MB | note |",
               "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            if r["status"] == "scored":
                out.append(f"| {r['row']} | scored | {r['macro_f1']:.4f} | {r['p50_ms']:.2f} | "
                           f"{r['throughput']:.0f} | {r['size_mb']:.1f} | |")
            else:
                out.append(f"| {r['row']} | {r['status']} | - | - | - | - | {r['why']} |")
        return "\n".join(out)


def plan(device: str, man: Any) -> list[tuple[Any, str | None]]:
    """(variant, why it is skipped or None) for every GPU row of the registry: the reasons of
    `--all` (common.variants.not_runnable), the manifest's skip reasons included."""
    from common.variants import not_runnable, variants

    return [(v, not_runnable(v, man, device)) for v in variants() if v.gpu_row]


def score_rows(rows: list[tuple[Any, str | None]], score: Callable[[Any], Path],
               say: Callable[[str], None]) -> GpuCheck:
    """Score each runnable row with `score(variant) -> report path`; a row that raises is one
    line and a failed row, and the rest go on."""
    check = GpuCheck()
    for v, why in rows:
        if why:
            say(f"[skip] {v.key}: {why}")
            check.rows.append({"row": v.key, "status": "skipped", "why": why})
            continue
        try:
            path = score(v)
        except Exception as exc:  # noqa: BLE001 - one row's failure must not lose the others
            first = (str(exc).strip().splitlines() or [""])[0]
            say(f"[failed] {v.key}: {type(exc).__name__}: {first}")
            check.rows.append({"row": v.key, "status": "failed",
                               "why": f"{type(exc).__name__}: {first}"})
            continue
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        say(f"[scored] {v.key} -> {path}")
        check.rows.append({"row": v.key, "status": "scored", "macro_f1": r["macro_f1"],
                           "p50_ms": r["latency_ms"]["p50"],
                           "throughput": r["throughput"]["examples_per_s"],
                           "size_mb": r["size_mb"], "report": str(path)})
    return check


def run_gpu_check(base: Any, out: Path) -> GpuCheck:
    """Score every GPU row it can; print a line per row and the table at the end."""
    import torch

    from common.manifest import Manifest
    from evaluate.__main__ import run_one

    lines: list[str] = []

    def say(s: str) -> None:
        print(s)
        lines.append(s)

    if not torch.cuda.is_available():
        say("gpu-check: no CUDA GPU here (torch sees none); nothing to score. Run it in the NGC "
            "image: docker/Dockerfile.gpu, `make gpu-check`.")
        return GpuCheck(lines=lines)
    from common.workdir import check_writable

    check_writable(out, 1 << 20, "--out")  # before the first row is scored
    rows = plan("cuda", Manifest(Path(base.artifacts)))
    say(f"gpu-check on {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}): "
        f"{sum(w is None for _, w in rows)} rows to score, {sum(w is not None for _, w in rows)} "
        "skipped")
    check = score_rows(rows, lambda v: run_one(dataclasses.replace(
        base, backend=v.backend, variant=v.variant, device="cuda", out=str(out))), say)
    check.lines = lines
    say(check.table())
    from common.manifest import write_text_atomic

    write_text_atomic(Path(out) / "gpu-check.md", "# gpu-check\n\n" + "\n".join(lines) + "\n")
    return check
