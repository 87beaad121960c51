"""Triton Python-backend model: raw text (and, for a pair task, its `text_pair`) in, label /
label_id / probs out (copied as 1/model.py).

Why a Python-backend model of ours and not PyTriton's callables: with pytriton 0.7 an exception
for one request fails every request the dynamic batcher put in the same batch, and the client
gets HTTP 500 with a Python traceback. The Python backend answers each request separately, so a
bad request gets its own 400 (TritonError.INVALID_ARG) with our message, and the good requests
batched beside it are still served.

Parameters (config.pbtxt): project_root, artifacts, backend, variant, threads, spin.
"""

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        sys.path.insert(0, p["project_root"])
        from common.feeds import InputError, check_pairs
        from deploy.service import ClassifierService, decode_texts

        self.input_error, self.decode, self.check_pairs = InputError, decode_texts, check_pairs
        self.service = ClassifierService(p["artifacts"], p["backend"], p["variant"],
                                         int(p["threads"]), spin=p.get("spin", "1") == "1")

    def read(self, request):
        """A request's texts (and pairs), checked as the evaluator checks them."""
        tensor = pb_utils.get_input_tensor_by_name(request, "text")
        if tensor is None:
            raise self.input_error("send the input `text`")
        texts = self.decode(list(tensor.as_numpy()))
        second = pb_utils.get_input_tensor_by_name(request, "text_pair")
        pairs = None if second is None else self.decode(list(second.as_numpy()), "text_pair")
        return self.check_pairs(texts, pairs, self.service.pair)

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, pairs, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                batch, second = self.read(request)
            except self.input_error as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            owners.append((i, len(texts), len(texts) + len(batch)))
            texts += batch
            pairs += second or []
        if texts:  # one forward pass over every valid request's texts
            try:
                pred = self.service.predict(texts, pairs if self.service.pair else None)
            except Exception as exc:  # the model itself failed: every request of the batch fails
                err = pb_utils.TritonError(f"inference failed: {exc}", pb_utils.TritonError.INTERNAL)
                for i, _, _ in owners:
                    responses[i] = pb_utils.InferenceResponse(error=err)
                return responses
            names = np.array([s.encode() for s in pred.labels], dtype=np.object_)
            for i, a, b in owners:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("label", names[a:b].reshape(-1, 1)),
                    pb_utils.Tensor("label_id", pred.label_ids[a:b].reshape(-1, 1)),
                    pb_utils.Tensor("probs", pred.probs[a:b]),
                ])
        return responses

    def finalize(self):
        self.service.close()
