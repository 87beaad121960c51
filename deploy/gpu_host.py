"""Run by an offline GPU bundle's script (deploy/gpu_run.sh) on the GPU host, before the build:
writes the host's identity (GPU, driver, CUDA, Python, the packages the run imports) into
`--out/host.json`, says in one line each package the run needs and the host lacks, and turns the
bundle's FP16 base model (FP16 so the bundle fits its size limit) back into FP32 safetensors, the
dtype a fine-tuning starts from everywhere else. Exit code 1 when something needed is missing."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

# What the GPU run imports (module -> distribution), beyond the bundled wheels
NEEDED = {"torch": "torch", "numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime",
          "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm",
          "safetensors": "safetensors", "accelerate": "accelerate", "yaml": "pyyaml",
          "transformers": "transformers", "tokenizers": "tokenizers", "peft": "peft",
          "bitsandbytes": "bitsandbytes", "huggingface_hub": "huggingface_hub",
          "pytest": "pytest"}


def missing_modules(needed: dict[str, str] = NEEDED) -> list[str]:
    return [dist for mod, dist in needed.items() if importlib.util.find_spec(mod) is None]


def dist_versions(needed: dict[str, str] = NEEDED) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in needed.values():
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def host_identity() -> dict[str, Any]:
    """The machine the GPU numbers come from."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "packages": dist_versions()}
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            from common.env import cuda_device

            out["gpus"] = [cuda_device(i) for i in range(torch.cuda.device_count())]
        else:
            out["gpus"] = []
    except Exception as exc:  # noqa: BLE001 - the identity is written whatever torch does
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
    return out


def fp32_model(folder: Path) -> Path | None:
    """`model.fp16.safetensors` -> `model.safetensors` in FP32 (the FP16 file removed); None when
    there is no FP16 file."""
    src = folder / "model.fp16.safetensors"
    if not src.is_file():
        return None
    from safetensors.torch import load_file, save_file

    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(src).items()}
    dst = folder / "model.safetensors"
    save_file(tensors, str(dst), metadata={"format": "pt"})
    src.unlink()
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.gpu_host", description=__doc__)
    p.add_argument("--out", required=True, help="where host.json goes")
    p.add_argument("--model", default=None, help="the unpacked base model folder")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ident = host_identity()
    missing = missing_modules()
    ident["missing"] = missing
    (out / "host.json").write_text(json.dumps(ident, indent=2, default=str) + "\n", encoding="utf-8")
    gpus = ident.get("gpus") or []
    print(f"host: Python {ident['python']}, torch {ident['packages'].get('torch')} (CUDA "
          f"{ident.get('torch_cuda')}), GPUs: {', '.join(str(g['name']) for g in gpus) or 'none'}")
    for dist in missing:
        print(f"missing: {dist} (not bundled and not on this host: install it, or add its wheel "
              "to the bundle with `make gpu-bundle GPU_BUNDLE_WHEELS=...`)")
    if a.model and "safetensors" not in missing and "torch" not in missing:
        made = fp32_model(Path(a.model))
        if made:
            print(f"base model -> {made} (FP32)")
    return 1 if missing or not gpus else 0


if __name__ == "__main__":
    sys.exit(main())
