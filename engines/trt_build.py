"""Build TensorRT engines from ONNX: FP32, FP16, implicit INT8 (entropy calibrator, TensorRT
10.x only) and explicit INT8 from Q/DQ ONNX (TensorRT 10.x and 11.x).

Precision per engine (what `configure` sets, tested without TensorRT):
- fp32: TF32 cleared (TensorRT enables it by default; an "fp32" engine must not run its matmuls
  in TF32, and its logits are compared with ONNX Runtime FP32 at 1e-2);
- fp16: on 10.x the FP16 flag (TensorRT picks FP16 or FP32 per layer); 11.x has no precision
  flags: the source ONNX is converted to an FP16-typed ONNX (`fp16_typed_onnx`, LayerNorm kept
  FP32) and built strongly typed;
- int8-implicit: INT8 + FP16 with the entropy calibrator (10.x; removed in 11);
- int8-explicit: on 10.x a weakly typed network with INT8 + FP16: the Q/DQ placement decides where
  INT8 runs and every layer left unquantized (LayerNorm, Softmax, GELU, the head) may run FP16, as
  NVIDIA's ModelOpt graphs intend; 11.x has neither flag: the network is strongly typed and the
  unquantized layers run in the ONNX's own type (FP32; TF32 allowed), which makes trt/ptq and
  trt/qat slower there than an FP16-typed Q/DQ graph would be (docs/tensorrt.md).
Every engine gets the optimization profiles of TrtProfile (batch 1, and batches 2..max), from the
bucket table. tensorrt is imported inside the functions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc
from common.errors import ConfigError, UserError
from common.trt import TrtProfile, require_implicit_int8, trt_major

PRECISIONS = ("fp32", "fp16", "int8-implicit", "int8-explicit")
# Kept FP32 in the FP16-typed ONNX of the 11.x fp16 engine, besides the converter's default list
# (ops without FP16 kernels): LayerNormalization, whose variance of post-residual activations can
# pass FP16's range (TensorRT 10 warns that an FP16 layernorm may overflow and advises FP32), and
# the pieces of a LayerNorm decomposed below opset 17 (Pow, ReduceMean, Sqrt: x**2 overflows FP16
# above 256). Softmax stays FP16: its outputs lie in [0, 1], TensorRT reduces in FP32, and casts
# around it would split the MatMul-Softmax-MatMul chain TensorRT fuses into one attention kernel.
FP32_OPS = ("LayerNormalization", "Pow", "ReduceMean", "Sqrt")


@dataclass(frozen=True)
class TrtConfig:
    precision: str = doc("fp16", " | ".join(PRECISIONS))
    profile: TrtProfile = field(default_factory=TrtProfile)
    workspace_mb: int = 4096
    calib_batch_size: int = doc(16, "implicit INT8: the calibration set's batch size")
    explicit_fp16: bool = doc(True, "explicit INT8 on TensorRT 10.x: unquantized layers may run "
                              "FP16 (weakly typed + FP16 flag); 11.x is strongly typed")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        check_ranges(self, workspace_mb=">= 1", calib_batch_size=">= 1")


class EngineBuildError(UserError, RuntimeError):
    pass


def strongly_typed(cfg: TrtConfig, trt_version: str) -> bool:
    """Whether the network is strongly typed: always on 11.x (weak typing is gone), on 10.x only
    for explicit INT8 with explicit_fp16 off."""
    return trt_major(trt_version) >= 11 or (cfg.precision == "int8-explicit" and not cfg.explicit_fp16)


def configure(trt: Any, config: Any, cfg: TrtConfig, trt_version: str) -> dict[str, Any]:
    """Set the builder flags of `cfg.precision`; returns what was set and what the unquantized
    layers run in (recorded in the manifest). On 11.x no FP16/INT8 flag is touched (they do not
    exist there)."""
    if cfg.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 still exists in 11
        return {"flags": ["-TF32"], "unquantized_layers": "fp32"}
    if trt_major(trt_version) >= 11:
        if cfg.precision == "int8-implicit":
            require_implicit_int8(trt_version)  # raises: a clear refusal, not an AttributeError
        if cfg.precision == "fp16":
            return {"flags": [], "strongly_typed": True,
                    "unquantized_layers": f"fp16 (an FP16-typed ONNX; any {'/'.join(FP32_OPS)} in fp32)"}
        return {"flags": [], "strongly_typed": True,
                "unquantized_layers": "the ONNX's own type (fp32; TF32 allowed)"}
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


def fp16_typed_onnx(src: Path, dst: Path) -> dict[str, Any]:
    """Write an FP16-typed copy of `src` (float initializers and activations FP16 except around
    FP32_OPS; inputs and outputs keep their types) for the 11.x fp16 engine; returns what it
    did, for the manifest."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    # onnxruntime 1.31's converter can insert one Cast twice (same name, input and type) where a
    # value feeds two ops kept in FP32: the copies are exact, so one of each is kept
    seen: set[bytes] = set()
    nodes = []
    for n in model.graph.node:
        key = n.SerializeToString()
        if key not in seen:
            seen.add(key)
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    OnnxModel.graph_topological_sort(model.graph)  # the converter appends its Casts at the end
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    kept = sorted({n.op_type for n in model.graph.node if n.op_type in FP32_OPS})
    return {"converter": "onnxruntime.transformers.float16 (keep_io_types)", "fp32_ops": kept}


