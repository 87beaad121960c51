"""TensorRT runner: deserialises a plan, binds CUDA buffers (torch tensors) and runs
execute_async_v3 on its own stream. Refuses an engine built for another GPU, compute capability
or TensorRT version, naming the command that rebuilds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.trt import TrtProfile
from deploy.runner import BaseRunner, RunnerError


class TrtRunner(BaseRunner):
    backend = "trt"

    def __init__(self, plan: Path, input_names: tuple[str, ...], built_on: dict[str, Any],
                 profile: TrtProfile, variant: str):
        super().__init__(variant, input_names, threads=1)
        self.plan = Path(plan)
        self.built_on = built_on
        self.profile = profile
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None

    def load(self) -> None:
        from common.trt import check_engine_identity, gpu_identity, require_tensorrt

        require_tensorrt("the trt backend")
        import tensorrt as trt
        import torch

        check_engine_identity(self.built_on, gpu_identity(), self.plan)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise RunnerError(f"TensorRT could not deserialise {self.plan}; rebuild with `make engines`")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        super().load()

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import tensorrt as trt
        import torch

        self._require_loaded()
        feed = self._check_feed(feed)
        batch, seq = feed[self.input_names[0]].shape
        if not self.profile.admits(batch, seq):
            raise RunnerError(f"shape (batch {batch}, sequence {seq}) is outside the engine's "
                              f"profile {self.profile.shapes()}; rebuild it with a wider profile, e.g. "
                              "`python -m engines --trt-profile-max-seq 256 --trt-profile-max-batch 128`")
        keep = []
        with torch.cuda.stream(self.stream):
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    t = torch.from_numpy(feed[name].astype(dtype, copy=False)).cuda(non_blocking=True)
                    self.context.set_input_shape(name, tuple(t.shape))
                    self.context.set_tensor_address(name, int(t.data_ptr()))
                    keep.append(t)
            out = torch.empty((batch, int(self.context.get_tensor_shape("logits")[1])),
                              dtype=torch.float32, device="cuda")
            self.context.set_tensor_address("logits", int(out.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RunnerError("TensorRT execution failed")
        self.stream.synchronize()  # latency includes the whole round trip, measured on the host
        return out.cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
        super().close()

    def files(self) -> list[Path]:
        return [self.plan]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": "cuda", "provider": "tensorrt",
                "device_info": self.built_on}
