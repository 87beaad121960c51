"""Accuracy-aware static PTQ (the idea of Intel Neural Compressor's tolerable-loss tuning, written
on onnxruntime.quantization): a declared recipe space searched with a criterion that carries from
validation to unseen data, never reading the test split.

Validation is split in two halves, stratified by label, with a seed. Half A chooses: each recipe's
logits are compared with the FP32 graph's (mean KL(FP32 || INT8) of the softmax, the criterion;
top-1 agreement and mean |delta logit| beside it). Macro F1 on 1,000 rows with two small classes
moves by ~1 pt with a few dozen flipped predictions, so it is no criterion; logit agreement is
what the INT8 graph can change. Half B confirms: the chosen recipe's macro F1 drop against FP32 on
B must be within the tolerable loss; the next recipe by criterion is tried otherwise, then the
best one with its worst blocks (ranked on A) kept FP32 one at a time. Calibration draws
validation inputs only (no labels). Every recipe tried is recorded: recipe, criterion,
validation-B drop, batch-1 latency (interleaved with the FP32 graph), size.

Order of the space: first every calibration (method x rows) with every MatMul quantized, then
the best calibration with the other placements.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from calibration.ort_static import (
    METHODS,
    PLACEMENTS,
    Node,
    Recipe,
    onnx_logits,
    preprocess,
    quantizable_nodes,
    quantize,
    select,
)
from common.calibset import CalibrationSet
from common.config import check_ranges, doc
from common.data import stratified_halves
from common.errors import ConfigError


@dataclass(frozen=True)
class StaticConfig:
    """The recipe space and the acceptance rule of the static-PTQ search (u8: ONNX Runtime on
    CPU). The TensorRT flavour (s8) reuses the chosen recipe, symmetric."""
    # Entropy is left out by default: the same ranges as MinMax at many times the calibration
    # time (docs/decisions.md)
    methods: tuple[str, ...] = doc(("minmax", "percentile"), f"calibrations tried, of {METHODS}")
    # 99.99 clips the activations' real tails (KL many times 99.999's: docs/decisions.md)
    percentiles: tuple[float, ...] = (99.999,)
    # 1024 rows left out by default: no better than 256 within the calibration-seed spread, for
    # 4x the time and peak memory (docs/decisions.md); `--ptq-calib-rows 256,1024` puts it back
    calib_rows: tuple[int, ...] = doc((256,), "calibration rows tried (prefixes of the "
                                      "calibration set; validation rows only)")
    # no-ffn-out is left out by default: measured 0.37x of FP32 (a quarter of the layer weights
    # stay FP32), over the size budget below, for a KL within noise of "all"
    placements: tuple[str, ...] = doc(("all", "no-attention"),
                                      f"MatMul placements tried, of {PLACEMENTS}")
    tolerable_loss: float = doc(0.5, "largest validation-B macro F1 drop (pt) accepted")
    # A recipe that keeps whole MatMuls FP32 can win on KL by a hair while losing what static
    # INT8 is for (no-ffn-out keeps a quarter of the layer weights FP32: 0.41x measured).
    max_size_ratio: float = doc(0.30, "recipes larger than this fraction of the FP32 graph are "
                                "not chosen (the block fallback may exceed it)")
    block_fallback: bool = doc(True, "when no recipe fits, keep the worst blocks FP32")
    per_channel: bool = True
    symmetric_activations: bool = doc(False, "u8 flavour: asymmetric U8 measured closest to FP32")
    split_seed: int = doc(0, "seed of the stratified validation A/B split")
    spread_seeds: tuple[int, ...] = doc((1, 2), "extra calibration-sample seeds the chosen recipe "
                                        "is rebuilt with (the spread is reported)")
    latency_rounds: int = doc(10, "interleaved rounds of 20 batch-1 sentences per recipe")

    def __post_init__(self) -> None:
        if set(self.methods) - set(METHODS) or not self.methods:
            raise ConfigError(f"methods must be among {METHODS}, got {self.methods}")
        if set(self.placements) - set(PLACEMENTS) or "all" not in self.placements:
            raise ConfigError(f"placements must be among {PLACEMENTS} and include 'all'")
        if not self.calib_rows or min(self.calib_rows) < 1 or self.tolerable_loss < 0:
            raise ConfigError("calib_rows must be >= 1 and tolerable_loss >= 0")
        check_ranges(self, percentiles="in (0, 100]", max_size_ratio="> 0", split_seed=">= 0",
                     spread_seeds=">= 0", latency_rounds=">= 1")

    def calibrations(self, available: int) -> list[Recipe]:
        """Every calibration of the space, rows capped at what the calibration set holds (a
        small validation split gives fewer distinct sizes)."""
        out = []
        for m in self.methods:
            for p in (self.percentiles if m == "percentile" else (0.0,)):
                for rows in sorted({min(r, available) for r in self.calib_rows}):
                    out.append(Recipe(m, p or 99.999, rows, "all", "u8", self.symmetric_activations))
        return out


def agreement(ref: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Mean KL(softmax(ref) || softmax(q)), top-1 agreement, mean |delta logit|."""
    from common.probs import log_softmax

    lp, lq = log_softmax(ref), log_softmax(q)
    return {"kl": float((np.exp(lp) * (lp - lq)).sum(-1).mean()),
            "top1": float((ref.argmax(-1) == q.argmax(-1)).mean()),
            "dlogit": float(np.abs(ref - q).mean())}


