"""Triton Python-backend `tokenizer` model of the NGC repository (copied as 1/model.py).

The NGC tritonserver image has no transformers: this model needs only the `tokenizers` library
and numpy (docker/Dockerfile.triton adds them to the image), the tokenizer.json saved with the
baseline, and the project's input checks, copied beside it in project/ (common/feeds.py,
deploy/service.py import numpy only). Encoding matches common.feeds.encode: [CLS] text [SEP],
truncated to max_length keeping the final [SEP], padded to the longest text of the batch.
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "project"))


def encode_batch(tokenizer, texts, max_length, names):
    """Token ids of `texts` (already checked) as the model's int64 feed, padded to the longest."""
    encs = tokenizer.encode_batch(texts)
    rows = []
    for e in encs:
        ids, types = list(e.ids), list(e.type_ids)
        if len(ids) > max_length:  # keep [CLS] ... and the final [SEP]
            ids, types = ids[: max_length - 1] + ids[-1:], types[: max_length - 1] + types[-1:]
        rows.append((ids, types))
    width = max(len(r[0]) for r in rows)
    feed = {"input_ids": np.zeros((len(rows), width), np.int64),
            "attention_mask": np.zeros((len(rows), width), np.int64),
            "token_type_ids": np.zeros((len(rows), width), np.int64)}
    for i, (ids, types) in enumerate(rows):
        feed["input_ids"][i, : len(ids)] = ids
        feed["attention_mask"][i, : len(ids)] = 1
        feed["token_type_ids"][i, : len(ids)] = types
    return {n: feed[n] for n in names}


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        from common.feeds import InputError
        from deploy.service import decode_texts

        settings = json.loads((HERE / "settings.json").read_text())
        self.max_length, self.names = settings["max_length"], settings["input_names"]
        self.tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
        self.tokenizer.no_truncation()  # truncation is done above, as in common.feeds.encode
        self.tokenizer.no_padding()
        self.input_error, self.decode = InputError, decode_texts

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

        responses = []
        for request in requests:
            try:
                texts = self.decode(list(pb_utils.get_input_tensor_by_name(request, "text").as_numpy()))
            except self.input_error as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            feed = encode_batch(self.tokenizer, texts, self.max_length, self.names)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, a) for n, a in feed.items()]))
        return responses
