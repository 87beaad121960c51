"""Markdown and figure of a serving benchmark: the server-configuration sweep, the serving
layer's own overhead, the recommended configuration and the agreement check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.plots import pyplot, save

PROTOCOL_NAMES = {"http": "HTTP (tritonclient)", "grpc": "gRPC (tritonclient)",
                  "raw": "HTTP (http.client, no client library)"}


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(r: dict, png: str) -> str:
    g, dev, c = r["goals"], r["device"], r["config"]
    best = r.get("recommended")
    lines = [f"# Serving benchmark: {r['backend']} / {r['variant']} on Triton", "",
             f"- server: {r['server']}; device: {dev.get('name')}; max batch "
             f"{c['serve']['max_batch']}",
             "- clients on the same machine (127.0.0.1, so clients and server share the cores): "
             "tritonclient over HTTP (`http`) and gRPC (`grpc`), and KServe v2 JSON over Python's "
             "http.client (`raw`: no client library, the server's overhead with the least client "
             "work); one text per request, real test sentences; each point bounded by "
             f"{c['requests_per_point']} requests and {c['seconds_per_point']} s",
             "- server CPU per request: user + system CPU of tritonserver and its Python-backend "
             "stubs (/proc) over the point, divided by its requests; in-process: the same "
             "sentences through the variant's service (tokenize + Runner + softmax) at batch 1 "
             "with the same threads" + (
                 f"; at 1 client it is timed in blocks of {r['paired_block']} requests between "
                 "the server's (same sentences, same order), so the p50 difference is paired and "
                 "drift hits both sides" if "paired_block" in r else ""), "",
             "| server (instances x threads) | protocol | clients | requests | failed | req/s | "
             "p50 ms | p95 ms | p99 ms | mean server batch | server CPU ms/request | x in-process "
             "| p50 - in-process p50 (ms) |", "|" + "---|" * 13]
    for s in r["sweep"]:
        lat = s["latency_ms"]
        lines.append(f"| {s['server']} | {s['protocol']} | {s['concurrency']} | {s['requests']} | "
                     f"{s['failed']} | {s['throughput_rps']:.1f} | {lat['p50']:.2f} | "
                     f"{lat['p95']:.2f} | {lat['p99']:.2f} | {_f(s['mean_server_batch'], '.2f')} | "
                     f"{_f(s['server_cpu_ms_per_request'], '.2f')} | "
                     f"{_f(s.get('server_cpu_over_in_process'), '.2f')} | "
                     f"{_f(s.get('p50_overhead_ms'), '+.2f')} |")
    lines += ["", "In-process reference before the sweep (batch 1): " + "; ".join(
        f"{v['threads']} thread(s){'' if v.get('spin', True) else ' (no spin)'}: p50 "
        f"{v['p50_ms']:.2f} ms, CPU {v['cpu_ms_per_inference']:.2f} ms per inference over "
        f"{v['n']} sentences" for v in r["in_process"].values()), ""]
    lines += overhead_table(r["sweep"])
    if best:
        lines += ["## Recommended configuration", "",
                  f"**{best['server']}**: {best['rule']} (reference p50 "
                  f"{best['reference_p50_ms']:.2f} ms; this one {best['p50_ms_1_client']:.2f} ms "
                  f"at 1 client, {best['throughput_rps']:.1f} req/s at {best['clients']}).", ""]
    a = r.get("agreement") or {}
    lines += ["## Goals (measured in this run)", "",
              f"- failed requests: {g['failed_total']} of {g['requests_total']}"]
    if "server_cpu_over_in_process_max" in g:
        lines.append(f"- server CPU per request / in-process CPU per inference (recommended "
                     f"configuration, worst point): {g['server_cpu_over_in_process_max']:.2f}x "
                     "(goal <= 1.3x)")
    if "p50_overhead_ms_1_client" in g:
        per = g.get("p50_overhead_ms_1_client_by_protocol") or {}
        lines.append("- 1-client p50 minus in-process batch-1 p50: " + (", ".join(
            f"{PROTOCOL_NAMES.get(p, p)} {v:+.2f} ms" for p, v in per.items()) if per else
            f"{g['p50_overhead_ms_1_client']:+.2f} ms") + " (goal <= 1 ms)")
    if a:
        dep = (" The variant is batch-dependent (dynamic INT8): behind the batcher an answer can "
               "depend on the requests batched with it, so differences are expected."
               if a.get("batch_dependent") else "")
        lines.append(f"- top-1 agreement with the in-process batch-1 predictions (the evaluator's "
                     f"headline) on {a['n']} test sentences sent {a['request_size']} per request: "
                     f"{a['top1_pct']:.2f}% ({a['differ']} differ; goal 100%).{dep}")
    lines += ["", f"![sweep]({png})", ""]
    return "\n".join(lines)


def overhead_table(sweep: list[dict[str, Any]]) -> list[str]:
    """Where one client's request time goes (means, ms): the client's round trip, Triton's time
    from arrival to response, its phases, and the in-process service call on the same sentences."""
    rows = [s for s in sweep if s["concurrency"] == 1 and s.get("server_phase_ms")
            and s.get("in_process_mean_ms") is not None]
    if not rows:
        return []
    out = ["## Where a 1-client request's time goes (means, ms)", "",
           "client: the client's round trip; in Triton: arrival to response sent (statistics "
           "API), split into queue, input (tensors to the Python-backend stub), execute (our "
           "execute(): decode, tokenize, Runner, softmax) and output; in-process: the same "
           "service call without a server, interleaved with the point's requests. client - "
           "Triton = HTTP/gRPC, (de)serialisation and the client's own CPU; client CPU: the benchmark process's CPU time per request (the "
           "client library's share of that, on the same cores); execute - in-process = the "
           "stub's cost inside execute().", "",
           "| server | protocol | client | client CPU | in Triton | queue | input | execute | output | "
           "in-process | client - Triton | execute - in-process |", "|" + "---|" * 12]
    for s in rows:
        ph, mean, ref = s["server_phase_ms"], s["latency_ms"]["mean"], s["in_process_mean_ms"]
        total, execute = ph.get("success"), ph.get("compute_infer")
        out.append(f"| {s['server']} | {s['protocol']} | {mean:.2f} | "
                   f"{_f(s.get('client_cpu_ms_per_request'), '.2f')} | {_f(total, '.2f')} | "
                   f"{_f(ph.get('queue'), '.2f')} | {_f(ph.get('compute_input'), '.2f')} | "
                   f"{_f(execute, '.2f')} | {_f(ph.get('compute_output'), '.2f')} | {ref:.2f} | "
                   f"{_f(None if total is None else mean - total, '+.2f')} | "
                   f"{_f(None if execute is None else execute - ref, '+.2f')} |")
    return out + [""]


def plot_rows(r: dict) -> tuple[str, list[dict]]:
    """The protocol the plot shows (HTTP where it was measured) and its sweep rows."""
    http = [s for s in r["sweep"] if s["protocol"] == "http"]
    rows = http or r["sweep"]
    return rows[0]["protocol"], rows


def plot_title(r: dict, protocol: str) -> str:
    return (f"Triton over {protocol.upper()} (KServe v2), {r['backend']}/{r['variant']} on "
            f"{r['device'].get('name', 'cpu')}; bars: server configuration (instances x threads, "
            "batcher); green: recommended")


def plot(r: dict, path: Path) -> None:
    protocol, rows = plot_rows(r)
    servers = list(dict.fromkeys(s["server"] for s in rows))
    top = max(s["concurrency"] for s in rows)
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 0.35 * len(servers) + 1.8))
    for ax, conc, what, key in ((a1, top, f"throughput at {top} clients (req/s)", "throughput_rps"),
                                (a2, 1, "1-client p50 (ms)", "p50")):
        vals = [next((s["throughput_rps"] if key == "throughput_rps" else s["latency_ms"]["p50"])
                     for s in rows if s["server"] == p and s["concurrency"] == conc) for p in servers]
        best = (r.get("recommended") or {}).get("server")
        ax.barh(servers, vals, color=["tab:green" if p == best else "tab:blue" for p in servers])
        ax.invert_yaxis()
        ax.set_xlabel(what)
        ax.tick_params(axis="y", labelsize=7)
    a2.set_yticklabels([])
    fig.suptitle(plot_title(r, protocol), fontsize=9)
    save(fig, path)
