"""Where the time goes inside ONNX Runtime graphs: the per-op profile at batch 1.

    python -m evaluate --backend ort --profile-ops default   (or a comma list of ort variants)

Each variant's graph runs in the ORT runner's session settings (deploy/ort_runner.py) with ONNX
Runtime's profiler on, over the first N sentences of the split one at a time, twice: a first pass
(every shape's first call), then a second in rounds interleaved across the variants, as the
speed-up benchmark runs them. The second pass's per-node kernel times are summed per op type and
divided by N.
The profiler itself costs time per node, so its totals are above the interleaved benchmark's
p50 (`--speedup`): read this report for shares, and the speed-up report for speed. Writes
<out>/ops-<backend>.{json,md,png}. Which MLAS kernel an INT8 product uses is not in the profile:
the report states the CPU's flags MLAS dispatches on (AVX512-VNNI / AVX-VNNI / AMX).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc

# FP32 and INT8 forms of the same work, so that a row reads "matrix products" in both graphs
GROUPS = {"MatMul": "matrix products", "MatMulIntegerToFloat": "matrix products",
          "DynamicQuantizeMatMul": "matrix products", "MatMulInteger": "matrix products",
          "Gemm": "head", "FusedGemm": "head", "QGemm": "head",
          "Attention": "attention", "QAttention": "attention",
          "QuantizeLinear": "quantize", "DequantizeLinear": "quantize",
          "DynamicQuantizeLinear": "quantize",
          "Add": "residual + LayerNorm", "LayerNormalization": "residual + LayerNorm",
          "SkipLayerNormalization": "residual + LayerNorm",
          "EmbedLayerNormalization": "embeddings", "QEmbedLayerNormalization": "embeddings",
          "BiasGelu": "GELU", "Gelu": "GELU", "FastGelu": "GELU"}


def default_variants() -> tuple[str, ...]:
    """The registry's "ops" list: the FP32 reference of the speed-ups and the INT8 graphs built
    on it."""
    from common.variants import listed

    return tuple(v.variant for v in listed("ops", "ort"))


@dataclass(frozen=True)
class OpProfileConfig:
    variants: tuple[str, ...] = field(default_factory=default_variants)
    data: str = ""  # the rows: empty = the build's task (common.task.scoring_task)
    split: str = "test"
    sentences: int = doc(300, "batch-1 sentences profiled per variant (the first N of the split)")
    round_size: int = doc(20, "sentences per variant per interleaved round")
    # why the pause: evaluate/speedup.py
    settle_ms: int = doc(100, "untimed pause (ms) before each variant's turn")
    threads: int = 0
    artifacts: str = "artifacts"
    out: str = "reports"

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("give at least one variant to profile")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {self.variants}")
        check_ranges(self, sentences=">= 1", round_size=">= 1", settle_ms=">= 0", threads=">= 0")


def op_times(profile: Path, skip_runs: int) -> tuple[dict[str, float], dict[str, int], float]:
    """From an ONNX Runtime profile (chrome-trace JSON), over the runs after the first
    `skip_runs`: ms per run per op type, nodes of that type per run, and ms per run of the
    session's own run time."""
    events = json.loads(profile.read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) != 2 * skip_runs:
        # ONNX Runtime stops recording at 1,000,000 events: averages over partial runs would lie
        raise RuntimeError(f"{profile}: {len(runs)} runs recorded, {2 * skip_runs} expected (the "
                           "profiler's event cap?); profile fewer sentences (--profile-ops-sentences)")
    start = runs[skip_runs]["ts"]
    n = len(runs) - skip_runs
    us: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for e in events:
        if (e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                and e["ts"] >= start):
            op = e.get("args", {}).get("op_name", "?")
            us[op] += e["dur"]
            calls[op] += 1
    run_ms = sum(e["dur"] for e in runs[skip_runs:]) / n / 1e3
    return {op: t / n / 1e3 for op, t in us.items()}, {op: c // n for op, c in calls.items()}, run_ms


def profile_ops(cfg: OpProfileConfig) -> dict[str, Any]:
    from contextlib import ExitStack

    from tqdm import tqdm

    from common.checkpoint import baseline_encoder
    from common.env import cpu_device, versions
    from common.manifest import Manifest
    from common.task import scoring_task
    from common.variants import find_variant
    from deploy.factories import default_threads
    from deploy.ort_runner import OrtRunner
    from evaluate.speedup import rotated

    artifacts = Path(cfg.artifacts)
    threads = cfg.threads or default_threads()
    man = Manifest(artifacts)
    split = scoring_task(artifacts, cfg.data).split(cfg.split)
    n = min(cfg.sentences, len(split))
    te = baseline_encoder(artifacts)
    enc = te.encode_split(split.head(n))
    arts = {v: find_variant("ort", v).artifact for v in cfg.variants}
    with tempfile.TemporaryDirectory(prefix="ops-") as tmp, ExitStack() as stack:
        runners = {v: stack.enter_context(OrtRunner(
            man.verify(arts[v]), tuple(te.input_names), threads, variant=v,
            profile_prefix=str(Path(tmp) / v))) for v in cfg.variants}
        feeds = [enc.batch([i], te.input_names) for i in range(n)]
        for r in runners.values():  # pass 1: every shape's first call, left out of the sums
            for f in feeds:
                r.infer(f)
        # pass 2 in interleaved rounds, as `--speedup` times them: the VM's drift hits every
        # variant alike, and a pause lets the previous variant's spinning threads stop
        rounds = [feeds[s:s + cfg.round_size] for s in range(0, n, cfg.round_size)]
        for k, rnd in enumerate(tqdm(rounds, desc="ort profiled rounds", leave=False)):
            for v in rotated(list(cfg.variants), k):
                time.sleep(cfg.settle_ms / 1e3)
                for f in rnd:
                    runners[v].infer(f)
        traces = {v: r.end_profiling() for v, r in runners.items()}
        rows = []
        for v in cfg.variants:
            ms, per_run, run_ms = op_times(traces[v], skip_runs=n)
            ops = [{"op": op, "ms": t, "per_run": per_run[op], "share": t / sum(ms.values()),
                    "group": GROUPS.get(op, "other")}
                   for op, t in sorted(ms.items(), key=lambda kv: -kv[1])]
            rows.append({"variant": v, "run_ms": run_ms, "ops_ms": sum(ms.values()), "ops": ops})
    # what each row measured: the comparison leaves the report out once an artifact changes
    made_by = {v: man.stamp(arts[v]) for v in cfg.variants}
    return {"backend": "ort", "config": asdict(cfg), "threads": threads, "sentences": n,
            "device": cpu_device(), "rows": rows, "versions": versions(), "made_by": made_by}


def _groups(row: dict) -> dict[str, float]:
    g: Counter[str] = Counter()
    for o in row["ops"]:
        g[o["group"]] += o["ms"]
    g["dispatch"] = max(0.0, row["run_ms"] - row["ops_ms"])  # the executor between kernels
    return dict(g)


def group_table(rows: list[dict]) -> tuple[list[str], list[dict[str, float]]]:
    """The group names of every row (sorted) and each row's ms per group."""
    per_row = [_groups(row) for row in rows]
    return sorted({g for gs in per_row for g in gs}), per_row


def kernel_note(device: dict) -> str:
    if device.get("amx"):
        isa = "AMX (and AVX512-VNNI)"
    elif device.get("avx512_vnni"):
        isa = "AVX512-VNNI"
    elif device.get("avx_vnni"):
        isa = "AVX-VNNI"
    else:
        isa = "no VNNI: U8S8 products take vpmaddubsw + vpmaddwd + vpaddd per vpdpbusd of a VNNI CPU"
    return (f"INT8 matrix products run in MLAS's U8S8 kernels, which dispatch on the CPU's flags: "
            f"here {isa}.")


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [f"# Where the time goes: {r['backend']} op profile", "",
             f"{r['device'].get('name')}, {r['threads']} threads, batch 1: the first "
             f"{r['sentences']} {c['split']} sentences, one at a time, with ONNX Runtime's "
             f"profiler on (after one pass left out), in interleaved rounds of {c['round_size']}. "
             "ms per sentence; the profiler adds time per "
             "node, so compare shares here and speed in the interleaved speed-up report. "
             "Kernel times are whole microseconds (truncated), so ops of 1-3 us (Add, "
             "LayerNormalization) read low; `dispatch` is the run time outside kernels. "
             + kernel_note(r["device"]), ""]
    groups, per_row = group_table(r["rows"])
    lines += ["| variant | run ms | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 2)]
    for row, g in zip(r["rows"], per_row, strict=True):
        lines.append(f"| {row['variant']} | {row['run_ms']:.3f} | "
                     + " | ".join(f"{g.get(k, 0.0):.3f}" for k in groups) + " |")
    for row in r["rows"]:
        lines += ["", f"## {row['variant']}", "", "| op | ms | per run | share |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['ms']:.3f} | {o['per_run']} | {100 * o['share']:.1f}% |"
                  for o in row["ops"]]
    vers = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))
    lines += ["", f"![op profile](ops-{r['backend']}.png)", "", f"Versions: {vers}.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from common.plots import pyplot, save

    rows = r["rows"]
    groups, per_row = group_table(rows)
    fig, ax = pyplot().subplots(figsize=(8.5, 0.5 * len(rows) + 1.6))
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for g in groups:
        w = np.array([gs.get(g, 0.0) for gs in per_row])
        ax.barh(y, w, left=left, label=g)
        left += w
    ax.set_yticks(y, [row["variant"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms per sentence (batch 1, profiler on; dispatch: outside kernels)")
    ax.set_title(f"{r['backend']}, {r['device'].get('name')}, {r['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    save(fig, path)


def write_op_profile(r: dict, out: Path) -> dict[str, Path]:
    from common.reports import write_report

    return write_report(out, f"ops-{r['backend']}", r, markdown(r), {"": lambda p: plot(r, p)})
