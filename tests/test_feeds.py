import numpy as np
import pytest

from common.feeds import InputError, batches, encode
from common.modelsource import load_tokenizer


def test_encode_pads_per_batch_and_counts_truncation(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    texts = ["i feel happy", "i feel " + "very " * 50 + "sad"]
    enc = encode(tok, texts, max_length=16)
    assert enc.truncated == 1
    assert enc.lengths().tolist()[1] == 16
    feed = enc.batch([0, 1], ("input_ids", "attention_mask"))
    assert feed["input_ids"].shape == (2, 16) and feed["input_ids"].dtype == np.int64
    k = enc.lengths()[0]
    assert feed["attention_mask"][0].tolist() == [1] * k + [0] * (16 - k)
    assert feed["input_ids"][1, -1] == tok.sep_token_id  # truncation keeps the final [SEP]
    single = enc.batch([0], ("input_ids",))
    assert single["input_ids"].shape == (1, k)  # batch 1 is unpadded


@pytest.mark.parametrize("bad", [[""], ["  \n"], [None], []])
def test_encode_rejects_empty_input(tiny_model_dir, bad):
    with pytest.raises(InputError):
        encode(load_tokenizer(tiny_model_dir), bad, 16)


def test_batches_keep_order():
    assert batches(5, 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        batches(5, 0)
