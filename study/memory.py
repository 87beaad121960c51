"""Peak memory of one inference call, counted from the tensor allocator instead of the process.

The process's resident high-water mark barely moves between study rows (it holds the tokenizer,
the data, every model loaded so far, the libraries: ~925 MB for every classifier row). What a
method changes is (a) the bytes its weights occupy and (b) what a forward allocates on top of them:
activations, and for weight-only quantizers the weights dequantized on the fly. (a) is counted
from the model's tensors (study.policy.weight_bytes); (b) is counted here from torch.profiler's
allocator events: every allocation and free made through torch's CPU/CUDA allocator during the
call, in time order; the peak of the running sum is the transient peak. Memory a library
allocates outside torch (a C kernel's own scratch buffers) is not seen.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path


def peak_transient_bytes(fn: Callable[[], object]) -> int:
    """Largest number of bytes allocated through torch and not yet freed at any moment of fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The chrome trace keeps the allocator events in order with their signed sizes; the
    # FunctionEvent list does not carry a usable timestamp for "[memory]" entries.
    with tempfile.TemporaryDirectory(prefix="memprof-") as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    # stable sort on the timestamp only: events within one microsecond keep the trace's order
    mem = sorted(((float(e["ts"]), int(e["args"]["Bytes"])) for e in events
                  if e.get("name") == "[memory]"), key=lambda x: x[0])
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak
