"""ONNX Runtime runner. The requested execution provider must really be active after the session
is created: ONNX Runtime drops an EP it cannot initialise and runs on CPU without a word, which
would put CPU numbers in a GPU row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.runner import BaseRunner, RunnerError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def split_provider(provider: str) -> tuple[str, int | None]:
    """`cuda:1` -> ("cuda", 1); `cuda` -> ("cuda", None); `cpu` -> ("cpu", None)."""
    kind, _, num = provider.partition(":")
    if num and not (kind in ("cuda", "tensorrt") and num.isdigit()):
        raise RunnerError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)} "
                          "(cuda:N for GPU N)")
    return kind, int(num) if num else None


def check_provider(provider: str) -> str:
    import onnxruntime as ort

    provider, _ = split_provider(provider)
    if provider not in PROVIDERS:
        raise RunnerError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
    want = PROVIDERS[provider]
    available = ort.get_available_providers()
    if want not in available:
        hint = (" Install onnxruntime-gpu (and uninstall onnxruntime) with a matching CUDA/cuDNN."
                if provider != "cpu" else "")
        raise RunnerError(f"ONNX Runtime provider {want} is not available in this install "
                          f"(available: {', '.join(available)}).{hint}")
    return want


def provider_options(provider: str, variant: str) -> dict[str, str]:
    """Options of the execution provider. CUDA: an FP32 graph (the registry's precision of ort's
    `variant`) keeps FP32 matmuls (the CUDA EP runs them in TF32 unless `use_tf32` is 0), so a
    GPU "fp32" row is FP32, as the TensorRT fp32 engine (TF32 cleared) is."""
    from common.variants import FP32, find_variant

    kind, index = split_provider(provider)
    out = {"device_id": str(index)} if index is not None else {}
    if kind == "cuda" and find_variant("ort", variant).precision is FP32:
        out["use_tf32"] = "0"
    return out


def initializer_bytes(path: Path) -> int:
    """Bytes of an ONNX graph's weights (initializers), read without ONNX Runtime."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


class OrtRunner(BaseRunner):
    backend = "ort"

    def __init__(self, path: Path, input_names: tuple[str, ...] | None = None, threads: int = 1,
                 provider: str = "cpu", variant: str = "fp32", extra_files: tuple[Path, ...] = (),
                 spin: bool = True, profile_prefix: str | None = None):
        super().__init__(variant, input_names or (), threads)
        self.path = Path(path)
        self.provider = provider
        # ONNX Runtime's intra-op threads spin-wait for the next run by default: lowest latency
        # when the process owns its cores, burnt CPU (counted as the server's) when it shares
        # them with an HTTP server and its clients; False lets them sleep.
        self.spin = spin
        self.extra_files = extra_files
        # ONNX Runtime's profiler (evaluate/op_profile.py): on for the session's whole life
        self.profile_prefix = profile_prefix
        self.session: Any = None

    def load(self) -> None:
        import onnxruntime as ort

        want = check_provider(self.provider)
        if not self.path.is_file():
            raise RunnerError(f"{self.path} not found; build it with `make engines`")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        if self.profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = self.profile_prefix
        opts = provider_options(self.provider, self.variant)
        first = (want, opts) if opts else want
        providers = [first] if want == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:  # corrupt or truncated files fail here
            raise RunnerError(f"ONNX Runtime could not load {self.path}: {exc}. "
                              "Rebuild it with `make engines`.") from exc
        active = self.session.get_providers()
        if want not in active:
            raise RunnerError(f"ONNX Runtime created the session without {want} (active: {active}); "
                              "refusing to fall back to CPU silently")
        names = tuple(i.name for i in self.session.get_inputs())
        if self.input_names and set(self.input_names) != set(names):
            raise RunnerError(f"{self.path} takes inputs {names}, expected {self.input_names}")
        self.input_names = names
        self.weight_bytes = initializer_bytes(self.path)
        super().load()

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self._require_loaded()
        return self.session.run(["logits"], self._check_feed(feed))[0]

    def end_profiling(self) -> Path:
        """Stop the profiler and return its trace (chrome-trace JSON)."""
        self._require_loaded()
        if not self.profile_prefix:
            raise RunnerError("this runner was created without profile_prefix")
        return Path(self.session.end_profiling())

    def close(self) -> None:
        self.session = None
        super().close()

    def files(self) -> list[Path]:
        return [self.path, *self.extra_files]

    def info(self) -> dict[str, Any]:
        kind, index = split_provider(self.provider)
        out = {**super().info(), "device": self.provider, "provider": PROVIDERS[kind],
               "active_providers": self.session.get_providers() if self.session else None,
               "provider_options": provider_options(self.provider, self.variant),
               "graph_optimization": "ORT_ENABLE_ALL"}
        if self.session is not None:
            out["weight_bytes"] = self.weight_bytes
        if kind == "cuda":
            from common.env import cuda_device

            out["device_info"] = cuda_device(index or 0)
        return out
