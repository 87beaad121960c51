"""python -m deploy serve       --backend ort --variant fp32 [--max-batch 32] [--queue-delay-us 0]
                              [--instances 1] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
python -m deploy triton-repo --out model_repository/ [--backend ort --variant fp32] [--cpu]
python -m deploy bench       [--backend ort --variant fp32] [--url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001]
python -m deploy k8s         --out k8s/ [--image ...] [--storage-uri ...] [--hpa-metric cpu|queue]"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from common.data import DEFAULT_DATASET
from common.errors import ConfigError, cli


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="ort", choices=["ort", "torch", "qlora", "trt"])
    p.add_argument("--variant", default="fp32")
    p.add_argument("--model-name", default="emotion")
    p.add_argument("--max-batch", type=int, default=32)
    # scheduling flags default to the device's measured preset (deploy.triton_repo)
    p.add_argument("--queue-delay-us", type=int, default=None)
    p.add_argument("--dynamic-batching", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--instances", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="per model instance; 0 = every core")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX Runtime's intra-op threads spin-wait between requests (ort only)")
    p.add_argument("--artifacts", default="artifacts")


def _serve_config(a, gpu: bool = False):
    """The flags given, over the device's defaults (CPU: measured by `make bench`)."""
    from deploy.triton_repo import CPU_DEFAULTS, GPU_DEFAULTS, ServeConfig

    preset = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    if a.spin is not None and a.backend != "ort":
        raise ConfigError(f"--spin / --no-spin is an ONNX Runtime setting; backend {a.backend} "
                          "has none")
    chosen = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in preset.items()}
    return ServeConfig(backend=a.backend, variant=a.variant, model_name=a.model_name,
                       max_batch=a.max_batch, **chosen)


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
    print(f"serving {a.backend}/{a.variant} as model '{a.model_name}': HTTP http://{server.url}, "
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

    paths = write_manifests(Path(a.out), _serve_config(a, gpu=True), from_flags(K8sConfig, a))
    print(f"Kubernetes manifests -> {', '.join(str(p) for p in paths)} (for the repository of "
          "`python -m deploy triton-repo`; validate with `kubectl apply --dry-run=server -f`)")
    return 0


def _spins(text: str) -> tuple[bool, ...]:
    words = [w for w in text.split(",") if w]
    if not words or set(words) - {"on", "off"}:
        raise ConfigError(f"--spins takes on and/or off (comma-separated), not {text!r}")
    return tuple(w == "on" for w in dict.fromkeys(words))


def bench(a) -> int:
    from deploy.bench import BenchConfig, run_bench, write_bench_report

    cfg = BenchConfig(serve=_serve_config(a), concurrency=tuple(int(x) for x in a.concurrency.split(",")),
                      protocols=tuple(a.protocols.split(",")), requests_per_point=a.requests,
                      seconds_per_point=a.seconds, url=a.url, grpc_url=a.grpc_url, data=a.data,
                      artifacts=a.artifacts, out=a.out, agreement_rows=a.agreement_rows,
                      queue_delays_us=tuple(int(x) for x in a.queue_delays.split(",") if x),
                      layouts=tuple(x for x in a.layouts.split(",") if x),
                      spins=_spins(a.spins))
    r = run_bench(cfg)
    paths = write_bench_report(r, Path(a.out))
    print(f"serving benchmark -> {paths['md']}; goals: {r['goals']}")
    if r.get("recommended"):
        print(f"recommended on this machine: {r['recommended']['server']} ({r['recommended']['rule']})")
    return 0


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
    from common.config import add_flags
    from deploy.k8s import K8sConfig

    add_flags(k, K8sConfig)
    b = sub.add_parser("bench", help="load benchmark (starts its own servers unless --url)")
    _serve_args(b)
    b.add_argument("--url", default="", help="HTTP host:port of a running server (loopback only)")
    b.add_argument("--grpc-url", default="")
    b.add_argument("--concurrency", default="1,16")
    b.add_argument("--queue-delays", default="0,100,500,2000", help="us, dynamic batcher on")
    b.add_argument("--layouts", default="1x2,2x1", help="instances x threads per instance")
    b.add_argument("--spins", default="on,off",
                   help="ONNX Runtime thread spinning swept where an instance has >1 thread")
    b.add_argument("--protocols", default="http,grpc,raw",
                   help="http / grpc: tritonclient; raw: KServe v2 JSON over http.client")
    b.add_argument("--requests", type=int, default=500, help="per sweep point")
    b.add_argument("--seconds", type=float, default=30.0, help="per sweep point")
    b.add_argument("--agreement-rows", type=int, default=0, help="0 = the whole test split")
    b.add_argument("--data", default=DEFAULT_DATASET)
    b.add_argument("--out", default="reports")
    a = p.parse_args(argv)
    return {"serve": serve, "triton-repo": triton_repo, "k8s": k8s, "bench": bench}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
