"""python -m deploy serve       --variant ort/fp32 [--max-batch 32] [--queue-delay-us 0]
                              [--instances 1] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
python -m deploy triton-repo --out model_repository/ [--variant ort/ptq-fused] [--cpu]
python -m deploy bench       [--variant ort/fp32] [--url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001]
python -m deploy k8s         --out k8s/ [--variant ort/ptq-fused] [--cpu] [--image ...] [--hpa-metric cpu|queue]
python -m deploy gpu-bundle  [--out gpu-bundle/bundle.tar] [--cuda 130]   one offline archive for a GPU host

The config flags of each subcommand are generated from its frozen config (ServeConfig, K8sConfig,
BenchConfig, GpuBundleConfig), as engines' and evaluate's are."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.cliconfig import add_config_flags, parse_args
from common.errors import ConfigError, cli


def _serve_args(p: argparse.ArgumentParser) -> None:
    """ServeConfig's flags (generated from its fields); the scheduling ones default to the
    device's measured preset (deploy.triton_repo), so they are applied over it."""
    from common.config import add_flags
    from common.variants import backends, variants
    from deploy.triton_repo import ServeConfig

    add_flags(p, ServeConfig, title="the served variant and its scheduling (ServeConfig)",
              choices={"backend": list(backends())})
    p.epilog = "variants: " + ", ".join(v.key for v in variants())
    p.add_argument("--artifacts", default="artifacts")


def _serve_config(a, gpu: bool = False):
    """The flags given, over the device's defaults (CPU: measured by `make bench`)."""
    from common.config import from_flags
    from deploy.triton_repo import CPU_DEFAULTS, GPU_DEFAULTS, ServeConfig

    if a.spin is not None and (a.backend or "ort") != "ort" and "/" not in (a.variant or ""):
        raise ConfigError(f"--spin / --no-spin is an ONNX Runtime setting; backend {a.backend} "
                          "has none")
    if a.variant and "/" in a.variant:
        a.backend, a.variant = a.variant.split("/", 1)
    return from_flags(ServeConfig, a, **(GPU_DEFAULTS if gpu else CPU_DEFAULTS))


def serve(a) -> int:
    from common.variants import find_variant
    from deploy.triton_repo import write_local_repo
    from deploy.triton_server import Ports, TritonServer

    repo = Path(a.repo)
    sc = _serve_config(a)
    if find_variant(sc.backend, sc.variant).batch_dependent and sc.dynamic_batching:
        print(f"warning: {sc.backend}/{sc.variant} is batch-dependent (dynamic INT8: activation "
              "ranges per batch), so behind the dynamic batcher a request's answer can depend on "
              "other requests; --no-dynamic-batching or a static variant (ptq, qat) avoids it",
              file=sys.stderr)
    write_local_repo(repo, sc, Path(a.artifacts))
    server = TritonServer(repo, Ports(a.http_port, a.grpc_port, a.metrics_port),
                          log=repo.parent / "tritonserver.log", host=a.host)
    stop = {"now": False}

    def on_signal(signum, frame) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"serving {sc.backend}/{sc.variant} as model '{sc.model_name}': HTTP http://{server.url}, "
          f"gRPC {server.grpc_url}, metrics http://127.0.0.1:{a.metrics_port}/metrics "
          f"(log: {server.log}); Ctrl-C or SIGTERM stops it")
    assert server.proc is not None
    while not stop["now"] and server.proc.poll() is None:
        try:
            server.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    if server.proc.poll() is not None and not stop["now"]:
        print(f"error: tritonserver stopped by itself: {server.failure_reason()}", file=sys.stderr)
        return 1
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0


def triton_repo(a) -> int:
    from deploy.ngc_repo import write_ngc_repo

    r = write_ngc_repo(Path(a.out), Path(a.artifacts), _serve_config(a, gpu=not a.cpu),
                       gpu=not a.cpu)
    print(f"model repository -> {a.out}: {r['serves']}, tokenizer, postprocess; ensemble "
          f"'{r['ensemble']}' (start tritonserver with --disable-auto-complete-config, as "
          "docker/Dockerfile.triton does, so the configs are taken as written)")
    return 0


