"""Load benchmark of a served variant: tritonclient (HTTP and gRPC) against 127.0.0.1 only, real
test sentences as payload, a sweep of concurrent clients, bounded in requests and seconds per
point, with dynamic batching on and off (two servers started here, one after the other), then
the whole test split through the server compared with the in-process predictions.

Writes reports/serve-<backend>-<variant>.{json,md,png}.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data import DEFAULT_DATASET, load_split
from common.env import cpu_device, versions
from common.errors import ConfigError
from deploy.triton_repo import ServeConfig, write_local_repo


@dataclass(frozen=True)
class BenchConfig:
    serve: ServeConfig = field(default_factory=ServeConfig)
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    protocols: tuple[str, ...] = ("http", "grpc")
    dynamic_batching: tuple[bool, ...] = (True, False)
    requests_per_point: int = 500
    seconds_per_point: float = 30.0
    url: str = ""  # host:port of a running server's HTTP endpoint (then no server is started)
    grpc_url: str = ""
    data: str = DEFAULT_DATASET
    artifacts: str = "artifacts"
    out: str = "reports"
    agreement_rows: int = 0  # test rows sent for the agreement check (0 = the whole split)

    def __post_init__(self) -> None:
        for u in (self.url, self.grpc_url):
            if u and u.rsplit(":", 1)[0] not in {"127.0.0.1", "localhost", "[::1]"}:
                raise ConfigError(f"{u}: the benchmark drives loopback servers only (127.0.0.1)")
        if set(self.protocols) - {"http", "grpc"}:
            raise ConfigError("protocols are http and/or grpc")


def _client(protocol: str, url: str):
    if protocol == "http":
        import tritonclient.http as m
    else:
        import tritonclient.grpc as m  # type: ignore[no-redef]
    return m, m.InferenceServerClient(url)


def infer_texts(client_mod, client, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    x = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = client_mod.InferInput("text", list(x.shape), "BYTES")
    inp.set_data_from_numpy(x)
    r = client.infer(model, [inp])
    return {n: r.as_numpy(n) for n in ("label", "label_id", "probs")}


def server_batches(client, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) from Triton's statistics API (HTTP client)."""
    s = client.get_inference_statistics(model)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def sweep_point(protocol: str, url: str, stats_url: str, model: str, texts: list[str],
                concurrency: int, max_requests: int, max_seconds: float) -> dict[str, Any]:
    lock = threading.Lock()
    issued = [0]
    lat: list[float] = []
    failed: list[str] = []
    deadline = time.monotonic() + max_seconds

    def worker(k: int) -> None:
        mod, c = _client(protocol, url)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    i = issued[0]
                    issued[0] += 1
                t0 = time.perf_counter()
                try:
                    infer_texts(mod, c, model, [texts[(i * 7 + k) % len(texts)]])
                    with lock:
                        lat.append(time.perf_counter() - t0)
                except Exception as exc:  # counted and reported, never fatal to the sweep
                    with lock:
                        failed.append(str(exc)[:200])
        finally:
            c.close()

    import tritonclient.http as http

    stats = http.InferenceServerClient(stats_url)
    before = server_batches(stats, model)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = server_batches(stats, model)
    stats.close()
    ms = np.array(lat) * 1e3 if lat else np.array([np.nan])
    d_inf, d_exec = after[0] - before[0], after[1] - before[1]
    return {"concurrency": concurrency, "protocol": protocol, "requests": len(lat) + len(failed),
            "failed": len(failed), "failures": sorted(set(failed))[:5],
            "throughput_rps": len(lat) / wall, "wall_s": wall,
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())},
            "mean_server_batch": d_inf / d_exec if d_exec else None}


def agreement(url: str, model: str, texts: list[str], reference: np.ndarray, chunk: int) -> dict:
    """Send every text through the server (requests of `chunk` texts) and compare top-1."""
    import tritonclient.http as http

    c = http.InferenceServerClient(url)
    got = []
    try:
        for s in range(0, len(texts), chunk):
            got.append(infer_texts(http, c, model, texts[s:s + chunk])["label_id"].reshape(-1))
    finally:
        c.close()
    ids = np.concatenate(got)
    return {"n": int(len(ids)), "top1_pct": 100 * float((ids == reference).mean()),
            "differ_at": np.nonzero(ids != reference)[0][:20].tolist()}


