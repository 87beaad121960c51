"""PyTorch runners: the FP32 checkpoint, and its dynamic-INT8 twin (torch.ao quantize_dynamic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.runner import BaseRunner, RunnerError


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

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device cuda asked for, but torch sees no CUDA GPU "
                              "(use --device cpu, or run inside the NGC container with --gpus all)")
        torch.set_num_threads(self.threads)
        model = AutoModelForSequenceClassification.from_pretrained(self.checkpoint).eval()
        if self.state_dict is not None:
            from common.torch_dynamic import quantize_dynamic_model

            model = quantize_dynamic_model(model)
            model.load_state_dict(torch.load(self.state_dict, weights_only=False))
        self.model = model.to(self.device, dtype=getattr(torch, self.dtype))
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
            return [self.state_dict]
        return [p for p in self.checkpoint.iterdir() if p.name in {"model.safetensors", "config.json"}]

    def info(self) -> dict[str, Any]:
        import torch

        return {**super().info(), "device": self.device, "provider": f"torch-{self.device}",
                "torch_threads": torch.get_num_threads()}
