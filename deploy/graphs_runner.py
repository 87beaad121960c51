"""torch/fp16-graphs: the FP16 checkpoint replayed from CUDA graphs, one captured per (batch,
length) bucket of common/buckets.py at load. A request is padded to its bucket (pad ids with mask
0 to the right, extra batch rows copying a real one), copied into the bucket's static inputs, and
the graph replayed: no Python or kernel-launch cost per layer, which is what bounds an eager
6-layer model at batch 1 on a GPU. What is scored is exactly what runs: the padded inputs.

Attention runs in transformers' eager implementation: its mask handling has no data-dependent
branch, while the SDPA path asks `torch.all(mask == 1)` on the host for a 2-D mask (a device sync
that graph capture refuses, or a branch baked into the graph).

`capture=False` runs the same bucketing eagerly (CPU tests: padding must not change a prediction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.buckets import Buckets, pad_feed
from deploy.runner import BaseRunner, RunnerError
from deploy.torch_runner import tensor_bytes

# Families whose eager forward cannot be captured, with why (said in one line by load): DeBERTa-v2
# builds its relative-position tensors on the host and copies them to the device inside the
# forward, a host-to-device copy that CUDA graph capture refuses.
NO_CAPTURE = {"deberta-v2": "its eager forward copies host-built relative-position tensors to "
                            "the device, which CUDA graph capture refuses"}


def capture_refusal(checkpoint: Path) -> str | None:
    """Why the model in `checkpoint` cannot be replayed from CUDA graphs, or None."""
    import json

    try:
        kind = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the load says what is wrong with the folder
    why = NO_CAPTURE.get(str(kind.get("model_type")))
    return f"{kind.get('model_type')}: {why}" if why else None


class CudaGraphRunner(BaseRunner):
    backend = "torch"

    def __init__(self, checkpoint: Path, input_names: tuple[str, ...], threads: int,
                 max_length: int, device: str = "cuda", variant: str = "fp16-graphs",
                 dtype: str = "float16", buckets: Buckets | None = None, capture: bool = True):
        super().__init__(variant, input_names, threads)
        self.checkpoint = Path(checkpoint)
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.buckets = buckets or Buckets()
        self.capture = capture
        self.model: Any = None
        self.pad_id = 0
        # (batch, length) -> (graph or None, static device inputs, static output)
        self.slots: dict[tuple[int, int], tuple[Any, dict[str, Any], Any]] = {}
        self.capture_seconds = 0.0

    def load(self) -> None:
        import time

        import torch
        from transformers import AutoModelForSequenceClassification

        refused = capture_refusal(self.checkpoint) if self.capture else None
        if refused:
            raise RunnerError(f"torch/{self.variant} cannot capture this model ({refused}); "
                              "score torch/fp16 (eager) instead")
        if self.capture and not (self.device.startswith("cuda") and torch.cuda.is_available()):
            raise RunnerError(f"torch/{self.variant} captures CUDA graphs: it needs a CUDA GPU "
                              "(--device cuda on a machine with one)")
        torch.set_num_threads(self.threads)
        dtype = getattr(torch, self.dtype)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.checkpoint, dtype=dtype, attn_implementation="eager").eval()
        self.model = model.to(self.device)
        self.pad_id = int(getattr(model.config, "pad_token_id", None) or 0)
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle() if self.capture else None
        # largest first: later (smaller) graphs reuse the pool's memory
        for b, n in sorted(self.buckets.shapes(self.max_length), reverse=True):
            static = {name: torch.full((b, n), self.pad_id if name == "input_ids" else 0,
                                       dtype=torch.int64, device=self.device)
                      for name in self.input_names}
            static["attention_mask"][:, :1] = 1  # a real first token: nothing degenerate runs
            self.slots[(b, n)] = self._prepare(static, pool)
        self.capture_seconds = time.perf_counter() - t0
        super().load()

    def _prepare(self, static: dict[str, Any], pool: Any) -> tuple[Any, dict[str, Any], Any]:
        import torch

        with torch.inference_mode():
            if not self.capture:
                return None, static, None
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture (cuBLAS workspaces, plans)
                for _ in range(2):
                    self.model(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(**static).logits
        return graph, static, out

    def _run_bucket(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        rows, width = next(iter(feed.values())).shape
        key = (self.buckets.batch_for(rows), self.buckets.length_for(width, self.max_length))
        graph, static, out = self.slots[key]
        padded = pad_feed(feed, key[0], key[1], self.pad_id)
        with torch.inference_mode():
            for name in self.input_names:
                static[name].copy_(torch.from_numpy(padded[name]))
            if graph is None:
                out = self.model(**static).logits
            else:
                graph.replay()
            return out[:rows].float().cpu().numpy()  # .cpu() waits for the replay

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self._require_loaded()
        feed = self._check_feed(feed)
        rows = next(iter(feed.values())).shape[0]
        step = self.buckets.batches[-1]  # a batch above the largest bucket runs in chunks
        parts = [self._run_bucket({k: v[s:s + step] for k, v in feed.items()})
                 for s in range(0, rows, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self.slots.clear()
        self.model = None
        super().close()

    def files(self) -> list[Path]:
        return [p for p in self.checkpoint.iterdir() if p.name in {"model.safetensors", "config.json"}]

    def info(self) -> dict[str, Any]:
        out = {**super().info(), "device": self.device, "provider": f"torch-{self.device}+cuda-graphs"
               if self.capture else f"torch-{self.device} (bucketed, no graphs)", "dtype": self.dtype,
               "attention": "eager", "buckets": {"batches": list(self.buckets.batches),
                                                 "lengths": list(self.buckets.length_buckets(
                                                     self.max_length))},
               "graphs": sum(g is not None for g, _, _ in self.slots.values()),
               "capture_seconds": round(self.capture_seconds, 2)}
        if self.model is not None:
            out["weight_bytes"] = tensor_bytes(self.model)
        if self.device.startswith("cuda"):
            from common.env import cuda_device

            out["device_info"] = {**cuda_device(self.device), "attention": "eager (CUDA graphs)"}
        return out
