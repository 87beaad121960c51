"""Build TensorRT engines from ONNX: FP32, FP16, implicit INT8 (entropy calibrator, TensorRT
10.x only) and explicit INT8 from Q/DQ ONNX (strongly typed; TensorRT 10.x and 11.x).

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
    VERSION = 2
    precision: str = doc("fp16", " | ".join(PRECISIONS))
    profile: TrtProfile = field(default_factory=TrtProfile)
    workspace_mb: int = 4096
    calib_batch_size: int = doc(16, "implicit INT8: the calibration set's batch size")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


class EngineBuildError(UserError, RuntimeError):
    pass


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
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
    explicit = cfg.precision == "int8-explicit"
    # Strong typing: Q/DQ nodes alone decide where INT8 runs; everything else stays as typed.
    network, _parser = _parse(trt, builder, onnx_path, strongly_typed=explicit)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    lo, opt, hi = cfg.profile.shapes()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in names:
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if cfg.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.precision == "int8-implicit":
        import numpy as np

        from calibration.trt_calibrator import CalibrationFeeder, make_entropy_calibrator

        dtypes = {network.get_input(i).name: np.dtype(trt.nptype(network.get_input(i).dtype))
                  for i in range(network.num_inputs)}
        feeder = CalibrationFeeder(calib_path, cfg.calib_batch_size, names, dtypes)  # type: ignore[arg-type]
        calib_profile = builder.create_optimization_profile()
        for name in names:
            calib_profile.set_shape(name, feeder.shape, feeder.shape, feeder.shape)
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take fall back to FP16
        config.int8_calibrator = make_entropy_calibrator(feeder, cache_path)  # type: ignore[arg-type]
        config.set_calibration_profile(calib_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build a {cfg.precision} engine from {onnx_path} "
                               "(see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(serialized))
    return {"device": gpu_identity(), "trt": recipe(cfg), "inputs_bound": names}
