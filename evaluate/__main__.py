"""python -m evaluate --backend torch|ort|trt|qlora [--variant fp32] [--data ...] [--split test]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.data import DEFAULT_DATASET, DatasetError
from common.manifest import ArtifactError
from common.modelsource import ModelSourceError
from deploy.runner import RunnerError
from evaluate.report import write_report
from evaluate.run import EvalConfig, evaluate


def parse(argv: list[str] | None = None) -> EvalConfig:
    p = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__)
    p.add_argument("--backend", required=True, choices=["torch", "ort", "trt", "qlora"])
    p.add_argument("--variant", default="fp32")
    p.add_argument("--data", default=DEFAULT_DATASET)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="0 = every core available")
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch device / ORT provider)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--out", default="reports")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--latency-samples", type=int, default=0, help="0 = every sentence of the split")
    p.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    a = p.parse_args(argv)
    return EvalConfig(backend=a.backend, variant=a.variant, data=a.data, split=a.split,
                      batch_size=a.batch_size, threads=a.threads, device=a.device,
                      artifacts=a.artifacts, out=a.out, warmup=a.warmup,
                      latency_samples=a.latency_samples, limit=a.limit)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    try:
        result = evaluate(cfg)
    except (RunnerError, ArtifactError, DatasetError, ModelSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_report(result, Path(cfg.out))
    lat = result["latency_ms"]
    print(f"{cfg.backend}/{cfg.variant}: macro F1 {result['macro_f1']:.4f}, accuracy "
          f"{result['accuracy']:.4f}, {result['size_mb']:.1f} MB, batch-1 p50 {lat['p50']:.2f} ms, "
          f"{result['throughput']['examples_per_s']:.0f} ex/s at batch {cfg.batch_size} "
          f"({result['threads']} threads) -> {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