def _parse(trt, builder, onnx_path: Path, strong: bool):
    # 11.x: every network is strongly typed and the STRONGLY_TYPED flag is deprecated (ignored)
    old = trt_major(trt.__version__) < 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong and old else 0
    network = builder.create_network(flags)
    logger = trt.Logger(trt.Logger.WARNING)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def serialize(builder: Any, network: Any, config: Any, what: str, stream: Any = None) -> Any:
    """build_serialized_network, or an EngineBuildError that carries the INT8 calibrator's own
    error: TensorRT takes an exception in get_batch as the end of the data, so its log alone
    does not say why a calibrated build failed."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is not None:
        return serialized
    msg = f"TensorRT failed to build {what} (see the TensorRT log above)"
    if stream is not None:
        msg += f"; the INT8 calibrator served {stream.served} of {len(stream.feeder)} batches"
        if stream.error is not None:
            msg += f" and stopped on {type(stream.error).__name__}: {stream.error}"
    raise EngineBuildError(msg) from getattr(stream, "error", None)


def build_engine(onnx_path: Path, plan_path: Path, cfg: TrtConfig, calib_path: Path | None = None,
                 cache_path: Path | None = None) -> dict[str, Any]:
    import tensorrt as trt

    from common.config import recipe
    from common.trt import gpu_identity

    if cfg.precision == "int8-implicit":
        require_implicit_int8(trt.__version__)
        if calib_path is None or cache_path is None:
            raise EngineBuildError("implicit INT8 needs the calibration set and a cache path")
    source, typed = Path(onnx_path), None
    if cfg.precision == "fp16" and trt_major(trt.__version__) >= 11:
        source = Path(plan_path).with_name(Path(plan_path).name + ".fp16.onnx")
        typed = {"source_fp16_onnx": fp16_typed_onnx(Path(onnx_path), source)}
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network, _parser = _parse(trt, builder, source, strongly_typed(cfg, trt.__version__))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        for lo, opt, hi in cfg.profile.profiles():  # profile i = TrtProfile.profile_for's i
            profile = builder.create_optimization_profile()
            for name in names:
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        precision = {**configure(trt, config, cfg, trt.__version__), **(typed or {})}
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
        serialized = serialize(builder, network, config,
                               f"a {cfg.precision} engine from {onnx_path}", stream)
    finally:
        if typed is not None:
            source.unlink(missing_ok=True)
    calibration = stream.check_complete() if stream is not None else None
    Path(plan_path).write_bytes(bytes(serialized))
    return {"device": gpu_identity(), "trt": recipe(cfg), "inputs_bound": names,
            "precision": precision, **({"calibration": calibration} if calibration else {})}
