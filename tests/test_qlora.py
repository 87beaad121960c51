"""QLoRA with real bitsandbytes NF4 layers and peft adapters, on CPU.

Test modules import onnxruntime at collection time, so these tests also run in the condition
that used to give NaN (onnxruntime loaded before bitsandbytes; root cause in
common/qlora_model.py)."""

import json

import numpy as np
import pytest
import torch

from common.feeds import encode
from common.modelsource import load_tokenizer
from common.qlora_model import load_qlora, weight_memory
from common.task import load_split
from tests.conftest import EMOTION_LABELS
from train.qlora import QloraConfig, build_peft_model

LABELS = tuple(EMOTION_LABELS.split(","))

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def cfg(tiny_model_dir, data_dir):
    return QloraConfig(model=str(tiny_model_dir), data=str(data_dir), rank=4, alpha=8, lr=5e-3,
                       targets="attention", device="cpu")


def _batch(cfg, n=32):
    rows = load_split(cfg.data, "train").head(n)
    enc = encode(load_tokenizer(cfg.model), rows.texts, 64)
    feed = {k: torch.from_numpy(v) for k, v in enc.batch(list(range(n)), NAMES).items()}
    return feed, torch.tensor(rows.labels)


def test_nf4_layers_and_trainable_params(cfg):
    model = build_peft_model(cfg, "cpu", LABELS)
    import bitsandbytes as bnb

    four = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four) == 2 * 6  # q, k, v, attention out, ffn in, ffn out per layer
    assert all(m.weight.quant_type == "nf4" for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert isinstance(model.base_model.model.bert.embeddings.word_embeddings, bnb.nn.EmbeddingNF4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n in trainable:  # only LoRA adapters and the FP32 head (classifier + pooler copies)
        assert "lora_" in n or ("modules_to_save" in n and ("classifier" in n or "pooler" in n)), n
    assert any("classifier" in n for n in trainable) and any("lora_A" in n for n in trainable)
    mem = weight_memory(model)
    assert mem["packed_4bit_bytes"] > 0 and mem["quant_state_bytes"] > 0


def test_nf4_embedding_is_deterministic_and_close(cfg):
    """The bitsandbytes 0.50 Embedding4bit + double-quant bug (train/qlora.py) stays fixed: the
    same ids give the same rows every time, within NF4's error of the FP32 table."""
    from transformers import AutoModelForSequenceClassification

    model = build_peft_model(cfg, "cpu", LABELS)
    emb = model.base_model.model.bert.embeddings.word_embeddings
    fp32 = AutoModelForSequenceClassification.from_pretrained(cfg.model).bert.embeddings.word_embeddings
    ids = torch.arange(emb.num_embeddings).repeat(3).view(3, -1)
    with torch.no_grad():
        outs = [emb(ids) for _ in range(10)]
        ref = fp32(ids)
    assert all(torch.equal(outs[0], o) for o in outs)
    # NF4: 16 levels per block of 64, scaled by the block's absmax: error <= ~absmax / 7
    absmax = fp32.weight.abs().view(-1, 64).amax(1).max()
    assert (outs[0] - ref).abs().max() <= absmax / 7


def test_training_steps_reduce_loss_on_fixed_batch(cfg):
    losses = []
    for _ in range(2):  # twice: same seed, same losses (the CPU path is deterministic)
        torch.manual_seed(0)
        model = build_peft_model(cfg, "cpu", LABELS)
        feed, y = _batch(cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        model.train()
        run = []
        for _ in range(8):
            loss = model(**feed, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert all(np.isfinite(losses[0])) and losses[0][-1] < losses[0][0] - 0.05
    assert losses[0] == losses[1]


def test_saved_adapter_reloads_with_identical_logits(cfg, tmp_path):
    torch.manual_seed(0)
    model = build_peft_model(cfg, "cpu", LABELS)
    feed, y = _batch(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(3):
        loss = model(**feed, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        before = model(**feed).logits
    model.save_pretrained(tmp_path)
    from common.modelsource import base_reference

    (tmp_path / "recipe.json").write_text(json.dumps({"base_model": base_reference(cfg.model),
                                                      "nf4": vars(cfg.nf4()),
                                                      "labels": list(LABELS)}))
    reloaded, _ = load_qlora(tmp_path)
    with torch.no_grad():
        after = reloaded(**feed).logits
    assert torch.isfinite(after).all()
    assert torch.equal(before, after)


def test_qlora_artifact_scored_by_runner(tiny_artifacts, data_dir):
    """`make engines` builds QLoRA (default stages); its runner answers real sentences exactly as
    the saved model loaded directly, and reproduces the validation score the build selected on."""
    from common.metrics import classification_metrics
    from common.torch_infer import torch_logits
    from deploy.factories import make_runner

    recipe = json.loads((tiny_artifacts / "qlora" / "recipe.json").read_text())
    tok = load_tokenizer(tiny_artifacts / "qlora")
    test = encode(tok, load_split(data_dir, "test").texts[:32], 64)
    val = load_split(data_dir, "validation")
    with make_runner("qlora", "nf4", tiny_artifacts, threads=1) as r:
        feed = test.batch(list(range(32)), r.input_names)
        logits = r.infer(feed)
        # the validation pass of training (same batching), through the runner's loaded model
        val_logits = torch_logits(r.model, encode(tok, val.texts, recipe["max_length"]),
                                  r.input_names, batch_size=128)
    direct, _ = load_qlora(tiny_artifacts / "qlora")
    with torch.no_grad():
        ref = direct(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    assert logits.shape == (32, 6) and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    f1 = classification_metrics(np.asarray(val.labels), val_logits.argmax(-1))["macro_f1"]
    assert f1 == pytest.approx(recipe["best_val_macro_f1"], abs=1e-6)


def test_bf16_cpu_repacking_is_off_after_validation(cfg, data_dir):
    """bitsandbytes repacks Linear4bit weights for its bf16 CPU kernel on AVX512-BF16 CPUs the
    first time they run in eval mode (common.qlora_model.keep_canonical_nf4_layout): training
    must never see that layout, and every CPU must score with the same NF4 kernel."""
    import bitsandbytes as bnb

    from common.torch_infer import torch_logits

    model = build_peft_model(cfg, "cpu", LABELS)
    four = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four and all(m.support_avx512bf16_for_cpu is False for m in four)
    rows = load_split(cfg.data, "validation").head(16)
    torch_logits(model, encode(load_tokenizer(cfg.model), rows.texts, 64), NAMES)  # eval, no grad
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four)


@pytest.mark.parametrize("family,hidden", [("bert", 64), ("distilbert", 32)])
def test_qlora_trains_three_epochs_when_validation_never_improves(family, hidden, data_dir,
                                                                  tmp_path, monkeypatch):
    """Three epochs with a vanishing lr (validation flat: the best stays epoch 1, so state_dict() is never
    called again), and a DistilBERT narrower than one 64-wide NF4 block. Both failed on CPUs with
    AVX512-BF16 before the repacking was turned off ("a view of a leaf Variable ... in-place";
    "shape '[32, 0]' is invalid")."""
    from tests import tiny_models
    from train.qlora import train_qlora

    monkeypatch.setitem(tiny_models.SIZES, "hidden", hidden)
    model = tiny_models.build_tiny(family, data_dir, tmp_path / "model")
    cfg = QloraConfig(model=str(model), data=str(data_dir), epochs=3, lr=1e-12, batch_size=64,
                      max_length=48, limit_train=128, seed=0, device="cpu")
    r = train_qlora(cfg, tmp_path / "out")
    scores = [h["val_macro_f1"] for h in r["history"]]
    assert len(scores) == 3 and scores[0] == scores[1] == scores[2] == r["best_val_macro_f1"]
    reloaded, _ = load_qlora(tmp_path / "out")
    rows = load_split(cfg.data, "validation").head(8)
    enc = encode(load_tokenizer(tmp_path / "out"), rows.texts, 48)
    names = r["input_names"]
    with torch.no_grad():
        logits = reloaded(**{k: torch.from_numpy(v) for k, v in
                             enc.batch(list(range(8)), names).items()}).logits
    assert torch.isfinite(logits).all() and logits.shape == (8, 6)
