"""Load benchmark of a served variant, and the serving defaults chosen from it.

Server configurations swept (each a server started here, one after the other): the dynamic
batcher off, and on with each queue delay (0 = Triton batches only what is already waiting), for
each layout of instances x threads per instance (1x2 and 2x1 on a 2-core machine). At each
configuration: one client and 16 concurrent clients (tritonclient over HTTP and gRPC, and a bare
http.client KServe v2 client; real test sentences, one text per request, bounded in requests and
seconds), the server's own CPU time per request (its process
group, read from /proc before and after), and the 1-client p50 against the in-process Runner's
batch-1 p50 on the same sentences and threads. The recommended default: the best 16-client
throughput among configurations whose 1-client p50 stays within 1 ms of the batcher-off one.
Then the whole test split goes through the recommended server and is compared, prediction by
prediction, with the in-process batch-1 predictions (the evaluator's headline).

Writes reports/serve-<backend>-<variant>.{json,md,png}.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import doc
from common.env import cpu_device, versions
from common.errors import ConfigError
from common.manifest import Manifest
from deploy.factories import default_threads
from deploy.triton_repo import ServeConfig, write_local_repo

# http / grpc: tritonclient, what a user of Triton's client library sees; raw: KServe v2 REST
# through Python's http.client (RawHttpClient), the server's overhead with the least client work
PROTOCOLS = ("http", "grpc", "raw")


@dataclass(frozen=True)
class BenchConfig:
    serve: ServeConfig = field(default_factory=ServeConfig)
    queue_delays_us: tuple[int, ...] = doc((0, 100, 500, 2000), "batcher waits swept (us)")
    layouts: tuple[str, ...] = doc(("1x2", "2x1"), "instances x threads per instance")
    # ONNX Runtime's intra-op threads spinning (its default) or sleeping between runs: swept where
    # an instance has more than one thread (one thread has no pool to spin) and the backend is ort
    spins: tuple[bool, ...] = doc((True, False), "ONNX Runtime thread spinning swept where an "
                                  "instance has more than one thread")
    concurrency: tuple[int, ...] = doc((1, 16), "clients in flight")
    protocols: tuple[str, ...] = doc(PROTOCOLS, "http / grpc: tritonclient; raw: KServe v2 JSON "
                                     "over http.client")
    requests_per_point: int = 500
    seconds_per_point: float = 30.0
    url: str = doc("", "HTTP host:port of a running server (loopback only; then nothing is "
                   "started)")
    grpc_url: str = ""
    data: str = ""  # the test rows: empty = the build's task (common.task.scoring_task)
    artifacts: str = "artifacts"
    out: str = "reports"
    agreement_rows: int = doc(0, "test rows sent for the agreement check (0 = the whole split)")

    def __post_init__(self) -> None:
        if self.requests_per_point < 1 or self.seconds_per_point <= 0 or self.agreement_rows < 0:
            raise ConfigError("requests_per_point must be >= 1, seconds_per_point > 0 and "
                              "agreement_rows >= 0")
        if any(c < 1 for c in self.concurrency) or any(d < 0 for d in self.queue_delays_us):
            raise ConfigError("concurrency must be >= 1 and queue delays >= 0")
        for u in (self.url, self.grpc_url):
            if u and u.rsplit(":", 1)[0] not in {"127.0.0.1", "localhost", "[::1]"}:
                raise ConfigError(f"{u}: the benchmark drives loopback servers only (127.0.0.1)")
        if set(self.protocols) - set(PROTOCOLS) or not self.protocols:
            raise ConfigError(f"protocols are among {PROTOCOLS}: {self.protocols}")
        for lay in self.layouts:
            if not (lay.count("x") == 1 and all(p.isdigit() and int(p) > 0 for p in lay.split("x"))):
                raise ConfigError(f"layout {lay!r} is not <instances>x<threads>, e.g. 2x1")
        if 1 not in self.concurrency:
            raise ConfigError("the sweep needs 1 client (the latency reference)")
        if not self.spins:
            raise ConfigError("spins needs at least one of on / off")

    def points(self) -> list[ServeConfig]:
        """The server configurations of the sweep, batcher off first."""
        out = []
        for lay in self.layouts:
            inst, thr = (int(p) for p in lay.split("x"))
            spins = self.spins if thr > 1 and self.serve.backend == "ort" else (True,)
            for spin in spins:
                base = dataclasses.replace(self.serve, instances=inst, threads=thr, spin=spin)
                out.append(dataclasses.replace(base, dynamic_batching=False))
                out += [dataclasses.replace(base, dynamic_batching=True, queue_delay_us=d)
                        for d in self.queue_delays_us]
        return out


def label(sc: ServeConfig) -> str:
    b = f"batcher {sc.queue_delay_us} us" if sc.dynamic_batching else "no batcher"
    return f"{sc.instances}x{sc.threads}{'' if sc.ort_spin else ' no spin'}, {b}"


def _ref_key(sc: ServeConfig) -> tuple[int, bool]:
    return sc.threads or default_threads(), sc.ort_spin


# What a request carries per row: a text, or (text, text_pair) for a pair task.
Item = str | tuple[str, str]


def split_items(items: list[Item]) -> tuple[list[str], list[str] | None]:
    """The texts and (pair task) the second texts of a list of request rows."""
    if items and isinstance(items[0], tuple):
        return [t[0] for t in items], [t[1] for t in items]
    return [str(t) for t in items], None


def sent_text(texts: list[Item], i: int, k: int) -> Item:
    """The text client k sends as the i-th request of a point. With one client the sequence is
    the same at every point, and the in-process reference times exactly these sentences in this
    order: a p50 difference is then the server's, not a different mix of sentence lengths."""
    return texts[(i * 7 + k) % len(texts)]


