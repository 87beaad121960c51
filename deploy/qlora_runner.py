"""QLoRA runner: the pre-trained base re-quantized to NF4 by bitsandbytes + the saved LoRA
adapters and head (peft), run natively in PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.runner import RunnerError
from deploy.torch_runner import TorchRunner


class QloraRunner(TorchRunner):
    """A TorchRunner whose model is the NF4 base + adapters (infer is TorchRunner's)."""

    backend = "qlora"

    def __init__(self, adapter_dir: Path, input_names: tuple[str, ...], threads: int,
                 device: str = "cpu", variant: str = "nf4"):
        super().__init__(adapter_dir, input_names, threads, device=device, variant=variant)
        self.adapter_dir = Path(adapter_dir)
        self.recipe: dict[str, Any] = {}

    def load(self) -> None:
        import torch

        from common.qlora_model import load_qlora, require_bitsandbytes, weight_memory

        require_bitsandbytes()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device cuda asked for, but torch sees no CUDA GPU")
        torch.set_num_threads(self.threads)

        self.model, self.recipe = load_qlora(self.adapter_dir, self.device)
        self.memory = weight_memory(self.model)
        self._loaded = True  # TorchRunner.load would load a plain checkpoint: not called

    def files(self) -> list[Path]:
        return [p for p in self.adapter_dir.iterdir() if p.name.startswith("adapter_")]

    def info(self) -> dict[str, Any]:
        out = {**super().info(), "provider": f"torch-{self.device}+bitsandbytes-nf4"}
        if self._loaded:
            out["weight_memory"] = self.memory
            out["fp32_weight_bytes"] = self.recipe.get("fp32_weight_bytes")
            out["qlora"] = {k: self.recipe.get(k) for k in ("targets", "trainable_params",
                                                           "trainable_pct", "best_val_macro_f1")}
            out["qlora"].update({k: self.recipe["config"]["fields"][k] for k in (
                "rank", "alpha", "dropout", "lr", "epochs", "batch_size", "max_length",
                "double_quant", "compute_dtype", "quantize_embeddings")})
        return out
