"""QLoRA runner: the pre-trained base re-quantized to NF4 by bitsandbytes + the saved LoRA
adapters and head (peft), run natively in PyTorch.

On a GPU it computes in bfloat16 (bitsandbytes' 4-bit CUDA kernels and cuBLAS in bf16; the FP32
adapters and head cast to bf16 too); on a CPU in the recipe's compute dtype (float32), which is
what CPUs without bf16 units run fastest and what training validated with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.runner import RunnerError
from deploy.torch_runner import TorchRunner

CUDA_COMPUTE_DTYPE = "bfloat16"


def set_compute_dtype(model: Any, dtype_name: str) -> None:
    """Every Linear4bit computes in `dtype_name`, every other floating parameter is stored in it
    (the NF4 weights themselves stay packed)."""
    import torch

    dtype = getattr(torch, dtype_name)
    for m in model.modules():
        if hasattr(m, "compute_type_is_set"):  # bitsandbytes Linear4bit
            m.compute_dtype = dtype
            m.compute_type_is_set = True  # else its first input would decide
        elif getattr(m, "weight", None).__class__.__name__ == "Params4bit":  # Embedding4bit
            m.dtype = dtype  # the dtype its dequantized rows come out in
    for p in model.parameters():
        if p.__class__.__name__ != "Params4bit" and p.is_floating_point():
            p.data = p.data.to(dtype)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            owner._buffers[name.rsplit(".", 1)[-1]] = b.to(dtype)


class QloraRunner(TorchRunner):
    """A TorchRunner whose model is the NF4 base + adapters (infer is TorchRunner's)."""

    backend = "qlora"

    def __init__(self, adapter_dir: Path, input_names: tuple[str, ...], threads: int,
                 device: str = "cpu", variant: str = "nf4"):
        super().__init__(adapter_dir, input_names, threads, device=device, variant=variant)
        self.adapter_dir = Path(adapter_dir)
        self.recipe: dict[str, Any] = {}
        self.base_dir: Path | None = None

    def load(self) -> None:
        import torch

        from common.modelsource import resolve_base
        from common.qlora_model import load_qlora, require_bitsandbytes, weight_memory
        from deploy.torch_runner import sdpa_kernel_used

        require_bitsandbytes()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device cuda asked for, but torch sees no CUDA GPU")
        torch.set_num_threads(self.threads)

        from common.checkpoint import read_recipe

        base = resolve_base(read_recipe(self.adapter_dir).get("base_model"),
                            f"the QLoRA model {self.adapter_dir}")
        self.model, self.recipe = load_qlora(self.adapter_dir, self.device, base)
        self.base_dir = Path(base)
        if self.device.startswith("cuda"):
            set_compute_dtype(self.model, CUDA_COMPUTE_DTYPE)
            self.dtype = CUDA_COMPUTE_DTYPE
        else:
            self.dtype = self.recipe["nf4"]["compute_dtype"]
        self.memory = weight_memory(self.model)
        self.attention = sdpa_kernel_used(self.model.get_base_model(), self.device,
                                          getattr(torch, self.dtype))
        self._loaded = True  # TorchRunner.load would load a plain checkpoint: not called

    def files(self) -> list[Path]:
        """What a deployment ships and loads: the adapters and head, and the whole base model
        (re-quantized to NF4 at load) with its config."""
        adapters = [p for p in self.adapter_dir.iterdir() if p.name.startswith("adapter_")]
        base = [] if self.base_dir is None else [
            p for p in self.base_dir.iterdir()
            if p.name in {"config.json", "model.safetensors", "pytorch_model.bin"}]
        return adapters + base

    def info(self) -> dict[str, Any]:
        out = {**super().info(), "provider": f"torch-{self.device}+bitsandbytes-nf4"}
        if self._loaded:
            out["weight_memory"] = self.memory
            out["weight_bytes"] = self.memory["total_bytes"]
            out["fp32_weight_bytes"] = self.recipe.get("fp32_weight_bytes")
            out["qlora"] = {k: self.recipe.get(k) for k in ("targets", "trainable_params",
                                                           "trainable_pct", "best_val_macro_f1")}
            out["qlora"].update({k: self.recipe["config"]["fields"][k] for k in (
                "rank", "alpha", "dropout", "lr", "epochs", "batch_size", "max_length",
                "double_quant", "compute_dtype", "quantize_embeddings")})
            out["qlora"]["inference_compute_dtype"] = self.dtype
        return out