def _client(protocol: str, url: str):
    if protocol == "http":
        import tritonclient.http as m
    else:
        import tritonclient.grpc as m  # type: ignore[no-redef]
    return m, m.InferenceServerClient(url)


class TritonClient:
    """tritonclient over HTTP or gRPC: what a user of Triton's client library pays per request."""

    def __init__(self, protocol: str, url: str):
        self.mod, self.client = _client(protocol, url)

    def infer(self, model: str, texts: list[Item]) -> dict[str, np.ndarray]:
        return infer_texts(self.mod, self.client, model, texts)

    def close(self) -> None:
        self.client.close()


class RawHttpClient:
    """KServe v2 REST with JSON bodies over one keep-alive `http.client` connection: no client
    library, about the least work a client can do per request: it shows how much of the 1-client
    overhead is the server's and how much tritonclient's (docs/serving.md)."""

    def __init__(self, url: str):
        import http.client

        host, port = url.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def infer(self, model: str, texts: list[Item]) -> dict[str, np.ndarray]:
        import json

        first, second = split_items(texts)
        body = json.dumps({"inputs": [{"name": name, "shape": [len(first), 1], "datatype": "BYTES",
                                       "data": data} for name, data in
                                      (("text", first), ("text_pair", second)) if data is not None]})
        try:
            self.conn.request("POST", f"/v2/models/{model}/infer", body,
                              {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            # a half-read response would poison the next request on this connection: drop it
            # (http.client reconnects on the next request)
            self.conn.close()
            raise
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"])
                for o in json.loads(data)["outputs"]}

    def close(self) -> None:
        self.conn.close()


def connect(protocol: str, url: str) -> TritonClient | RawHttpClient:
    """A client for `protocol`: http / grpc (tritonclient) or raw (RawHttpClient, HTTP port)."""
    return RawHttpClient(url) if protocol == "raw" else TritonClient(protocol, url)


def infer_texts(client_mod, client, model: str, texts: list[Item]) -> dict[str, np.ndarray]:
    """One request of these rows (texts, or (text, text_pair) pairs) through tritonclient."""
    inputs = []
    for name, data in zip(("text", "text_pair"), split_items(texts), strict=True):
        if data is not None:
            x = np.array([[t.encode("utf-8")] for t in data], dtype=np.object_)
            inp = client_mod.InferInput(name, list(x.shape), "BYTES")
            inp.set_data_from_numpy(x)
            inputs.append(inp)
    r = client.infer(model, inputs)
    return {n: r.as_numpy(n) for n in ("label", "label_id", "probs")}


def server_batches(client, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) from Triton's statistics API (HTTP client)."""
    s = client.get_inference_statistics(model)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


# Triton's per-request durations (statistics extension): success = arrival to response sent;
# queue = waiting for an instance; compute_input / compute_output = moving tensors to / from the
# Python-backend stub; compute_infer = our execute() (decode, tokenize, Runner, softmax).
PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def server_phases(client, model: str) -> dict[str, tuple[int, int]]:
    """Cumulative (count, ns) per phase of Triton's inference statistics."""
    s = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return {p: (int(s[p]["count"]), int(s[p]["ns"])) for p in PHASES}


def phase_ms(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict:
    """Mean milliseconds per request of each phase between two statistics reads."""
    out = {}
    for p in PHASES:
        n = after[p][0] - before[p][0]
        out[p] = (after[p][1] - before[p][1]) / n / 1e6 if n else None
    return out


def group_cpu_seconds(pgid: int | None) -> float:
    """User + system CPU seconds of every live process in a process group (tritonserver and its
    Python-backend stubs), from /proc."""
    if pgid is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime stime
            total += int(fields[11]) + int(fields[12])
    return total / tick


def timed_predicts(svc: Any, sentences: list[Item], warmup: list[Item] | None = None
                   ) -> tuple[np.ndarray, float]:
    """Batch-1 service calls on `sentences`: seconds per call (common.timing.time_each) and this
    process's CPU seconds over the timed calls (warm-up calls run first, outside both)."""
    from common.timing import time_each

    def predict(t: Item) -> Any:
        return svc.predict(*split_items([t]))

    time_each(predict, (), warmup=warmup or ())
    cpu0 = time.process_time()
    lat, _ = time_each(predict, sentences)
    return lat, time.process_time() - cpu0


# 1-client points alternate blocks of this many served requests with the same sentences through
# the in-process reference, so machine drift during a sweep hits both sides of the difference
PAIRED_BLOCK = 25


def sweep_point(protocol: str, url: str, stats_url: str, model: str, texts: list[Item],
                concurrency: int, max_requests: int, max_seconds: float,
                pgid: int | None = None, local: Any = None) -> dict[str, Any]:
    """One server configuration under `concurrency` clients. With one client and `local` (the
    in-process service of the same threads and spin), every PAIRED_BLOCK requests the same
    sentences also go through `local`; the row then carries that interleaved reference."""
    lock = threading.Lock()
    issued = [0]
    lat: list[float] = []
    failed: list[str] = []
    ref_lat: list[float] = []
    ref_cpu = [0.0]
    deadline = time.monotonic() + max_seconds
    paired = local is not None and concurrency == 1

    def reference_block(sent: list[Item]) -> None:
        lat, cpu = timed_predicts(local, sent)
        ref_lat.extend(lat.tolist())
        ref_cpu[0] += cpu

    def worker(k: int) -> None:
        c = connect(protocol, url)
        block: list[Item] = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        break
                    i = issued[0]
                    issued[0] += 1
                text = sent_text(texts, i, k)
                t0 = time.perf_counter()
                try:
                    c.infer(model, [text])
                    with lock:
                        lat.append(time.perf_counter() - t0)
                except Exception as exc:  # counted and reported, never fatal to the sweep
                    with lock:
                        failed.append(str(exc)[:200])
                if paired:
                    block.append(text)
                    if len(block) == PAIRED_BLOCK:
                        reference_block(block)
                        block = []
            if paired and block:
                reference_block(block)
        finally:
            c.close()

    import tritonclient.http as http

    stats = http.InferenceServerClient(stats_url)
    before = server_batches(stats, model)
    phases0 = server_phases(stats, model)
    cpu0 = group_cpu_seconds(pgid)
    # this process holds only the clients during a point: its CPU time is theirs (tritonclient's
    # serialisation, HTTP/gRPC stack, response parsing), on the same cores as the server
    client0 = time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0 - sum(ref_lat)
    client_cpu = time.process_time() - client0 - ref_cpu[0]
    cpu = group_cpu_seconds(pgid) - cpu0
    after = server_batches(stats, model)
    phases = phase_ms(phases0, server_phases(stats, model))
    stats.close()
    ms = np.array(lat) * 1e3 if lat else np.array([np.nan])
    d_inf, d_exec = after[0] - before[0], after[1] - before[1]
    n = len(lat) + len(failed)
    return {"concurrency": concurrency, "protocol": protocol, "requests": n,
            "failed": len(failed), "failures": sorted(set(failed))[:5],
            "throughput_rps": len(lat) / wall, "wall_s": wall,
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())},
            "mean_server_batch": d_inf / d_exec if d_exec else None,
            "server_phase_ms": phases,
            "server_cpu_ms_per_request": 1e3 * cpu / n if n else None,
            "client_cpu_ms_per_request": 1e3 * client_cpu / n if n else None,
            **({"in_process_interleaved": {
                "n": len(ref_lat), "p50_ms": 1e3 * float(np.median(ref_lat)),
                "mean_ms": 1e3 * float(np.mean(ref_lat)),
                "cpu_ms_per_inference": 1e3 * ref_cpu[0] / len(ref_lat)}} if ref_lat else {})}


