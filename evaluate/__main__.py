"""python -m evaluate --backend torch|ort|trt|qlora [--variant fp32] [--data ...] [--split test]
python -m evaluate --all      every built variant on every backend available here + comparison
python -m evaluate --compare  rebuild reports/comparison.* from the reports already written
python -m evaluate --backend ort --speedup fp32-fused,fp32,ptq,qat
                              those variants timed in interleaved rounds -> reports/speedup-ort.*"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from common.data import DEFAULT_DATASET
from common.errors import ConfigError, UserError, cli
from common.manifest import Manifest
from evaluate.report import write_report
from evaluate.run import EvalConfig, evaluate


def parse(argv: list[str] | None = None) -> tuple[EvalConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["torch", "ort", "trt", "qlora"])
    p.add_argument("--variant", default="fp32")
    p.add_argument("--all", action="store_true", help="every built variant, then the comparison")
    p.add_argument("--compare", action="store_true", help="only rebuild the comparison")
    p.add_argument("--gpu-check", action="store_true",
                   help="score every GPU row this machine can into --out (one line per skip)")
    p.add_argument("--speedup", default="",
                   help="comma list of variants of --backend to time in interleaved rounds "
                        "(speed-up vs the first, or --reference)")
    p.add_argument("--reference", default="", help="with --speedup: the variant ratios divide by")
    p.add_argument("--readme", default=None,
                   help="with --all/--compare: write the comparison into this README's Results block")
    p.add_argument("--data", default=DEFAULT_DATASET)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="0 = every core available")
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch device / ORT provider)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--out", default="reports")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--latency-samples", type=int, default=0,
                   help="0 = every sentence of the split (--speedup: the first 2000)")
    p.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    a = p.parse_args(argv)
    if not (a.all or a.compare or a.backend or a.gpu_check):
        p.error("give --backend (with --variant), or --all, or --compare, or --gpu-check")
    if a.speedup and not a.backend:
        p.error("--speedup needs --backend (ratios are taken within one backend)")
    cfg = EvalConfig(backend=a.backend or "", variant=a.variant, data=a.data, split=a.split,
                     batch_size=a.batch_size, threads=a.threads, device=a.device,
                     artifacts=a.artifacts, out=a.out, warmup=a.warmup,
                     latency_samples=a.latency_samples, limit=a.limit)
    return cfg, a


def run_one(cfg: EvalConfig) -> Path:
    result = evaluate(cfg)
    paths = write_report(result, Path(cfg.out))
    lat = result["latency_ms"]
    inv = result["batch_invariance"]
    print(f"{cfg.backend}/{cfg.variant}: macro F1 {result['macro_f1']:.4f} at batch 1 "
          f"({result['batched']['macro_f1']:.4f} at batch {cfg.batch_size}; {inv['differ']} "
          f"predictions differ), accuracy {result['accuracy']:.4f}, {result['size_mb']:.1f} MB, "
          f"batch-1 p50 {lat['p50']:.2f} ms, "
          f"{result['throughput']['examples_per_s']:.0f} ex/s at batch {cfg.batch_size} "
          f"({result['threads']} threads) -> {paths['json']}")
    return paths["json"]


def run_all(base: EvalConfig, measure: bool = True) -> tuple[list[Path], list[dict]]:
    """Score every variant that can run here (measure=False: only list those that cannot)."""
    from common.trt import tensorrt_status
    from common.variants import VARIANTS

    man = Manifest(Path(base.artifacts))
    trt_ok, trt_why = tensorrt_status()
    done, missing = [], []
    for v in VARIANTS:
        if v.backend == "trt" and not trt_ok:
            missing.append({"backend": v.backend, "variant": v.variant, "reason": f"backend unavailable: {trt_why}"})
            continue
        if v.device == "cuda" and not base.device.startswith("cuda"):
            missing.append({"backend": v.backend, "variant": v.variant,
                            "reason": "runs on a CUDA GPU only (`make gpu-check` there)"})
            continue
        if man.skipped(v.artifact):  # the family or the machine cannot build it (engines says why)
            missing.append({"backend": v.backend, "variant": v.variant,
                            "reason": f"skipped by make engines: {man.skipped(v.artifact)}"})
            continue
        if v.artifact not in man.entries:
            missing.append({"backend": v.backend, "variant": v.variant,
                            "reason": f"not built ({v.artifact}): run `make engines`"})
            continue
        if not measure:
            continue
        try:
            cfg = dataclasses.replace(base, backend=v.backend, variant=v.variant)
            done.append(run_one(cfg))
        except UserError as exc:
            missing.append({"backend": v.backend, "variant": v.variant, "reason": str(exc)})
    return done, missing


def run_speedup_cli(cfg: EvalConfig, a: argparse.Namespace) -> None:
    from evaluate.speedup import SpeedupConfig, run_speedup, write_speedup

    try:
        sc = SpeedupConfig(backend=cfg.backend, variants=tuple(v for v in a.speedup.split(",") if v),
                           reference=a.reference, data=cfg.data, split=cfg.split,
                           sentences=cfg.latency_samples or SpeedupConfig.sentences, batch_size=cfg.batch_size,
                           warmup=cfg.warmup, threads=cfg.threads, device=cfg.device,
                           artifacts=cfg.artifacts, out=cfg.out)
    except ValueError as exc:
        raise ConfigError(f"--speedup: {exc}") from None
    r = run_speedup(sc)
    paths = write_speedup(r, Path(cfg.out))
    for x in r["rows"]:
        lo, hi = x["speedup_b1_ci95"]
        print(f"{cfg.backend}/{x['variant']}: batch-1 p50 {x['p50_ms']:.2f} ms, {x['speedup_b1']:.2f}x "
              f"vs {r['reference']} (95% {lo:.2f}-{hi:.2f}), batched {x['speedup_batched']:.2f}x")
    print(f"speed-up -> {paths['md']}")


@cli
def main(argv: list[str] | None = None) -> int:
    cfg, a = parse(argv)
    if a.gpu_check:
        from evaluate.gpu_check import run_gpu_check

        run_gpu_check(cfg, Path(cfg.out))
        return 0
    if a.all or a.compare:
        from evaluate.compare import write_comparison

        files, missing = run_all(cfg) if a.all else (None, run_all(cfg, measure=False)[1])
        paths = write_comparison(Path(cfg.out), missing, files)
        print(f"comparison -> {paths['md']}")
        if a.readme:
            from evaluate.compare import update_readme

            update_readme(Path(a.readme), paths["md"], Path(a.readme).parent / "docs" / "results")
            print(f"results section of {a.readme} updated")
    elif a.speedup:
        run_speedup_cli(cfg, a)
    else:
        run_one(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
