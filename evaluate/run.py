"""Score one backend/variant on a split: quality, size, batch-1 latency, batched throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from common.data import DEFAULT_DATASET, load_split
from common.env import cpu_device, versions
from common.feeds import batches, encode
from common.manifest import Manifest, size_bytes
from common.modelsource import load_tokenizer
from deploy.registry import baseline_meta, default_threads, make_runner
from evaluate.metrics import classification_metrics, latency_stats


@dataclass(frozen=True)
class EvalConfig:
    backend: str
    variant: str = "fp32"
    data: str = DEFAULT_DATASET
    split: str = "test"
    batch_size: int = 32
    threads: int = 0  # 0 = every core this process may use
    device: str = "cpu"  # cpu | cuda (torch device / ORT provider)
    artifacts: str = "artifacts"
    out: str = "reports"
    warmup: int = 20
    latency_samples: int = 0  # batch-1 latency over the first N sentences (0 = all)
    limit: int = 0  # first N rows of the split (0 = all); for tests


# Manifest fields that say how a variant was made (quantized layers, hyperparameters, checks);
# copied into its report so the numbers and the recipe travel together.
MADE_BY_KEYS = ("quantization", "qat", "qat_training", "qdq", "agreement_vs_fakequant",
                "static", "blocks_fp32", "val_drop_pt", "quantized_ops", "trt")


def made_by(man: Manifest, backend: str, variant: str) -> dict:
    from deploy.registry import find_variant

    name = find_variant(backend, variant).artifact
    e = man.get(name)
    return {"artifact": name, "recipe": e["recipe"], **{k: e[k] for k in MADE_BY_KEYS if k in e}}


def evaluate(cfg: EvalConfig) -> dict:
    artifacts = Path(cfg.artifacts)
    threads = cfg.threads or default_threads()
    meta = baseline_meta(artifacts)
    max_length = int(meta["config"]["max_length"])
    split = load_split(cfg.data, cfg.split)
    if cfg.limit:
        split = split.head(cfg.limit)
    man = Manifest(artifacts)
    tokenizer = load_tokenizer(artifacts / man.get("baseline")["path"])
    enc = encode(tokenizer, split.texts, max_length)  # tokenized once, reused by every pass
    y = np.asarray(split.labels)

    runner = make_runner(cfg.backend, cfg.variant, artifacts, threads, cfg.device)
    with runner:
        names = runner.input_names
        # Batched pass: dataset order, each batch padded to its own longest sentence.
        plan = batches(len(enc), cfg.batch_size)
        for b in plan[: min(3, len(plan))]:
            runner.infer(enc.batch(b, names))
        logits, batch_times = [], []
        for b in tqdm(plan, desc=f"{cfg.backend}/{cfg.variant} batch {cfg.batch_size}", leave=False):
            feed = enc.batch(b, names)
            t0 = time.perf_counter()
            logits.append(runner.infer(feed))
            batch_times.append(time.perf_counter() - t0)
        all_logits = np.concatenate(logits)
        if not np.isfinite(all_logits).all():
            from deploy.runner import RunnerError

            raise RunnerError(f"{cfg.backend}/{cfg.variant} produced non-finite logits; refusing to score them")
        # Batch-1 pass over real sentences, unpadded, after warm-up.
        n_lat = min(cfg.latency_samples or len(enc), len(enc))
        for i in range(min(cfg.warmup, n_lat)):
            runner.infer(enc.batch([i], names))
        lat = []
        for i in tqdm(range(n_lat), desc=f"{cfg.backend}/{cfg.variant} batch 1", leave=False):
            feed = enc.batch([i], names)
            t0 = time.perf_counter()
            runner.infer(feed)
            lat.append(time.perf_counter() - t0)
        info = runner.info()
        files = runner.files()

    metrics = classification_metrics(y, all_logits.argmax(-1))
    total_bytes = sum(size_bytes(f) for f in files)
    device = cpu_device() if info.get("device", "cpu") == "cpu" else info.get("device_info", {
        "kind": info.get("device")})
    return {
        "backend": cfg.backend, "variant": cfg.variant,
        "model": meta.get("base_model"), "device": device, "threads": threads,
        "provider": info.get("provider"), "runner": info,
        "data": split.source, "split": cfg.split, "n_examples": len(split),
        **metrics,
        "size_mb": total_bytes / 1e6,
        "size_note": "bytes on disk of the files the runner loads (" +
                     ", ".join(Path(f).name for f in files) + "); tokenizer excluded",
        "latency_ms": latency_stats(lat),
        "batched_latency_ms": {**latency_stats(batch_times), "batch_size": cfg.batch_size},
        "throughput": {"examples_per_s": len(enc) / float(np.sum(batch_times)),
                       "batch_size": cfg.batch_size},
        "measurement": {
            "batch1": f"{n_lat} real {cfg.split} sentences one at a time, unpadded, after "
                      f"{min(cfg.warmup, n_lat)} warm-up runs; wall clock around infer()",
            "batched": f"{len(plan)} batches of {cfg.batch_size} in {cfg.split} order, each padded "
                       "to its longest sentence, after 3 warm-up batches",
            "max_length": max_length, "truncated_texts": enc.truncated,
        },
        "versions": versions(), "config": asdict(cfg),
        "made_by": made_by(man, cfg.backend, cfg.variant),
        **({"weight_memory": {**info["weight_memory"], "fp32_weight_bytes": info.get("fp32_weight_bytes"),
                              "note": "in-memory weight bytes of the NF4 model (packed 4-bit + "
                                      "quantization state + FP parts); size_mb above is the adapter "
                                      "files on disk"}, "qlora": info.get("qlora")}
           if "weight_memory" in info else {}),
        "logits": all_logits,
    }
