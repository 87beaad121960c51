"""Score one backend/variant on a split: quality at batch 1 (each request on its own, as a
per-request deployment answers) and batched, size as deployed, weight bytes in memory, batch-1
latency, batched throughput.

Dynamic INT8 takes activation ranges per batch (padding included), so its predictions depend on
what else is in the batch. The headline macro F1 is therefore the batch-1 one; the batched F1 and
the number of predictions that differ between the two passes ("batch-invariant") stand beside it.

Timing: every distinct input shape of a pass runs once, timed apart as the cold first calls
(attention plans, CUDA-graph capture, kernel choice and allocator growth happen there), before the
pass itself is timed; latency percentiles and throughput come from the warm pass only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import baseline_encoder, baseline_meta
from common.config import doc
from common.data import SPLITS
from common.env import cpu_device, gpu_memory, reset_gpu_peak, versions
from common.errors import ConfigError
from common.feeds import batches
from common.manifest import Manifest, size_bytes
from common.metrics import classification_metrics, latency_stats
from common.modelsource import display_model
from common.task import brief, scoring_task
from common.timing import first_calls, time_each
from deploy.factories import default_threads, find_variant, make_runner
from deploy.runner import RunnerError


@dataclass(frozen=True)
class EvalConfig:
    backend: str = doc("", "ort | torch | qlora | trt; or give --variant as backend/name")
    variant: str = doc("fp32", "the variant's name (or backend/name); `--help` lists them")
    data: str = doc("", "the rows to score: empty = the task the artifacts were built for; or a "
                    "Hub name / local folder read with that task's columns and labels")
    split: str = doc("test", "train | validation | test")
    batch_size: int = doc(32, "batch of the batched pass")
    threads: int = doc(0, "0 = every core this process may use")
    device: str = doc("cpu", "cpu | cuda (torch device / ONNX Runtime provider)")
    artifacts: str = "artifacts"
    out: str = "reports"
    latency_samples: int = doc(0, "batch-1 latency over the first N sentences (0 = all)")
    limit: int = doc(0, "first N rows of the split (0 = all)")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, not {self.batch_size}")
        for name in ("threads", "latency_samples", "limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (0 = "
                                  f"{'every core' if name == 'threads' else 'all'}), not "
                                  f"{getattr(self, name)}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {SPLITS}, not {self.split!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be cpu or cuda[:N], not {self.device!r}")


# Manifest fields that say how a variant was made (quantized layers, hyperparameters, checks);
# copied into its report so the numbers and the recipe travel together.
MADE_BY_KEYS = ("quantization", "qat", "qat_training", "qdq", "agreement_vs_fakequant",
                "static", "blocks_fp32", "val_drop_pt", "quantized_ops", "trt", "search")


def variant_stamp(man: Manifest, backend: str, variant: str) -> dict[str, Any]:
    """What the report measured: the artifact's hash, key (recipe + inputs, the code's
    fingerprint among them) and recipe, so a publisher can check it against the manifest."""
    name = find_variant(backend, variant).artifact
    e = man.get(name)
    return {**man.stamp(name), **{k: e[k] for k in MADE_BY_KEYS if k in e}}


def _finite(logits: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise RunnerError(f"{what} produced non-finite logits; refusing to score them")
    return logits


def _cold(times: dict[tuple[int, ...], float]) -> dict[str, Any]:
    return {**latency_stats(list(times.values())), "shapes": len(times)}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    artifacts = Path(cfg.artifacts)
    threads = cfg.threads or default_threads()
    # the runner first: a missing library or artifact is said before any data is read
    runner = make_runner(cfg.backend, cfg.variant, artifacts, threads, cfg.device)
    task = scoring_task(artifacts, cfg.data)
    whole = task.split(cfg.split)
    split = whole.head(cfg.limit) if cfg.limit else whole
    man = Manifest(artifacts)
    te = baseline_encoder(artifacts)
    enc = te.encode_split(split)  # tokenized once, reused by every pass
    y = np.asarray(split.labels)
    what = f"{cfg.backend}/{cfg.variant}"
    reset_gpu_peak(cfg.device)
    with runner:
        names = runner.input_names
        # Batched pass: dataset order, each batch padded to its own longest sentence.
        plan = batches(len(enc), cfg.batch_size)
        feeds = [enc.batch(b, names) for b in plan]
        cold_batched = first_calls(runner.infer, feeds, progress=f"{what} first calls per shape")
        batch_times, outs = time_each(runner.infer, feeds, progress=f"{what} batch {cfg.batch_size}",
                                      keep=True)
        batched_logits = _finite(np.concatenate(outs), what)
        # Batch-1 pass over every sentence, unpadded: the predictions a per-request deployment
        # gives, and the latency of the first n_lat of them.
        singles = [enc.batch([i], names) for i in range(len(enc))]
        cold_b1 = first_calls(runner.infer, singles, progress=f"{what} first calls per length")
        n_lat = min(cfg.latency_samples or len(enc), len(enc))
        lat, outs = time_each(runner.infer, singles, progress=f"{what} batch 1", keep=True)
        logits = _finite(np.concatenate(outs), what)
        info = runner.info()
        files = runner.files()
        gpu_mem = gpu_memory(cfg.device)  # before the runner lets its memory go

    metrics = classification_metrics(y, logits.argmax(-1), task.labels)
    batched = classification_metrics(y, batched_logits.argmax(-1), task.labels)
    differ = int((logits.argmax(-1) != batched_logits.argmax(-1)).sum())
    device = cpu_device() if info.get("device", "cpu") == "cpu" else info.get("device_info", {
        "kind": info.get("device")})
    base = baseline_meta(artifacts).get("base_model")
    return {
        "backend": cfg.backend, "variant": cfg.variant,
        "model": display_model(base.get("source") if isinstance(base, dict) else base),
        "device": device,
        "threads": threads, "provider": info.get("provider"), "runner": info,
        "data": split.display, "split": cfg.split, "n_examples": len(split),
        "data_fingerprint": split.fingerprint,  # the rows scored (a --limit or --data changes it)
        "task": brief(task.summary()),
        # a --limit slice is not the split's result (model cards say so): both counts travel
        "rows": {"scored": len(split), "split_rows": len(whole), "slice": len(split) < len(whole)},
        "labels": y.tolist(),  # for the comparison's paired bootstrap
        **metrics,
        "scored_at": "batch 1 (every sentence on its own, unpadded)",
        "batched": {"batch_size": cfg.batch_size, "macro_f1": batched["macro_f1"],
                    "accuracy": batched["accuracy"], "per_class": batched["per_class"]},
        "batch_invariance": {"differ": differ, "batch_invariant": differ == 0,
                             "max_abs_logit_diff": float(np.abs(logits - batched_logits).max())},
        "size_mb": sum(size_bytes(f) for f in files) / 1e6,
        "size_note": "bytes on disk of what the variant ships and its runner loads (" +
                     ", ".join(sorted({Path(f).name for f in files})) + "); tokenizer excluded",
        "weights_in_memory_mb": info.get("weight_bytes", 0) / 1e6 or None,
        **({"gpu_memory": gpu_mem} if gpu_mem else {}),
        "latency_ms": latency_stats(lat[:n_lat]),
        "batched_latency_ms": {**latency_stats(batch_times), "batch_size": cfg.batch_size},
        "throughput": {"examples_per_s": len(enc) / float(np.sum(batch_times)),
                       "batch_size": cfg.batch_size},
        "cold_first_calls_ms": {"batch1": _cold(cold_b1), "batched": _cold(cold_batched)},
        "measurement": {
            "batch1": f"{n_lat} real {cfg.split} sentences one at a time, unpadded, after one "
                      f"untimed-for-the-pass call per distinct length ({len(cold_b1)}); wall clock "
                      "around infer()",
            "batched": f"{len(plan)} batches of {cfg.batch_size} in {cfg.split} order, each padded "
                       f"to its longest sentence, after one call per distinct shape "
                       f"({len(cold_batched)})",
            "max_length": te.max_length, "truncated_texts": enc.truncated,
        },
        "versions": versions(), "config": asdict(cfg),
        "made_by": variant_stamp(man, cfg.backend, cfg.variant),
        **({"weight_memory": {**info["weight_memory"], "fp32_weight_bytes": info.get("fp32_weight_bytes"),
                              "note": "in-memory weight bytes of the NF4 model (packed 4-bit + "
                                      "quantization state + FP parts)"}, "qlora": info.get("qlora")}
           if "weight_memory" in info else {}),
        "logits": logits, "batched_logits": batched_logits,
    }
