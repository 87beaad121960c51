"""The build record that is published beside the results: what the last `make engines` run did,
each step's wall time and peak memory as the build itself measured them (engines/pipeline.py
writes artifacts/build-record.json; the manifest keeps each artifact's own build time and peak),
with no path of the build machine in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.manifest import Manifest
from common.reports import write_report

RECORD = "build-record.json"


def build_record(artifacts: Path) -> dict[str, Any] | None:
    path = Path(artifacts) / RECORD
    if not path.is_file():
        return None
    run = json.loads(path.read_text(encoding="utf-8"))
    man = Manifest(Path(artifacts))
    steps = {}
    for name, e in sorted(man.entries.items()):
        if "skipped" in e:
            steps[name] = {"skipped": e["skipped"]}
        else:
            steps[name] = {"seconds": e.get("build_seconds"), "peak_rss_mb": e.get("build_peak_rss_mb"),
                           "built": e.get("created"), "sha256": e.get("sha256"),
                           "size_mb": round(e.get("size_bytes", 0) / 1e6, 1)}
    return {"last_run": {k: run.get(k) for k in ("finished", "wall_minutes", "stages", "overlap",
                                                 "device", "versions", "steps")},
            "artifacts": steps}


def markdown(r: dict[str, Any]) -> str:
    run = r["last_run"]
    dev = run.get("device") or {}
    lines = ["# Build record", "",
             f"Last `make engines` run: {run.get('wall_minutes')} min wall time, finished "
             f"{run.get('finished')}, on {dev.get('name')} ({dev.get('cores')} cores); stages "
             f"{', '.join(run.get('stages') or [])}; QLoRA beside the baseline: "
             f"{'yes' if run.get('overlap') else 'no'}.", "",
             "| step | in that run | seconds | peak RSS MB |", "|---|---|---|---|"]
    for s in run.get("steps") or []:
        lines.append(f"| {s['step']} | {s['action']} | {s.get('seconds', '-')} | "
                     f"{s.get('peak_rss_mb', '-')} |")
    lines += ["", "Every artifact as built (its own build, possibly by an earlier run):", "",
              "| artifact | seconds | peak RSS MB | size MB | built |", "|---|---|---|---|---|"]
    for name, a in r["artifacts"].items():
        if "skipped" in a:
            lines.append(f"| {name} | - | - | - | skipped: {a['skipped']} |")
        else:
            lines.append(f"| {name} | {a['seconds']} | {a['peak_rss_mb']} | {a['size_mb']} | "
                         f"{a['built']} |")
    return "\n".join(lines) + "\n"


def write_build_record(artifacts: Path, out: Path) -> list[Path]:
    """build-record.json + .md into `out`; nothing when no build has been recorded."""
    r = build_record(artifacts)
    if r is None:
        return []
    paths = write_report(Path(out), "build-record", r, markdown(r))
    return [paths["json"], paths["md"]]
