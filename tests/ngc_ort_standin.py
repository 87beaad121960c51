"""Test stand-in for Triton's onnxruntime backend (absent from the nvidia-pytriton bundle, whose
only backend is Python): a Python-backend model with the generated model's config, running the
same model.onnx with ONNX Runtime on CPU. Requests that reach one execute() are run as one batch,
like the real backend does, so batching is observable in Triton's statistics."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.names = [i["name"] for i in cfg["input"]]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(HERE / "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.names}
                 for r in requests]
        widths = {f[self.names[0]].shape[1] for f in feeds}
        if len(widths) != 1:  # the real backend cannot batch these either
            raise RuntimeError(f"requests of different widths {sorted(widths)} in one batch")
        batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.names}
        logits = self.sess.run(["logits"], batch)[0]
        out, start = [], 0
        for f in feeds:
            n = f[self.names[0]].shape[0]
            out.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("logits", logits[start:start + n])]))
            start += n
        return out
