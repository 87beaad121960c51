"""Issue 5: QLoRA with real bitsandbytes NF4 layers and peft adapters, on CPU."""

import pytest

from train.qlora import QloraConfig, build_peft_model, weight_memory

# Do NOT import bitsandbytes at module level: imported before torch/transformers, bitsandbytes
# 0.50 on CPU gives NaN logits from 4-bit layers in train mode (seen here; the library code
# imports it lazily, after transformers, as train/qlora.py does).


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, data_dir):
    return QloraConfig(model=str(tiny_model_dir), data=str(data_dir), rank=4, alpha=8, lr=5e-3,
                       targets="attention", device="cpu")


def test_nf4_layers_and_trainable_params(cfg):
    model = build_peft_model(cfg, "cpu")
    import bitsandbytes as bnb

    four = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four) == 2 * 6  # q, k, v, attention out, ffn in, ffn out per layer
    assert all(m.weight.quant_type == "nf4" for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n in trainable:  # only LoRA adapters and the FP32 head (classifier + pooler copies)
        assert "lora_" in n or ("modules_to_save" in n and ("classifier" in n or "pooler" in n)), n
    assert any("classifier" in n for n in trainable) and any("lora_A" in n for n in trainable)
    mem = weight_memory(model)
    assert mem["packed_4bit_bytes"] > 0 and mem["quant_state_bytes"] > 0


def test_onnxruntime_before_torch_is_refused():
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import onnxruntime, torch\n"
            "from train.qlora import ImportOrderError, check_import_order\n"
            "try:\n    check_import_order()\nexcept ImportOrderError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "refused: onnxruntime was imported before torch" in out.stdout
