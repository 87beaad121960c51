import json

import numpy as np
from transformers import AutoModelForSequenceClassification

from common.data import load_split
from common.feeds import encode
from common.modelsource import load_tokenizer
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
