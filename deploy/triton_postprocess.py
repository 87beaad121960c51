"""Triton Python-backend `postprocess` model of the NGC repository (copied as 1/model.py):
logits -> label (BYTES), label_id (INT64), probs (FP32, softmax). numpy only: the label names
are the task's (labels.json beside this file, written from the build's task), the softmax the
project's own (common/probs.py, copied beside it in project/)."""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "project"))
from common.probs import softmax  # noqa: E402

LABELS = json.loads((HERE / "labels.json").read_text(encoding="utf-8"))


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            if not np.isfinite(logits).all():  # NaN probabilities would look like an answer
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "the model produced non-finite logits", pb_utils.TritonError.INTERNAL)))
                continue
            ids = logits.argmax(-1).astype(np.int64)
            names = np.array([LABELS[i].encode() for i in ids], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("label", names.reshape(-1, 1)),
                pb_utils.Tensor("label_id", ids.reshape(-1, 1)),
                pb_utils.Tensor("probs", softmax(logits).astype(np.float32)),
            ]))
        return responses