def in_process(cfg: BenchConfig, texts: list[Item], svc: Any, threads: int,
               spin: bool) -> dict[str, Any]:
    """Batch-1 predictions of every text, and the CPU time and p50 of one inference on the
    sentences one client sends at a sweep point, in the same order (`sent_text`), through `svc`
    (this process, `threads` threads, the server's spin setting): the server's reference before
    the sweep. 1-client points also time `svc` interleaved with the server (sweep_point)."""
    preds = np.array([svc.predict(*split_items([t])).label_ids[0] for t in texts])
    sample = [sent_text(texts, i, 0) for i in range(cfg.requests_per_point)]
    lat, cpu = timed_predicts(svc, sample, warmup=sample[:20])
    return {"predictions": preds, "threads": threads, "spin": spin, "n": len(sample),
            "p50_ms": 1e3 * float(np.median(lat)), "mean_ms": 1e3 * float(np.mean(lat)),
            "cpu_ms_per_inference": 1e3 * cpu / len(sample),
            "note": "ClassifierService.predict (tokenize + Runner.infer + softmax) at batch 1"}


def agreement(url: str, model: str, texts: list[Item], reference: np.ndarray, chunk: int) -> dict:
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
            "differ": int((ids != reference).sum()),
            "differ_at": np.nonzero(ids != reference)[0][:20].tolist(), "request_size": chunk}


