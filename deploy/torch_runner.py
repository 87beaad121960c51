"""PyTorch runners: the FP32 checkpoint, its FP16 copy (GPU), and its dynamic-INT8 twin (torch.ao
quantize_dynamic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.runner import BaseRunner, RunnerError


def tensor_bytes(model: Any) -> int:
    """Bytes of a module's parameters and buffers in memory (each storage once). Quantized
    torch.ao Linears keep their packed weights outside parameters: counted through
    `_weight_bias()` (the int8 weight and the bias they unpack to)."""
    import torch

    seen: set[int] = set()
    total = 0
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        if hasattr(m, "_weight_bias"):  # torch.ao dynamic Linear: packed int8 weight + bias
            tensors += [t for t in m._weight_bias() if isinstance(t, torch.Tensor)]
    for t in tensors:
        try:
            key = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # quantized tensors: no plain storage
            key = id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def sdpa_kernel_used(model: Any, device: str, dtype: Any) -> str:
    """Which attention kernel runs: eager attention, or the SDPA backend PyTorch picks for a
    BERT-sized call on this device and dtype (torch._fused_sdp_choice)."""
    import torch

    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl != "sdpa":
        return impl
    try:
        from torch.nn.attention import SDPBackend

        cfg = model.config
        heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 1))
        width = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 64))
        q = torch.zeros(1, heads, 32, width // heads, device=device, dtype=dtype)
        mask = torch.zeros(1, 1, 32, 32, device=device, dtype=dtype)
        return f"sdpa:{SDPBackend(torch._fused_sdp_choice(q, q, q, mask)).name.lower()}"
    except Exception as exc:  # noqa: BLE001 - a private API: report, never fail a run on it
        return f"sdpa (backend unknown: {type(exc).__name__})"


class TorchRunner(BaseRunner):
    backend = "torch"

    def __init__(self, checkpoint: Path, input_names: tuple[str, ...], threads: int,
                 device: str = "cpu", variant: str = "fp32", state_dict: Path | None = None,
                 dtype: str = "float32"):
        super().__init__(variant, input_names, threads)
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.dtype = dtype
        self.state_dict = Path(state_dict) if state_dict else None
        self.model: Any = None
        self.attention = ""

    def _check_device(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device cuda asked for, but torch sees no CUDA GPU "
                              "(use --device cpu, or run inside the NGC container with --gpus all)")
        if self.dtype == "float16" and not self.device.startswith("cuda"):
            raise RunnerError(f"{self.backend}/{self.variant} runs FP16 on a CUDA GPU only")

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self._check_device()
        torch.set_num_threads(self.threads)
        dtype = getattr(torch, self.dtype)
        # loaded in the dtype it is stored in (the FP16 checkpoint is not widened on the way)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.checkpoint, dtype=dtype).eval()
        if self.state_dict is not None:
            from common.torch_dynamic import quantize_dynamic_model

            model = quantize_dynamic_model(model)
            model.load_state_dict(torch.load(self.state_dict, weights_only=False))
        self.model = model.to(self.device, dtype=dtype)
        self.attention = sdpa_kernel_used(self.model, self.device, dtype)
        super().load()

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        self._require_loaded()
        feed = self._check_feed(feed)
        with torch.inference_mode():
            t = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
            return self.model(**t).logits.float().cpu().numpy()  # .cpu() synchronises CUDA

    def close(self) -> None:
        self.model = None
        super().close()

    def files(self) -> list[Path]:
        if self.state_dict is not None:
            return [self.state_dict, self.checkpoint / "config.json"]
        return [p for p in self.checkpoint.iterdir() if p.name in {"model.safetensors", "config.json"}]

    def info(self) -> dict[str, Any]:
        import torch

        out = {**super().info(), "device": self.device, "provider": f"torch-{self.device}",
               "torch_threads": torch.get_num_threads(), "dtype": self.dtype,
               "attention": self.attention}
        if self.model is not None:
            out["weight_bytes"] = tensor_bytes(self.model)
        if self.device.startswith("cuda"):
            from common.env import cuda_device

            out["device_info"] = {**cuda_device(self.device), "attention": self.attention}
        return out
