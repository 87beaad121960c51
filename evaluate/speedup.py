"""Interleaved speed-up benchmark: several variants of one backend timed in alternating rounds.

`python -m evaluate --all` times each variant in its own block, minutes apart. On a shared VM
the machine's speed drifts by tens of percent over such spans (the same FP32 graph measured
3.2 ms and 4.3 ms ten minutes apart here), which goes straight into the ratios. Here every
variant is loaded at once and the sentences are cut into rounds; in each round every variant
runs the same sentences back to back (rotating which goes first), so drift hits all of them
alike. Per variant: batch-1 p50/p95, and the speed-up over the reference as the median of the
per-round ratios of medians with a bootstrap 95% interval over rounds.

Before each variant's turn the benchmark pauses (`settle_ms`): ONNX Runtime's intra-op threads
keep spinning after a run, so without the pause the previous variant's spinning thread took one
of the two cores for the first ~80 ms of the next variant's turn; that fixed cost fell mostly on
the fast INT8 variants, whose turns are shortest (docs/decisions.md, 2026-12-04).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_ranges, doc


@dataclass(frozen=True)
class SpeedupConfig:
    backend: str = "ort"
    variants: tuple[str, ...] = ()  # empty: the registry's speed-up list of `backend`
    reference: str = ""  # default: the first variant
    data: str = ""  # the rows: empty = the build's task (common.task.scoring_task)
    split: str = "test"
    sentences: int = doc(2000, "batch-1 sentences per variant (the first N of the split)")
    round_size: int = doc(20, "sentences per variant per interleaved round")
    batch_size: int = 32
    batches: int = doc(8, "batched rounds (one batch per variant per round)")
    # untimed pause before each variant's turn, so the previous variant's spinning threads stop
    settle_ms: int = doc(100, "untimed pause (ms) before each variant's turn")
    threads: int = 0
    device: str = "cpu"
    artifacts: str = "artifacts"
    out: str = "reports"
    seed: int = doc(0, "seed of the bootstrap intervals of the ratios")

    def __post_init__(self) -> None:
        if not self.variants:
            from common.variants import speedup_variants

            object.__setattr__(self, "variants", speedup_variants(self.backend))
        if len(self.variants) < 2:
            raise ValueError("give at least two variants to compare")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {self.variants}")
        if self.reference and self.reference not in self.variants:
            raise ValueError(f"reference {self.reference!r} is not among {self.variants}")
        if self.sentences < self.round_size or self.round_size < 1:
            raise ValueError("need 1 <= round_size <= sentences")
        check_ranges(self, batch_size=">= 1", batches=">= 1", threads=">= 0", seed=">= 0",
                     settle_ms=">= 0")

    @property
    def ref(self) -> str:
        return self.reference or self.variants[0]


def ratio_ci(ref_rounds: list[np.ndarray], var_rounds: list[np.ndarray], seed: int,
             n_boot: int = 2000) -> tuple[float, float, float]:
    """Speed-up = median over rounds of median(ref) / median(variant); bootstrap over rounds."""
    per_round = np.array([np.median(r) / np.median(v) for r, v in zip(ref_rounds, var_rounds, strict=True)])
    rng = np.random.default_rng(seed)
    boots = np.median(per_round[rng.integers(0, len(per_round), (n_boot, len(per_round)))], axis=1)
    return float(np.median(per_round)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def rotated(order: list[str], k: int) -> list[str]:
    """Round k's running order: who goes first rotates, so no variant always runs first."""
    k %= len(order)
    return order[k:] + order[:k]