def reference_predictions(cfg: BenchConfig, texts: list[str]) -> np.ndarray:
    """What the evaluator predicts: the variant's Runner on batches of 32 in test order."""
    from deploy.service import EmotionService

    svc = EmotionService(cfg.artifacts, cfg.serve.backend, cfg.serve.variant, cfg.serve.threads)
    try:
        return np.concatenate([svc.predict(texts[s:s + 32]).label_ids
                               for s in range(0, len(texts), 32)])
    finally:
        svc.close()


def run_bench(cfg: BenchConfig) -> dict:
    import dataclasses
    import tempfile

    from deploy.triton_server import TritonServer, free_ports

    test = load_split(cfg.data, "test")
    texts = list(test.texts[: cfg.agreement_rows] if cfg.agreement_rows else test.texts)
    ref = reference_predictions(cfg, texts)
    model = cfg.serve.model_name
    sweep, agree = [], None

    def run_sweep(http_url: str, grpc_url: str, dyn: bool | None) -> None:
        for protocol in cfg.protocols:
            for conc in cfg.concurrency:
                url = http_url if protocol == "http" else grpc_url
                row = sweep_point(protocol, url, http_url, model, texts, conc,
                                  cfg.requests_per_point, cfg.seconds_per_point)
                row["dynamic_batching"] = dyn
                print(f"  {protocol} x{conc:>3} dynamic={dyn}: {row['throughput_rps']:.1f} req/s, "
                      f"p50 {row['latency_ms']['p50']:.1f} ms, p99 {row['latency_ms']['p99']:.1f} ms, "
                      f"mean server batch {row['mean_server_batch']}, failed {row['failed']}")
                sweep.append(row)

    if cfg.url:
        run_sweep(cfg.url, cfg.grpc_url or cfg.url, None)
        agree = agreement(cfg.url, model, texts, ref, cfg.serve.max_batch)
    else:
        for dyn in cfg.dynamic_batching:
            with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
                repo = Path(tmp) / "repo"
                write_local_repo(repo, dataclasses.replace(cfg.serve, dynamic_batching=dyn),
                                 Path(cfg.artifacts))
                with TritonServer(repo, free_ports(), Path(tmp) / "server.log") as s:
                    run_sweep(s.url, s.grpc_url, dyn)
                    if agree is None:
                        agree = agreement(s.url, model, texts, ref, cfg.serve.max_batch)
    return {"backend": cfg.serve.backend, "variant": cfg.serve.variant, "device": cpu_device(),
            "threads": cfg.serve.threads or None, "server": "tritonserver 2.51 (nvidia-pytriton "
            "0.7.0 bundle), Python-backend model running the variant's Runner",
            "config": asdict(cfg), "sweep": sweep, "agreement": agree,
            "goals": goals(sweep, agree), "versions": versions()}


def goals(sweep: list[dict], agree: dict | None) -> dict:
    def row(c: int, proto: str = "grpc", dyn: bool | None = True) -> dict | None:
        rows = [r for r in sweep if r["concurrency"] == c and r["protocol"] == proto
                and r["dynamic_batching"] in (dyn, None)]
        return rows[0] if rows else None

    out: dict[str, Any] = {"failed_total": sum(r["failed"] for r in sweep),
                           "requests_total": sum(r["requests"] for r in sweep)}
    for proto in ("http", "grpc"):
        one, sixteen = row(1, proto), row(16, proto)
        if one and sixteen:
            out[f"{proto}_throughput_16_over_1"] = sixteen["throughput_rps"] / one["throughput_rps"]
            out[f"{proto}_p99_over_p50_at_16"] = sixteen["latency_ms"]["p99"] / sixteen["latency_ms"]["p50"]
    if agree:
        out["agreement_top1_pct"] = agree["top1_pct"]
    return out


def write_bench_report(r: dict, out: Path) -> dict[str, Path]:
    from common.reports import figure_name, write_report
    from deploy.bench_report import markdown, plot

    stem = f"serve-{r['backend']}-{r['variant']}"
    return write_report(out, stem, r, markdown(r, figure_name(stem)), {"": lambda p: plot(r, p)})
