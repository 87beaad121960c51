"""`make gpu-check` / `python -m evaluate --gpu-check`: every GPU row this machine can score, into
reports/gpu/, and one line per row it cannot, saying why. On a machine without a CUDA GPU: one
line saying so, and nothing else.

Rows: torch FP32 and FP16 on CUDA, QLoRA NF4 on CUDA (bitsandbytes), ONNX Runtime's CUDA provider
(FP32 and the static INT8 graph) where onnxruntime-gpu is installed, and the TensorRT engines
where TensorRT is (built by `make engines` in the NGC image)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

GPU_ROWS = (("torch", "fp32"), ("torch", "fp16"), ("qlora", "nf4"), ("ort", "fp32"), ("ort", "ptq"),
            ("trt", "fp32"), ("trt", "fp16"), ("trt", "int8"), ("trt", "ptq"), ("trt", "qat"))


def plan(built: set[str], cuda: bool, ort_providers: list[str], trt: tuple[bool, str],
         bnb: bool) -> list[tuple[str, str, str | None]]:
    """(backend, variant, why it is skipped or None) for every GPU row."""
    from common.variants import find_variant

    if not cuda:
        return []
    out = []
    for backend, variant in GPU_ROWS:
        why = None
        art = find_variant(backend, variant).artifact
        if backend == "ort" and "CUDAExecutionProvider" not in ort_providers:
            why = ("ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu; "
                   f"available: {', '.join(ort_providers)})")
        elif backend == "trt" and not trt[0]:
            why = f"TensorRT is not usable: {trt[1]}"
        elif backend == "qlora" and not bnb:
            why = "bitsandbytes is not installed (pip install 'bitsandbytes==0.50.*')"
        elif art not in built:
            why = f"{art} is not built here (run `make engines` first)"
        out.append((backend, variant, why))
    return out


def run_gpu_check(base: Any, out: Path) -> list[str]:
    """Score every row it can; returns the lines it printed."""
    import importlib.util

    import torch

    from common.manifest import Manifest
    from common.trt import tensorrt_status
    from evaluate.__main__ import run_one

    lines: list[str] = []

    def say(s: str) -> None:
        print(s)
        lines.append(s)

    if not torch.cuda.is_available():
        say("gpu-check: no CUDA GPU here (torch sees none); nothing to score. Run it in the NGC "
            "image: docker/Dockerfile.gpu, `make gpu-check`.")
        return lines
    import onnxruntime as ort

    man = Manifest(Path(base.artifacts))
    built = {k for k in man.entries if man.built(k)}
    rows = plan(built, True, ort.get_available_providers(), tensorrt_status(),
                importlib.util.find_spec("bitsandbytes") is not None)
    say(f"gpu-check on {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}): "
        f"{sum(w is None for *_, w in rows)} rows to score, {sum(w is not None for *_, w in rows)} skipped")
    for backend, variant, why in rows:
        if why:
            say(f"[skip] {backend}/{variant}: {why}")
            continue
        cfg = dataclasses.replace(base, backend=backend, variant=variant, device="cuda",
                                  out=str(out))
        path = run_one(cfg)
        say(f"[scored] {backend}/{variant} -> {path}")
    return lines
