"""Triton Python-backend `tokenizer` model of the NGC repository (copied as 1/model.py).

The NGC tritonserver image has no transformers: this model needs only the `tokenizers` library
and numpy (docker/Dockerfile.triton adds them to the image), the tokenizer.json saved with the
baseline, and the project's input checks and feed builder, copied beside it in project/
(common/feeds.py, deploy/service.py import numpy only). Encoding matches common.feeds.encode:
special tokens added, truncated to max_length keeping the final token (a pair task's pairs:
`longest_first`, the tokenizer's own pair truncation), padded with the tokenizer's own pad id.

Every request of one execute() is padded to the same width, the length bucket of the longest of
them: Triton's dynamic batcher joins requests downstream only when their shapes are equal, so
requests of different lengths can share one model execution. The buckets are the build's table
(settings.json `buckets`, written by deploy/ngc_repo.py from what the build's TensorRT entries
record: the table the engines' profiles and the CUDA-graph runner use too).
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "project"))


def bucket(longest: int, max_length: int, table: dict[str, Any] | None = None) -> int:
    """The padded width for a batch whose longest row has `longest` tokens: its length bucket in
    the build's table (`table`, common.buckets.Buckets' fields; the default table where none is
    given)."""
    from common.buckets import Buckets

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in (table or {}).items()}
    return Buckets(**fields).length_for(longest, max_length)


def encode_rows(tokenizer, texts, max_length, pad_id, pairs=None):
    """Unpadded ids of `texts` (already checked; `pairs`: a pair task's second texts), as
    common.feeds.Encoded."""
    from common.feeds import Encoded

    ids, types, truncated = [], [], 0
    rows = texts if pairs is None else list(zip(texts, pairs, strict=True))
    for i, e in enumerate(tokenizer.encode_batch(rows)):
        a, t = list(e.ids), list(e.type_ids)
        if len(a) > max_length and pairs is not None:  # the pair template's own longest_first
            tokenizer.enable_truncation(max_length, strategy="longest_first")
            cut = tokenizer.encode(texts[i], pairs[i])
            tokenizer.no_truncation()
            a, t, truncated = list(cut.ids), list(cut.type_ids), truncated + 1
        elif len(a) > max_length:  # keep [CLS] ... and the final [SEP]
            a, t, truncated = a[: max_length - 1] + a[-1:], t[: max_length - 1] + t[-1:], truncated + 1
        ids.append(np.asarray(a, dtype=np.int64))
        types.append(np.asarray(t, dtype=np.int64))
    return Encoded(tuple(ids), tuple(types), pad_id, max_length, truncated)


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        from common.feeds import InputError, check_pairs
        from deploy.service import decode_texts

        settings = json.loads((HERE / "settings.json").read_text())
        self.max_length, self.names = settings["max_length"], settings["input_names"]
        self.pad_id, self.pair = settings["pad_id"], settings["pair"]
        # a repository written before the table was recorded: the default table
        self.table = settings.get("buckets")
        self.check_pairs = check_pairs
        self.tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
        self.tokenizer.no_truncation()  # truncation is done above, as in common.feeds.encode
        self.tokenizer.no_padding()
        self.input_error, self.decode = InputError, decode_texts

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

        responses = [None] * len(requests)
        encoded = {}
        for i, request in enumerate(requests):
            try:
                texts = self.decode(list(pb_utils.get_input_tensor_by_name(request, "text").as_numpy()))
                second = pb_utils.get_input_tensor_by_name(request, "text_pair")
                pairs = None if second is None else self.decode(list(second.as_numpy()), "text_pair")
                texts, pairs = self.check_pairs(texts, pairs, self.pair)
            except self.input_error as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            encoded[i] = encode_rows(self.tokenizer, texts, self.max_length, self.pad_id, pairs)
        if encoded:
            width = bucket(max(int(e.lengths().max()) for e in encoded.values()), self.max_length,
                           self.table)
            for i, enc in encoded.items():
                feed = enc.batch(list(range(len(enc))), self.names, pad_to=width)
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, a) for n, a in feed.items()])
        return responses