class Search:
    """State of one search: the preprocessed graph, the halves, FP32 references, results."""

    def __init__(self, fp32: Path, calib: Path, names: list[str], batch_size: int,
                 cfg: StaticConfig, val_enc: Any, val_labels: np.ndarray, ffn_out: str,
                 work: Path, sampler: Any = None):
        from common.metrics import classification_metrics

        self.cfg, self.names, self.batch_size, self.enc = cfg, names, batch_size, val_enc
        self.calib_path, self.work, self.sampler = calib, work, sampler
        self.y = np.asarray(val_labels)
        self.a, self.b = stratified_halves(self.y, cfg.split_seed)
        self.pre = work / "pre.onnx"
        preprocess(fp32, self.pre)
        self.fp32 = fp32
        self.nodes: list[Node] = quantizable_nodes(self.pre, ffn_out)
        self.ref_a = onnx_logits(fp32, val_enc, names, self.a)
        self.ref_b = onnx_logits(fp32, val_enc, names, self.b)
        self.f1 = classification_metrics
        self.f1_fp32_b = classification_metrics(self.y[self.b], self.ref_b.argmax(-1))["macro_f1"]
        self.tried: list[dict[str, Any]] = []
        self.graphs: dict[str, Path] = {}

    def build(self, r: Recipe, calib: CalibrationSet | None = None, tag: str = "") -> dict[str, Any]:
        key = "-".join(map(str, r.calibration_key)) + tag
        path = self.work / f"q{len(self.graphs)}.onnx"
        calib = calib or CalibrationSet(self.calib_path, self.batch_size, self.names, r.calib_rows)
        quantize(self.pre, path, calib, r, select(self.nodes, r), self.cfg.per_channel,
                 self.work / f"ranges-{key}.json")
        qa = onnx_logits(path, self.enc, self.names, self.a)
        qb = onnx_logits(path, self.enc, self.names, self.b)
        f1_b = self.f1(self.y[self.b], qb.argmax(-1))["macro_f1"]
        row = {"recipe": r.as_dict(), "label": r.label() + tag, **agreement(self.ref_a, qa),
               "val_b_macro_f1": f1_b, "val_b_drop_pt": 100 * (self.f1_fp32_b - f1_b),
               "size_bytes": path.stat().st_size}
        self.graphs[row["label"]] = path
        print(f"  {row['label']}: KL {row['kl']:.4f}, top-1 {100 * row['top1']:.2f}% (A); "
              f"drop {row['val_b_drop_pt']:+.2f} pt (B)")
        return row

    def within(self, row: dict[str, Any]) -> bool:
        return row["val_b_drop_pt"] <= self.cfg.tolerable_loss

    def run(self) -> tuple[dict[str, Any], Path]:
        by_kl = lambda rows: sorted(rows, key=lambda x: (x["kl"], -x["top1"]))  # noqa: E731
        available = CalibrationSet(self.calib_path, self.batch_size, self.names).n
        stage1 = [self.build(r) for r in self.cfg.calibrations(available)]
        best_cal = Recipe(**{**by_kl(stage1)[0]["recipe"],
                             "fp32_blocks": tuple(by_kl(stage1)[0]["recipe"]["fp32_blocks"])})
        stage2 = [self.build(replace(best_cal, placement=p)) for p in self.cfg.placements
                  if p != "all"]
        self.tried = stage1 + stage2
        fp32_size = self.fp32.stat().st_size
        for x in self.tried:
            x["size_ratio"] = x["size_bytes"] / fp32_size
            x["eligible"] = x["size_ratio"] <= self.cfg.max_size_ratio
        chosen = next((x for x in by_kl(self.tried) if x["eligible"] and self.within(x)), None)
        fallback: list[dict[str, Any]] = []
        eligible = [x for x in self.tried if x["eligible"]] or self.tried
        if chosen is None and self.cfg.block_fallback:
            chosen, fallback = self.fall_back(by_kl(eligible)[0])
            for x in fallback:
                x["size_ratio"] = x["size_bytes"] / fp32_size
                x["eligible"] = True  # the last resort: kept FP32 on purpose
            self.tried += fallback
        if chosen is None:
            chosen = by_kl(eligible)[0]
        chosen["chosen"] = True
        return chosen, self.graphs[chosen["label"]]

    def fall_back(self, best: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Rank blocks by how much KL on A keeping each one FP32 removes; keep the worst FP32
        one at a time until B is within the tolerable loss (never every block)."""
        base = Recipe(**{**best["recipe"], "fp32_blocks": ()})
        blocks = sorted({n.block for n in self.nodes})
        gain = {}
        rows = []
        for blk in blocks:
            row = self.build(replace(base, fp32_blocks=(blk,)))
            rows.append(row)
            gain[blk] = best["kl"] - row["kl"]
        kept: list[str] = []
        for blk in sorted(blocks, key=gain.get, reverse=True)[: len(blocks) - 1]:  # type: ignore[arg-type]
            kept.append(blk)
            row = rows[blocks.index(blk)] if len(kept) == 1 else self.build(
                replace(base, fp32_blocks=tuple(kept)))
            if len(kept) > 1:
                rows.append(row)
            if self.within(row):
                return row, rows
        return None, rows

    def latency(self, rounds: int, round_size: int = 20) -> dict[str, float]:
        """Batch-1 p50 (ms) of every graph tried and of FP32, timed in interleaved rounds on the
        A half's sentences (drift hits every graph alike), one thread per core."""
        import onnxruntime as ort

        from common.timing import time_each

        sessions = {"fp32": ort.InferenceSession(str(self.fp32), providers=["CPUExecutionProvider"])}
        sessions.update({k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                         for k, p in self.graphs.items()})
        idx = self.a[: rounds * round_size]
        feeds = [self.enc.batch([int(i)], self.names) for i in idx]
        runs = {k: functools.partial(s.run, ["logits"]) for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for run in runs.values():
            time_each(run, (), warmup=feeds[:10])
        order = list(sessions)
        for r in range(rounds):
            chunk = feeds[r * round_size:(r + 1) * round_size]
            for k in order[r % len(order):] + order[: r % len(order)]:  # first place rotates
                times[k] += time_each(runs[k], chunk)[0].tolist()
        return {k: 1e3 * float(np.median(v)) for k, v in times.items()}

    def spread(self, chosen: Recipe) -> list[dict[str, Any]]:
        """The chosen recipe rebuilt on calibration samples drawn with other seeds."""
        out = []
        for seed in self.cfg.spread_seeds:
            arrays = self.sampler(chosen.calib_rows, seed)
            row = self.build(chosen, CalibrationSet.from_arrays(arrays, self.batch_size),
                             tag=f" (calibration seed {seed})")
            out.append({"seed": seed, **{k: row[k] for k in ("kl", "top1", "val_b_macro_f1",
                                                             "val_b_drop_pt")}})
        return out


def search_static_ptq(fp32: Path, out: Path, calib: Path, names: list[str], batch_size: int,
                      cfg: StaticConfig, val_enc: Any, val_labels: np.ndarray, ffn_out: str,
                      sampler: Any = None) -> dict[str, Any]:
    """Search, write the chosen graph to `out`, return what the manifest and report record.
    sampler(rows, seed) -> calibration arrays (for the calibration-seed spread)."""
    from common.onnx_graph import op_counts

    work = Path(tempfile.mkdtemp(prefix="ptq-search-"))
    try:
        s = Search(fp32, calib, names, batch_size, cfg, val_enc, val_labels, ffn_out, work, sampler)
        chosen, path = s.run()
        recipe = Recipe(**{**chosen["recipe"], "fp32_blocks": tuple(chosen["recipe"]["fp32_blocks"])})
        shutil.copy(path, out)
        spread = s.spread(recipe) if sampler and cfg.spread_seeds else []
        lat = s.latency(cfg.latency_rounds)
        for row in s.tried:
            row["latency_ms_b1"] = lat[row["label"]]
            row["speedup_vs_fp32_b1"] = lat["fp32"] / lat[row["label"]]
        drops = [chosen["val_b_drop_pt"]] + [x["val_b_drop_pt"] for x in spread]
        return {
            "search": {
                "criterion": "mean KL(FP32 || INT8) on validation half A (top-1 agreement next)",
                "acceptance": f"validation half B macro F1 drop <= {cfg.tolerable_loss} pt; size "
                              f"<= {cfg.max_size_ratio} x FP32",
                "halves": {"a": int(len(s.a)), "b": int(len(s.b)), "split_seed": cfg.split_seed},
                "val_b_macro_f1_fp32": s.f1_fp32_b, "fp32_latency_ms_b1": lat["fp32"],
                "tried": s.tried, "chosen": chosen["label"], "within_tolerable_loss": s.within(chosen),
                "calibration_seed_spread": {"rows": spread, "val_b_drop_pt_mean": float(np.mean(drops)),
                                            "val_b_drop_pt_sd": float(np.std(drops, ddof=1)) if len(drops) > 1 else 0.0},
            },
            "static": recipe.as_dict(),
            "blocks_fp32": list(recipe.fp32_blocks),
            "val_drop_pt": chosen["val_b_drop_pt"],
            "kept_fp32_ops": ["LayerNormalization", "Softmax", "Erf (GELU)", "Add (residual/bias)",
                              "classification head"] + (
                ["attention MatMuls"] if recipe.placement == "no-attention" else []) + (
                ["feed-forward output MatMul"] if recipe.placement == "no-ffn-out" else []),
            "qdq_ops": {k: v for k, v in op_counts(out).items()
                        if k in {"QuantizeLinear", "DequantizeLinear"}},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_fixed(fp32: Path, out: Path, calib: Path, names: list[str], batch_size: int,
                recipe: Recipe, ffn_out: str, per_channel: bool = True) -> dict[str, Any]:
    """One recipe, no search (the TensorRT flavour of the chosen recipe)."""
    from common.onnx_graph import op_counts

    work = Path(tempfile.mkdtemp(prefix="ptq-fixed-"))
    try:
        pre = work / "pre.onnx"
        preprocess(fp32, pre)
        nodes = quantizable_nodes(pre, ffn_out)
        quantize(pre, out, CalibrationSet(calib, batch_size, names, recipe.calib_rows), recipe,
                 select(nodes, recipe), per_channel, work / "ranges.json")
        return {"static": recipe.as_dict(), "blocks_fp32": list(recipe.fp32_blocks),
                "qdq_ops": {k: v for k, v in op_counts(out).items()
                            if k in {"QuantizeLinear", "DequantizeLinear"}}}
    finally:
        shutil.rmtree(work, ignore_errors=True)
