"""Build TensorRT engines from ONNX: FP32, FP16, implicit INT8 (entropy calibrator, TensorRT
10.x only) and explicit INT8 from Q/DQ ONNX (TensorRT 10.x and 11.x).

Precision per engine (what `configure` sets, tested without TensorRT):
- fp32: TF32 cleared (TensorRT enables it by default; an "fp32" engine must not run its matmuls
  in TF32, and its logits are compared with ONNX Runtime FP32 at 1e-2);
- fp16: FP16 allowed;
- int8-implicit: INT8 + FP16 with the entropy calibrator (10.x; removed in 11);
- int8-explicit: on 10.x a weakly typed network with INT8 + FP16: the Q/DQ placement decides where
  INT8 runs and every layer left unquantized (LayerNorm, Softmax, GELU, the head) may run FP16, as
  NVIDIA's ModelOpt graphs intend; 11.x has neither flag: the network is strongly typed and the
  unquantized layers run in the ONNX's own type (FP32; TF32 allowed), which makes trt/ptq and
  trt/qat slower there than an FP16-typed Q/DQ graph would be (docs/tensorrt.md).
Every engine gets one optimization profile over (batch, sequence) from TrtProfile. tensorrt is
imported inside the functions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import doc
from common.errors import ConfigError, UserError
from common.trt import TrtProfile

PRECISIONS = ("fp32", "fp16", "int8-implicit", "int8-explicit")


@dataclass(frozen=True)
class TrtConfig:
    VERSION = 3
    precision: str = doc("fp16", " | ".join(PRECISIONS))
    profile: TrtProfile = field(default_factory=TrtProfile)
    workspace_mb: int = 4096
    calib_batch_size: int = doc(16, "implicit INT8: the calibration set's batch size")
    explicit_fp16: bool = doc(True, "explicit INT8 on TensorRT 10.x: unquantized layers may run "
                              "FP16 (weakly typed + FP16 flag); 11.x is strongly typed")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


class EngineBuildError(UserError, RuntimeError):
    pass


def strongly_typed(cfg: TrtConfig, trt_version: str) -> bool:
    from common.trt import trt_major

    return cfg.precision == "int8-explicit" and (trt_major(trt_version) >= 11 or not cfg.explicit_fp16)


def configure(trt: Any, config: Any, cfg: TrtConfig, trt_version: str) -> dict[str, Any]:
    """Set the builder flags of `cfg.precision`; returns what was set and what the unquantized
    layers run in (recorded in the manifest)."""
    if cfg.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
        return {"flags": ["-TF32"], "unquantized_layers": "fp32"}
    if cfg.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        return {"flags": ["FP16"], "unquantized_layers": "fp16 or fp32 (fastest)"}
    if cfg.precision == "int8-implicit" or not strongly_typed(cfg, trt_version):
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 does not take may run FP16
        return {"flags": ["INT8", "FP16"], "unquantized_layers": "fp16 or fp32 (fastest)",
                "strongly_typed": False}
    return {"flags": [], "strongly_typed": True,
            "unquantized_layers": "the ONNX's own type (fp32; TF32 allowed)"}


def _parse(trt, builder, onnx_path: Path, strong: bool):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    logger = trt.Logger(trt.Logger.WARNING)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def build_engine(onnx_path: Path, plan_path: Path, cfg: TrtConfig, calib_path: Path | None = None,
                 cache_path: Path | None = None) -> dict[str, Any]:
    import tensorrt as trt

    from common.config import recipe
    from common.trt import gpu_identity, require_implicit_int8

    if cfg.precision == "int8-implicit":
        require_implicit_int8(trt.__version__)
        if calib_path is None or cache_path is None:
            raise EngineBuildError("implicit INT8 needs the calibration set and a cache path")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, onnx_path, strongly_typed(cfg, trt.__version__))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    lo, opt, hi = cfg.profile.shapes()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in names:
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    precision = configure(trt, config, cfg, trt.__version__)
    stream = None
    if cfg.precision == "int8-implicit":
        import numpy as np

        from calibration.trt_calibrator import (
            BatchStream,
            CalibrationFeeder,
            make_entropy_calibrator,
            torch_to_device,
        )

        dtypes = {network.get_input(i).name: np.dtype(trt.nptype(network.get_input(i).dtype))
                  for i in range(network.num_inputs)}
        feeder = CalibrationFeeder(calib_path, cfg.calib_batch_size, names, dtypes)  # type: ignore[arg-type]
        stream = BatchStream(feeder, torch_to_device)
        calib_profile = builder.create_optimization_profile()
        for name in names:
            calib_profile.set_shape(name, feeder.shape, feeder.shape, feeder.shape)
        config.int8_calibrator = make_entropy_calibrator(stream, cache_path)  # type: ignore[arg-type]
        config.set_calibration_profile(calib_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build a {cfg.precision} engine from {onnx_path} "
                               "(see the TensorRT log above)")
    calibration = stream.check_complete() if stream is not None else None
    Path(plan_path).write_bytes(bytes(serialized))
    return {"device": gpu_identity(), "trt": recipe(cfg), "inputs_bound": names,
            "precision": precision, **({"calibration": calibration} if calibration else {})}