def run_speedup(cfg: SpeedupConfig) -> dict[str, Any]:
    from contextlib import ExitStack

    from tqdm import tqdm

    from common.checkpoint import baseline_encoder
    from common.env import cpu_device, cuda_device, versions
    from common.feeds import batches
    from common.manifest import Manifest
    from common.task import scoring_task
    from common.timing import first_calls, time_each
    from deploy.factories import default_threads, find_variant, make_runner

    artifacts = Path(cfg.artifacts)
    threads = cfg.threads or default_threads()
    split = scoring_task(artifacts, cfg.data).split(cfg.split)
    n = min(cfg.sentences, len(split))
    enc = baseline_encoder(artifacts).encode_split(split)
    man = Manifest(artifacts)
    times: dict[str, list[np.ndarray]] = {v: [] for v in cfg.variants}
    btimes: dict[str, list[float]] = {v: [] for v in cfg.variants}
    with ExitStack() as stack:
        runners = {v: stack.enter_context(make_runner(cfg.backend, v, artifacts, threads, cfg.device))
                   for v in cfg.variants}
        names = next(iter(runners.values())).input_names
        plan = batches(len(enc), cfg.batch_size)[: cfg.batches]
        singles = [enc.batch([i], names) for i in range(n)]
        batched = [enc.batch(b, names) for b in plan]
        for v, r in runners.items():  # every shape's first call, untimed, before any round
            first_calls(r.infer, singles + batched, progress=f"{v}: first call per shape")
        order = list(cfg.variants)
        rounds = [list(range(s, min(s + cfg.round_size, n))) for s in range(0, n, cfg.round_size)]
        for k, rnd in enumerate(tqdm(rounds, desc=f"{cfg.backend} interleaved batch 1", leave=False)):
            for v in rotated(order, k):
                time.sleep(cfg.settle_ms / 1e3)
                times[v].append(time_each(runners[v].infer, (enc.batch([i], names) for i in rnd))[0])
        for k, feed in enumerate(tqdm(batched, desc=f"{cfg.backend} interleaved batch "
                                      f"{cfg.batch_size}", leave=False)):
            for v in rotated(order, k):
                time.sleep(cfg.settle_ms / 1e3)
                btimes[v].append(float(time_each(runners[v].infer, [feed])[0][0]))
    rows = []
    for v in cfg.variants:
        ms = np.concatenate(times[v]) * 1e3
        s, lo, hi = ratio_ci(times[cfg.ref], times[v], cfg.seed)
        bs, blo, bhi = ratio_ci([np.array([t]) for t in btimes[cfg.ref]],
                                [np.array([t]) for t in btimes[v]], cfg.seed)
        rows.append({"variant": v, "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
                     "speedup_b1": s, "speedup_b1_ci95": [lo, hi],
                     "batched_ms_median": float(np.median(btimes[v]) * 1e3),
                     "speedup_batched": bs, "speedup_batched_ci95": [blo, bhi]})
    return {"backend": cfg.backend, "reference": cfg.ref, "config": asdict(cfg), "threads": threads,
            "device": cpu_device() if cfg.device == "cpu" else cuda_device(cfg.device),
            "rounds": len(times[cfg.ref]), "sentences": n, "rows": rows, "versions": versions(),
            "made_by": {v: man.stamp(find_variant(cfg.backend, v).artifact) for v in cfg.variants}}


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [f"# Interleaved speed-up: {r['backend']}", "",
             f"{r['device'].get('name')}, {r['threads']} threads. Batch 1: the first {r['sentences']} "
             f"{c['split']} sentences, unpadded, in {r['rounds']} rounds of {c['round_size']}; in each "
             "round every variant runs the same sentences back to back (first place rotates), after "
             "one untimed call per distinct input shape each and an untimed pause of "
             f"{c.get('settle_ms', 0)} ms before each turn (the previous variant's spinning threads "
             "stop). Batched: "
             f"{c['batches']} batches of {c['batch_size']}, each padded to its longest sentence, one "
             f"timed run per variant per batch. Speed-up vs `{r['reference']}`: median over rounds "
             "of the ratio of the "
             "round medians, with a bootstrap 95% interval over rounds.", "",
             "| variant | p50 ms (b=1) | p95 ms (b=1) | speed-up b=1 | 95% interval | "
             f"batch {c['batch_size']} ms | speed-up batched | 95% interval |", "|" + "---|" * 8]
    for x in r["rows"]:
        lo, hi = x["speedup_b1_ci95"]
        blo, bhi = x["speedup_batched_ci95"]
        lines.append(f"| {x['variant']} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} | {x['speedup_b1']:.2f} | "
                     f"{lo:.2f}-{hi:.2f} | {x['batched_ms_median']:.1f} | {x['speedup_batched']:.2f} | "
                     f"{blo:.2f}-{bhi:.2f} |")
    vers = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))
    lines += ["", f"![speed-up](speedup-{r['backend']}.png)", "", f"Versions: {vers}.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from common.plots import pyplot, save

    rows = r["rows"]
    fig, ax = pyplot().subplots(figsize=(7, 0.4 * len(rows) + 1.4))
    y = np.arange(len(rows))
    s = np.array([x["speedup_b1"] for x in rows])
    err = np.array([[x["speedup_b1"] - x["speedup_b1_ci95"][0], x["speedup_b1_ci95"][1] - x["speedup_b1"]]
                    for x in rows]).T
    ax.barh(y, s, xerr=err, color="tab:blue", capsize=3)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(y, [x["variant"] for x in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"batch-1 speed-up vs {r['reference']} (95% interval)")
    ax.set_title(f"{r['backend']}, {r['device'].get('name')}, {r['threads']} threads, interleaved rounds",
                 fontsize=9)
    save(fig, path)


def write_speedup(r: dict, out: Path) -> dict[str, Path]:
    from common.reports import write_report

    return write_report(out, f"speedup-{r['backend']}", r, markdown(r), {"": lambda p: plot(r, p)})