def recommend(rows: list[dict[str, Any]], protocol: str = "http") -> dict[str, Any] | None:
    """Best 16-client throughput among configurations whose 1-client p50 is within 1 ms of the
    batcher-off configuration with the most threads per instance (spinning, ONNX Runtime's
    default, where both were swept)."""
    def at(point: str, c: int) -> dict | None:
        return next((r for r in rows if r["server"] == point and r["concurrency"] == c
                     and r["protocol"] == protocol), None)

    offs = [r["server"] for r in sorted(
        (r for r in rows if not r["dynamic_batching"] and r["concurrency"] == 1
         and r["protocol"] == protocol),
        key=lambda r: (-r["threads"], not r.get("spin", True)))]
    if not offs:
        return None
    ref = at(offs[0], 1)["latency_ms"]["p50"]  # type: ignore[index]
    top = max(r["concurrency"] for r in rows)
    ok = [p for p in dict.fromkeys(r["server"] for r in rows)
          if at(p, 1) and at(p, top) and at(p, 1)["latency_ms"]["p50"] <= ref + 1.0]  # type: ignore[index]
    best = max(ok, key=lambda p: at(p, top)["throughput_rps"])  # type: ignore[index]
    return {"server": best, "reference": offs[0], "reference_p50_ms": ref, "clients": top,
            "throughput_rps": at(best, top)["throughput_rps"],  # type: ignore[index]
            "p50_ms_1_client": at(best, 1)["latency_ms"]["p50"],  # type: ignore[index]
            "rule": f"best {top}-client {protocol} throughput among configurations whose 1-client "
                    f"p50 is within 1 ms of `{offs[0]}`"}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    from common.task import scoring_task
    from deploy.service import ClassifierService

    test = scoring_task(Path(cfg.artifacts), cfg.data).split("test")
    if cfg.agreement_rows:
        test = test.head(cfg.agreement_rows)
    texts: list[Item] = (list(test.texts) if test.pairs is None else
                         list(zip(test.texts, test.pairs, strict=True)))
    model = cfg.serve.model_name
    points = [cfg.serve] if cfg.url else cfg.points()
    # one in-process service per (threads, spin), open for the whole sweep: the reference
    services = {k: ClassifierService(cfg.artifacts, cfg.serve.backend, cfg.serve.variant, k[0],
                                  spin=k[1]) for k in sorted({_ref_key(p) for p in points})}
    try:
        return _run_bench(cfg, texts, model, points, services)
    finally:
        for svc in services.values():
            svc.close()