def k8s(a) -> int:
    from common.config import from_flags
    from deploy.k8s import K8sConfig, write_manifests

    fixed: dict[str, Any] = {"gpus": 0} if a.cpu else {}
    kc = from_flags(K8sConfig, a, **fixed)
    paths = write_manifests(Path(a.out), _serve_config(a, gpu=kc.gpus > 0), kc)
    print(f"Kubernetes manifests -> {', '.join(str(p) for p in paths)} (for the repository of "
          "`python -m deploy triton-repo`; validate with `kubectl apply --dry-run=server -f`)")
    return 0


def bench(a) -> int:
    from common.config import from_flags
    from deploy.bench import BenchConfig, run_bench, write_bench_report

    cfg = from_flags(BenchConfig, a, serve=_serve_config(a))
    r = run_bench(cfg)
    paths = write_bench_report(r, Path(cfg.out))
    print(f"serving benchmark -> {paths['md']}; goals: {r['goals']}")
    if r.get("recommended"):
        print(f"recommended on this machine: {r['recommended']['server']} ({r['recommended']['rule']})")
    return 0


def gpu_bundle(a) -> int:
    from common.config import from_flags
    from deploy.gpu_bundle import GpuBundleConfig, build_bundle

    m = build_bundle(from_flags(GpuBundleConfig, a))
    print(f"GPU bundle {m['bundle']} -> {a.out or GpuBundleConfig().out} "
          f"({m['archive_bytes'] / 2**20:.1f} MiB); on the GPU host: {m['run']}")
    return 0


def check_output(a: argparse.Namespace) -> None:
    """Where the subcommand writes, checked before it loads or measures anything (one line
    naming the path: a file, read-only, no room)."""
    from common.workdir import check_writable

    if a.cmd == "triton-repo":  # replaced as a whole (common.manifest.atomic_output)
        if Path(a.out).exists():
            check_writable(a.out, 0, "--out")
        check_writable(Path(a.out).resolve().parent, 1 << 20, f"--out {a.out}: its parent")
    elif a.cmd == "gpu-bundle":
        from deploy.gpu_bundle import GpuBundleConfig

        out = Path(a.out or GpuBundleConfig().out)
        check_writable(out.resolve().parent if out.parent.exists() else Path("."), 80 << 20,
                       f"--out {out}: its folder")
    elif a.cmd == "bench":
        from deploy.bench import BenchConfig

        check_writable(a.out or BenchConfig().out, 1 << 20, "--out")
    else:
        check_writable(a.repo if a.cmd == "serve" else a.out, 1 << 20,
                       "--repo" if a.cmd == "serve" else "--out")


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="a real Triton server on this machine")
    _serve_args(s)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--repo", default="model_repository_local/repo", help="where the generated repository goes")
    r = sub.add_parser("triton-repo", help="a model repository for the NGC tritonserver image")
    _serve_args(r)
    r.add_argument("--out", default="model_repository")
    r.add_argument("--cpu", action="store_true", help="KIND_CPU instances (default: KIND_GPU)")
    k = sub.add_parser("k8s", help="Kubernetes / KServe manifests for the NGC repository")
    _serve_args(k)
    k.add_argument("--out", default="k8s")
    k.add_argument("--cpu", action="store_true",
                   help="no GPU requested (= --gpus 0), for the repository of `triton-repo --cpu`")
    from common.config import add_flags
    from deploy.bench import BenchConfig
    from deploy.k8s import K8sConfig

    add_flags(k, K8sConfig, title="deployment (K8sConfig)")
    b = sub.add_parser("bench", help="load benchmark (starts its own servers unless --url)")
    _serve_args(b)
    add_flags(b, BenchConfig, skip=("serve", "artifacts"), title="the sweep (BenchConfig)")
    from deploy.gpu_bundle import GpuBundleConfig

    g = sub.add_parser("gpu-bundle", help="one offline archive (<= 64 MiB) a GPU host runs: "
                                          "source, task, base model, wheels, run script")
    add_flags(g, GpuBundleConfig, title="the bundle (GpuBundleConfig)")
    for one in (s, r, k, b, g):
        add_config_flags(one)
    a = parse_args(p, argv)
    if a.cmd == "gpu-bundle":
        check_output(a)
        return gpu_bundle(a)
    _serve_config(a)  # an unknown variant or a bad flag is refused before anything is written
    check_output(a)
    return {"serve": serve, "triton-repo": triton_repo, "k8s": k8s, "bench": bench}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
