import json

import numpy as np
from transformers import AutoModelForSequenceClassification

from common.feeds import encode
from common.modelsource import load_tokenizer
from common.task import load_split
from common.torch_infer import torch_fn, torch_logits


def test_torch_logits_are_in_dataset_order(tiny_artifacts, data_dir):
    """Batches are formed by length for speed; the logits must still line up with the rows."""
    ckpt = tiny_artifacts / "baseline"
    names = json.loads((ckpt / "recipe.json").read_text())["input_names"]
    enc = encode(load_tokenizer(ckpt), load_split(data_dir, "test").texts[:40], 64)
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    got = torch_logits(model, enc, names, batch_size=8)
    one_by_one = np.concatenate([torch_fn(model)(enc.batch([i], names)) for i in range(40)])
    assert not np.array_equal(np.argsort(enc.lengths(), kind="stable"), np.arange(40))
    np.testing.assert_allclose(got, one_by_one, atol=1e-4)


def test_focal_loss_is_weighted_cross_entropy_at_gamma_0_and_the_formula_above():
    import pytest
    import torch

    from common.errors import ConfigError
    from train.finetune import FinetuneConfig
    from train.loop import classification_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 6, generator=g) * 3
    y = torch.randint(0, 6, (16,), generator=g)
    w = torch.rand(6, generator=g) + 0.5
    ce = torch.nn.functional.cross_entropy(logits, y, weight=w)
    # the focal branch's weighted mean is torch's weighted cross-entropy as gamma -> 0
    assert torch.allclose(classification_loss(logits, y, w, 0.0, 1e-9), ce, atol=1e-6)
    # gamma 2, by hand: -w_y (1 - p_y)^2 log p_y, mean weighted by w_y
    p = torch.softmax(logits, -1)[torch.arange(16), y]
    by_hand = (w[y] * (1 - p) ** 2 * -torch.log(p)).sum() / w[y].sum()
    got = classification_loss(logits, y, w, 0.0, 2.0)
    assert torch.allclose(got, by_hand) and got < ce  # confident rows count less
    # without class weights: the plain mean
    assert torch.allclose(classification_loss(logits, y, None, 0.0, 2.0),
                          ((1 - p) ** 2 * -torch.log(p)).mean())
    # a row the model already gets exactly right (p == 1 in float32) gives finite gradients at
    # gamma < 1, where (1 - p)^gamma has an infinite derivative
    sure = torch.tensor([[40.0, 0, 0, 0, 0, 0], [0.0, 1, 0, 0, 0, 0]], requires_grad=True)
    classification_loss(sure, torch.tensor([0, 1]), None, 0.0, 0.5).backward()
    assert torch.isfinite(sure.grad).all()
    with pytest.raises(ConfigError, match="focal_gamma"):
        FinetuneConfig(focal_gamma=2.0, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="focal_gamma"):
        FinetuneConfig(focal_gamma=-1.0)
    # in the recipe whatever its value (a later change of its default must rebuild)
    from common.config import recipe
    assert recipe(FinetuneConfig())["fields"]["focal_gamma"] == 0.0
    assert recipe(FinetuneConfig(focal_gamma=2.0))["fields"]["focal_gamma"] == 2.0
