"""python -m evaluate --variant ort/ptq [--data ...] [--split test]   (or --backend ort --variant ptq)
python -m evaluate --all      every built variant that can run here, then the comparison
python -m evaluate --compare  rebuild reports/comparison.* from the reports already written
python -m evaluate --gpu-check every GPU row this machine can score (one line per skip or failure)
python -m evaluate --backend ort --speedup default  (or a comma list of variants)
                              variants timed in interleaved rounds -> reports/speedup-ort.*
python -m evaluate --backend ort --profile-ops default  (or a comma list of variants)
                              ONNX Runtime's per-op profile at batch 1 -> reports/ops-ort.*
python -m evaluate --backend ort --saturation default  (or a comma list of variants)
                              INT8 graphs vs their exact twins -> reports/saturation-ort.*

Every EvalConfig field has a flag (generated from the dataclass, as engines' are)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from common.cliconfig import add_config_flags, parse_args
from common.config import add_flags, from_flags
from common.errors import ConfigError, UserError, cli
from common.manifest import Manifest
from common.variants import backends, find_variant, variants
from common.workdir import check_writable
from evaluate.report import write_report
from evaluate.run import EvalConfig, evaluate


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + "\n\nvariants: " + ", ".join(v.key for v in variants()))
    p.add_argument("--all", action="store_true", help="every built variant, then the comparison")
    p.add_argument("--compare", action="store_true", help="only rebuild the comparison")
    p.add_argument("--gpu-check", action="store_true",
                   help="score every GPU row this machine can into --out (one line per skip)")
    p.add_argument("--speedup", default="",
                   help="`default` (the registry's list for --backend) or a comma list of "
                        "variants of --backend to time in interleaved rounds")
    p.add_argument("--reference", default="", help="with --speedup: the variant ratios divide by")
    p.add_argument("--profile-ops", default="",
                   help="`default` (fused FP32 and the INT8 graphs built on it) or a comma list "
                        "of ort variants: time per op type at batch 1 (ONNX Runtime's profiler)")
    p.add_argument("--saturation", default="",
                   help="`default` (the INT8 graphs with S8 weights) or a comma list of ort "
                        "variants: does the answer change where U8S8 products saturate (no VNNI)")
    p.add_argument("--readme", default=None,
                   help="with --all/--compare: write the comparison into this README's Results block")
    add_flags(p, EvalConfig, title="what is scored and how (EvalConfig)",
              choices={"backend": list(backends()), "split": ["train", "validation", "test"]})
    # each mode's own fields, generated from its config like the rest (the fields EvalConfig
    # already has - rows, threads, folders - are taken from it)
    for cls, prefix in mode_configs():
        add_flags(p, cls, prefix=prefix, skip=SHARED, title=f"with --{prefix[:-1]} ({cls.__name__})")
    add_config_flags(p)
    return p


# fields a mode config shares with EvalConfig (or sets from its mode flag): one flag each
SHARED = ("backend", "variants", "reference", "data", "split", "batch_size", "threads", "device",
          "artifacts", "out")


def mode_configs() -> list[tuple[type, str]]:
    from evaluate.gpu_check import GpuCheckConfig
    from evaluate.op_profile import OpProfileConfig
    from evaluate.saturation import SaturationConfig
    from evaluate.speedup import SpeedupConfig

    return [(SpeedupConfig, "speedup-"), (OpProfileConfig, "profile-ops-"),
            (SaturationConfig, "saturation-"), (GpuCheckConfig, "gpu-check-")]


def mode_config(cls: type, prefix: str, cfg: EvalConfig, a: argparse.Namespace, **fixed: Any
                ) -> Any:
    """The mode's config: EvalConfig's shared fields, then `fixed`, then its own flags."""
    shared = {k: getattr(cfg, k) for k in SHARED if hasattr(cfg, k)}
    try:
        return from_flags(cls, a, prefix, **{**shared, **fixed})
    except ConfigError as exc:
        raise ConfigError(f"--{prefix[:-1]}: {exc}") from None


def parse(argv: list[str] | None = None) -> tuple[EvalConfig, argparse.Namespace]:
    p = parser()
    a = parse_args(p, argv)
    if not (a.all or a.compare or a.backend or a.gpu_check or (a.variant and "/" in a.variant)):
        p.error("give --variant backend/name (or --backend with --variant), or --all, "
                "--compare, --gpu-check")
    if a.speedup and not a.backend:
        p.error("--speedup needs --backend (ratios are taken within one backend)")
    if a.profile_ops and a.backend != "ort":
        p.error("--profile-ops profiles ONNX Runtime graphs: give --backend ort")
    if a.saturation and a.backend != "ort":
        p.error("--saturation checks ONNX Runtime graphs: give --backend ort")
    cfg = from_flags(EvalConfig, a)
    if a.variant and "/" in a.variant:  # --variant ort/ptq
        v = find_variant(cfg.backend, cfg.variant)
        cfg = dataclasses.replace(cfg, backend=v.backend, variant=v.variant)
    elif cfg.backend and not (a.all or a.compare or a.gpu_check or a.speedup or a.profile_ops
                              or a.saturation):
        find_variant(cfg.backend, cfg.variant)  # an unknown name fails here, with the list
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
    from common.variants import not_runnable

    man = Manifest(Path(base.artifacts))
    done, missing = [], []
    for v in variants():
        why = not_runnable(v, man, base.device)
        if why:
            missing.append({"backend": v.backend, "variant": v.variant, "reason": why})
            continue
        if not measure:
            continue
        try:
            done.append(run_one(dataclasses.replace(base, backend=v.backend, variant=v.variant)))
        except UserError as exc:
            missing.append({"backend": v.backend, "variant": v.variant, "reason": str(exc)})
    return done, missing


def variant_list(arg: str, default: tuple[str, ...], backend: str) -> tuple[str, ...]:
    """`default` or a comma list of variants of `backend`; an unknown name fails with the list."""
    names = default if arg == "default" else tuple(v for v in arg.split(",") if v)
    for name in names:
        find_variant(backend, name)
    return names


def run_speedup_cli(cfg: EvalConfig, a: argparse.Namespace) -> None:
    from common.variants import speedup_variants
    from evaluate.speedup import SpeedupConfig, run_speedup, write_speedup

    names = variant_list(a.speedup, speedup_variants(cfg.backend), cfg.backend)
    sc = mode_config(SpeedupConfig, "speedup-", cfg, a, variants=names, reference=a.reference)
    r = run_speedup(sc)
    paths = write_speedup(r, Path(cfg.out))
    for x in r["rows"]:
        lo, hi = x["speedup_b1_ci95"]
        print(f"{cfg.backend}/{x['variant']}: batch-1 p50 {x['p50_ms']:.2f} ms, {x['speedup_b1']:.2f}x "
              f"vs {r['reference']} (95% {lo:.2f}-{hi:.2f}), batched {x['speedup_batched']:.2f}x")
    print(f"speed-up -> {paths['md']}")


def run_profile_cli(cfg: EvalConfig, a: argparse.Namespace) -> None:
    from evaluate.op_profile import OpProfileConfig, default_variants, profile_ops, write_op_profile

    names = variant_list(a.profile_ops, default_variants(), "ort")
    pc = mode_config(OpProfileConfig, "profile-ops-", cfg, a, variants=names)
    r = profile_ops(pc)
    paths = write_op_profile(r, Path(cfg.out))
    for row in r["rows"]:
        top = ", ".join(f"{o['op']} {o['ms']:.2f}" for o in row["ops"][:4])
        print(f"ort/{row['variant']}: {row['run_ms']:.2f} ms per sentence profiled ({top} ...)")
    print(f"op profile -> {paths['md']}")


def run_saturation_cli(cfg: EvalConfig, a: argparse.Namespace) -> None:
    from evaluate.saturation import (
        SaturationConfig,
        check_saturation,
        default_variants,
        write_saturation,
    )

    names = variant_list(a.saturation, default_variants(), "ort")
    sc = mode_config(SaturationConfig, "saturation-", cfg, a, variants=names)
    r = check_saturation(sc)
    paths = write_saturation(r, Path(cfg.out))
    for x in r["rows"]:
        if "skipped" in x:
            print(f"ort/{x['variant']}: {x['skipped']}")
            continue
        print(f"ort/{x['variant']}: {x['predictions_differ']} of {r['sentences']} answers differ "
              f"from exact sums (max |dlogit| {x['max_abs_dlogit']:.3f}), macro F1 "
              f"{x['macro_f1_shipped']:.4f} vs {x['macro_f1_exact']:.4f}")
    print(f"saturation -> {paths['md']}")


@cli
def main(argv: list[str] | None = None) -> int:
    cfg, a = parse(argv)
    if a.gpu_check:  # checks --out itself, once it knows there is a GPU to score on
        from evaluate.gpu_check import GpuCheckConfig, run_gpu_check

        gc = mode_config(GpuCheckConfig, "gpu-check-", cfg, a)
        return run_gpu_check(cfg, Path(cfg.out), gc).exit_code
    check_writable(cfg.out, 1 << 20, "--out")  # before the scoring run, not after it
    if a.all or a.compare:
        from evaluate.compare import write_comparison

        files, missing = run_all(cfg) if a.all else (None, run_all(cfg, measure=False)[1])
        paths = write_comparison(Path(cfg.out), missing, files, Path(cfg.artifacts))
        print(f"comparison -> {paths['md']}")
        if a.readme:
            from evaluate.compare import update_readme

            update_readme(Path(a.readme), paths["md"], Path(a.readme).parent / "docs" / "results",
                          Path(cfg.artifacts))
            print(f"results section of {a.readme} updated")
    elif a.speedup:
        run_speedup_cli(cfg, a)
    elif a.profile_ops:
        run_profile_cli(cfg, a)
    elif a.saturation:
        run_saturation_cli(cfg, a)
    else:
        run_one(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
