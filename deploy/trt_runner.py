"""TensorRT runner: deserialises a plan, binds CUDA buffers (torch tensors) and runs
execute_async_v3 on its own stream, after selecting the optimization profile (TrtProfile: batch
1, or batches 2..max) that admits the batch. Runs on the GPU its device names (cuda or cuda:N):
TensorRT deserialises, allocates and executes on the current CUDA device, so loading and every
inference run with that GPU made current. Refuses an engine built for another GPU, compute
capability or TensorRT version, or with other profiles than its recipe, naming the command that
rebuilds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.trt import OutsideProfiles, TrtProfile
from deploy.runner import BaseRunner, RunnerError


class TrtRunner(BaseRunner):
    backend = "trt"

    def __init__(self, plan: Path, input_names: tuple[str, ...], built_on: dict[str, Any],
                 profile: TrtProfile, variant: str, device: str = "cuda"):
        from common.env import cuda_index

        super().__init__(variant, input_names, threads=1)
        try:
            # an explicit number now; "cuda" is torch's current device, resolved at load
            # (cuda_index refuses anything but cuda or cuda:N)
            self.index: int | None = None if device == "cuda" else cuda_index(device)
        except ValueError as exc:
            raise RunnerError(f"the trt backend runs on a CUDA GPU: {exc}") from None
        self.device = device
        self.plan = Path(plan)
        self.built_on = built_on
        self.profile = profile
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.active_profile: int | None = None

    def load(self) -> None:
        from common.trt import check_engine_identity, gpu_identity, require_tensorrt

        require_tensorrt("the trt backend")
        import tensorrt as trt
        import torch

        if self.index is None:
            self.index = int(torch.cuda.current_device())
        if self.index >= torch.cuda.device_count():
            raise RunnerError(f"{self.device}: this machine has {torch.cuda.device_count()} CUDA "
                              "GPU(s), numbered from 0")
        check_engine_identity(self.built_on, gpu_identity(self.index), self.plan)
        with torch.cuda.device(self.index):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
            if self.engine is None:
                raise RunnerError(f"TensorRT could not deserialise {self.plan}; rebuild with "
                                  "`make engines`")
            check_profiles(self.engine, self.profile, self.input_names[0], self.plan)
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.index)
        self.active_profile = None  # selected explicitly before the first shapes are set
        super().load()

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import tensorrt as trt
        import torch

        self._require_loaded()
        feed = self._check_feed(feed)
        batch, seq = feed[self.input_names[0]].shape
        keep = []
        gpu = f"cuda:{self.index}"
        with torch.cuda.device(self.index), torch.cuda.stream(self.stream):
            self.select_profile(batch, seq)
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    t = torch.from_numpy(feed[name].astype(dtype, copy=False)).to(
                        gpu, non_blocking=True)
                    self.context.set_input_shape(name, tuple(t.shape))
                    self.context.set_tensor_address(name, int(t.data_ptr()))
                    keep.append(t)
            out = torch.empty((batch, int(self.context.get_tensor_shape("logits")[1])),
                              dtype=torch.float32, device=gpu)
            self.context.set_tensor_address("logits", int(out.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RunnerError("TensorRT execution failed")
        self.stream.synchronize()  # latency includes the whole round trip, measured on the host
        return out.cpu().numpy()

    def select_profile(self, batch: int, seq: int) -> int:
        """Make the profile admitting (batch, seq) the context's, on the runner's stream, when it
        is not already; input shapes are set after this (TensorRT invalidates them on a switch)."""
        try:
            index = self.profile.profile_for(batch, seq)
        except OutsideProfiles as exc:
            raise RunnerError(str(exc)) from None
        if index != self.active_profile:
            if not self.context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise RunnerError(f"TensorRT refused optimization profile {index} of {self.plan}; "
                                  "rebuild it with `make engines`")
            self.active_profile = index
        return index

    def close(self) -> None:
        self.active_profile = None
        self.context = None
        self.engine = None
        super().close()

    def files(self) -> list[Path]:
        return [self.plan]

    def info(self) -> dict[str, Any]:
        from common.env import cuda_device

        # weights in memory: the plan's bytes (TensorRT keeps the serialized weights on the GPU;
        # activations come on top, in the context's device memory)
        gpu = self.device if self.index is None else f"cuda:{self.index}"
        return {**super().info(), "device": gpu, "provider": "tensorrt",
                "device_info": {**cuda_device(gpu), "tensorrt": self.built_on.get("tensorrt")},
                "weight_bytes": self.plan.stat().st_size}


def check_profiles(engine: Any, recipe_profile: TrtProfile, input_name: str, path: Path) -> None:
    """Refuse an engine whose optimization profiles are not the ones its recipe describes (the
    runner selects them by index)."""
    want = recipe_profile.profiles()
    got = [tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(input_name, i))
           for i in range(engine.num_optimization_profiles)]
    if got != want:
        raise RunnerError(f"{path} has optimization profiles {got} for {input_name}, its recipe "
                          f"says {want}: rebuild it with `make engines`")
