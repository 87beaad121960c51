"""Markdown table and throughput-vs-concurrency plot of a serving benchmark."""

from __future__ import annotations

from pathlib import Path

from common.plots import pyplot, save


def markdown(r: dict, png: str) -> str:
    g = r["goals"]
    dev = r["device"]
    lines = [f"# Serving benchmark: {r['backend']} / {r['variant']} on Triton", "",
             f"- server: {r['server']}; device: {dev.get('name')}; threads per instance: "
             f"{r['threads'] or 'all'}; max batch {r['config']['serve']['max_batch']}, queue delay "
             f"{r['config']['serve']['queue_delay_us']} us, instances {r['config']['serve']['instances']}",
             "- clients: tritonclient on the same machine (127.0.0.1), one text per request, real "
             "test sentences; each point bounded by "
             f"{r['config']['requests_per_point']} requests and {r['config']['seconds_per_point']} s",
             "", "| protocol | dynamic batching | concurrency | requests | failed | throughput req/s "
             "| p50 ms | p95 ms | p99 ms | mean server batch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["sweep"]:
        lat = s["latency_ms"]
        mb = f"{s['mean_server_batch']:.2f}" if s["mean_server_batch"] else "-"
        lines.append(f"| {s['protocol']} | {s['dynamic_batching']} | {s['concurrency']} | "
                     f"{s['requests']} | {s['failed']} | {s['throughput_rps']:.1f} | {lat['p50']:.1f} | "
                     f"{lat['p95']:.1f} | {lat['p99']:.1f} | {mb} |")
    a = r.get("agreement") or {}
    lines += ["", "## Goals (measured in this run)", "",
              f"- failed requests: {g['failed_total']} of {g['requests_total']}"]
    for proto in ("http", "grpc"):
        if f"{proto}_throughput_16_over_1" in g:
            lines.append(f"- {proto}, dynamic batching: throughput at 16 clients / 1 client = "
                         f"{g[f'{proto}_throughput_16_over_1']:.2f}x (goal >= 3x); p99 / p50 at 16 = "
                         f"{g[f'{proto}_p99_over_p50_at_16']:.2f} (goal <= 3)")
    if a:
        lines.append(f"- top-1 agreement with the in-process Runner (the evaluator's predictions) "
                     f"on {a['n']} test sentences: {a['top1_pct']:.2f}% (goal 100%)")
    lines += ["", f"![throughput vs concurrency]({png})", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    keys = sorted({(s["protocol"], s["dynamic_batching"]) for s in r["sweep"]}, key=str)
    for proto, dyn in keys:
        rows = sorted((s for s in r["sweep"] if (s["protocol"], s["dynamic_batching"]) == (proto, dyn)),
                      key=lambda s: s["concurrency"])
        ax.plot([s["concurrency"] for s in rows], [s["throughput_rps"] for s in rows], marker="o",
                linestyle="-" if dyn in (True, None) else "--",
                label=f"{proto}, dynamic batching {'on' if dyn else 'off' if dyn is False else '?'}")
    ax.set_xscale("log", base=2)
    conc = sorted({s["concurrency"] for s in r["sweep"]})
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title(f"Triton: {r['backend']}/{r['variant']} on {r['device'].get('name', 'cpu')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