def _run_bench(cfg: BenchConfig, texts: list[Item], model: str, points: list[ServeConfig],
               services: dict[tuple[int, bool], Any]) -> dict[str, Any]:
    import tempfile

    from common.variants import find_variant
    from deploy.triton_server import TritonServer, free_ports

    refs = {k: in_process(cfg, texts, svc, *k) for k, svc in services.items()}
    sweep: list[dict[str, Any]] = []
    agree = None

    def measure(sc: ServeConfig, http_url: str, grpc_url: str, pgid: int | None) -> None:
        ref = refs[_ref_key(sc)]
        for protocol in cfg.protocols:
            for conc in cfg.concurrency:
                url = grpc_url if protocol == "grpc" else http_url
                row = sweep_point(protocol, url, http_url, model, texts, conc,
                                  cfg.requests_per_point, cfg.seconds_per_point, pgid,
                                  services[_ref_key(sc)])
                row.update({"server": label(sc), "dynamic_batching": sc.dynamic_batching,
                            "queue_delay_us": sc.queue_delay_us, "instances": sc.instances,
                            "threads": sc.threads, "spin": sc.ort_spin})
                # 1 client: the reference timed in blocks between this point's requests;
                # otherwise the one timed before the sweep
                here = row.get("in_process_interleaved") or ref
                if conc == 1:
                    row["p50_overhead_ms"] = row["latency_ms"]["p50"] - here["p50_ms"]
                    row["in_process_mean_ms"] = here["mean_ms"]
                if row["server_cpu_ms_per_request"] is not None:
                    row["server_cpu_over_in_process"] = (row["server_cpu_ms_per_request"] /
                                                         here["cpu_ms_per_inference"])
                print(f"  {label(sc)} {protocol} x{conc:>3}: {row['throughput_rps']:.1f} req/s, "
                      f"p50 {row['latency_ms']['p50']:.2f} ms, server CPU "
                      f"{row['server_cpu_ms_per_request'] or float('nan'):.2f} ms/request, "
                      f"mean batch {row['mean_server_batch']}, failed {row['failed']}")
                sweep.append(row)

    if cfg.url:
        measure(cfg.serve, cfg.url, cfg.grpc_url or cfg.url, None)
        best = None
    else:
        for sc in points:
            with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
                repo = Path(tmp) / "repo"
                write_local_repo(repo, sc, Path(cfg.artifacts))
                with TritonServer(repo, free_ports(), Path(tmp) / "server.log") as s:
                    measure(sc, s.url, s.grpc_url, s.proc.pid if s.proc else None)
        best = recommend(sweep, "http" if "http" in cfg.protocols else cfg.protocols[0])
    chosen = next((p for p in points if best and label(p) == best["server"]), cfg.serve)
    with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
        if cfg.url:
            agree = agreement(cfg.url, model, texts, refs[next(iter(refs))]["predictions"],
                              cfg.serve.max_batch)
        else:
            repo = Path(tmp) / "repo"
            write_local_repo(repo, chosen, Path(cfg.artifacts))
            with TritonServer(repo, free_ports(), Path(tmp) / "server.log") as s:
                agree = agreement(s.url, model, texts, refs[_ref_key(chosen)]["predictions"],
                                  cfg.serve.max_batch)
    variant = find_variant(cfg.serve.backend, cfg.serve.variant)
    agree["batch_dependent"] = variant.batch_dependent
    return {"backend": cfg.serve.backend, "variant": cfg.serve.variant, "device": cpu_device(),
            "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0 bundle), Python-backend model "
                      "running the variant's Runner",
            "config": asdict(cfg), "sweep": sweep, "recommended": best,
            "in_process": {f"{k[0]}{'' if k[1] else ' no spin'}":
                           {x: v for x, v in r.items() if x != "predictions"}
                           for k, r in refs.items()},
            "paired_block": PAIRED_BLOCK, "agreement": agree, "goals": goals(sweep, agree, best),
            "versions": versions(), "made_by": Manifest(Path(cfg.artifacts)).stamp(variant.artifact)}


def goals(sweep: list[dict[str, Any]], agree: dict[str, Any] | None,
          best: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"failed_total": sum(r["failed"] for r in sweep),
                           "requests_total": sum(r["requests"] for r in sweep)}
    rows = [r for r in sweep if best is None or r["server"] == best["server"]]
    by_protocol = {r["protocol"]: r["p50_overhead_ms"] for r in rows
                   if r["concurrency"] == 1 and "p50_overhead_ms" in r}
    if by_protocol:
        # the headline is the serving layer's own: KServe's REST path with the bare client
        # (raw) where it was measured, else tritonclient's HTTP; every protocol's stays beside it
        head = next((p for p in ("raw", "http") if p in by_protocol), next(iter(by_protocol)))
        out["p50_overhead_ms_1_client"] = by_protocol[head]
        out["p50_overhead_headline_protocol"] = head
        out["p50_overhead_ms_1_client_by_protocol"] = by_protocol
    ratios = [r["server_cpu_over_in_process"] for r in rows if r.get("server_cpu_over_in_process")]
    if ratios:
        out["server_cpu_over_in_process_max"] = max(ratios)
    if best:
        out["recommended"] = best["server"]
        out["throughput_rps_16"] = best["throughput_rps"]
    if agree:
        out["agreement_top1_pct"] = agree["top1_pct"]
    return out


def write_bench_report(r: dict, out: Path) -> dict[str, Path]:
    from common.reports import figure_name, write_report
    from deploy.bench_report import markdown, plot

    stem = f"serve-{r['backend']}-{r['variant']}"
    return write_report(out, stem, r, markdown(r, figure_name(stem)), {"": lambda p: plot(r, p)})
