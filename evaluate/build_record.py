"""The build record that is published beside the results: what the last `make engines` run did,
each step's wall time and peak memory as the build itself measured them (engines/pipeline.py
writes artifacts/build-record.json; the manifest keeps each artifact's own build time and peak),
with no path of the build machine in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.manifest import Manifest
from common.reports import md_table, write_report

RECORD = "build-record.json"


def build_record(artifacts: Path) -> dict[str, Any] | None:
    path = Path(artifacts) / RECORD
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    runs = data.get("runs") if isinstance(data, dict) else None
    if runs is None and isinstance(data, dict) and "steps" in data:
        runs = [data]  # a record written before runs were kept: its one run
    if not runs:
        return None
    man = Manifest(Path(artifacts))
    steps = {}
    for name, e in sorted(man.entries.items()):
        if "skipped" in e:
            steps[name] = {"skipped": e["skipped"]}
        else:
            steps[name] = {"seconds": e.get("build_seconds"), "peak_rss_mb": e.get("build_peak_rss_mb"),
                           "built": e.get("created"), "sha256": e.get("sha256"),
                           "size_mb": round(e.get("size_bytes", 0) / 1e6, 1)}
    keep = ("finished", "wall_minutes", "stages", "overlap", "device", "versions", "steps")
    full = [r for r in runs if r.get("full")]
    return {"last_run": {k: runs[-1].get(k) for k in keep},
            # the newest run of every stage: what a fresh `make engines` costs when it built all
            "last_full_run": {k: full[-1].get(k) for k in keep} if full else None,
            "artifacts": steps}


def run_lines(title: str, run: dict[str, Any]) -> list[str]:
    dev = run.get("device") or {}
    lines = [f"## {title}", "",
             f"{run.get('wall_minutes')} min wall time, finished {run.get('finished')}, on "
             f"{dev.get('name')} ({dev.get('cores')} cores); stages "
             f"{', '.join(run.get('stages') or [])}; QLoRA beside the baseline: "
             f"{'yes' if run.get('overlap') else 'no'}.", ""]
    lines += md_table(["step", "in that run", "seconds", "peak RSS MB"],
                      ([s["step"], s["action"], s.get("seconds", "-"), s.get("peak_rss_mb", "-")]
                       for s in run.get("steps") or []))
    return lines + [""]


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Build record", ""]
    full, last = r.get("last_full_run"), r["last_run"]
    if full:
        lines += run_lines("Last `make engines` run of every stage", full)
    if full != last:
        lines += run_lines("Last `make engines` run", last)
    lines += ["Every artifact as built (its own build, possibly by an earlier run):", ""]
    lines += md_table(["artifact", "seconds", "peak RSS MB", "size MB", "built"],
                      ([name, "-", "-", "-", f"skipped: {a['skipped']}"] if "skipped" in a else
                       [name, a["seconds"], a["peak_rss_mb"], a["size_mb"], a["built"]]
                       for name, a in r["artifacts"].items()))
    return "\n".join(lines) + "\n"


def write_build_record(artifacts: Path, out: Path) -> list[Path]:
    """build-record.json + .md into `out`; nothing when no build has been recorded."""
    r = build_record(artifacts)
    if r is None:
        return []
    paths = write_report(Path(out), "build-record", r, markdown(r))
    return [paths["json"], paths["md"]]
