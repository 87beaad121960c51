"""Triton model repositories, written as protobuf messages (tritonclient's model_config_pb2) and
serialised with text_format, so a config.pbtxt cannot carry a typo the server would reject.

Two layouts, one client contract (model `emotion`, input `text` BYTES [1] batched, outputs
`label` BYTES [1], `label_id` INT64 [1], `probs` FP32 [6]):
- `write_local_repo`: one Python-backend model that runs any variant through its Runner (what
  `python -m deploy serve` starts with the tritonserver binary bundled in nvidia-pytriton, whose
  only backend is Python);
- `write_ngc_repo`: for the NGC `tritonserver` image: ONNX variants on the `onnxruntime` backend,
  TensorRT plans on the `tensorrt` backend, a Python `tokenizer` model (the `tokenizers` library
  only) and a Python `postprocess` model, chained by an `ensemble` named `emotion`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.checkpoint import baseline_meta
from common.errors import ConfigError, UserError
from common.labels import NUM_LABELS
from common.manifest import Manifest
from deploy.registry import find_variant

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent


@dataclass(frozen=True)
class ServeConfig:
    backend: str = "ort"
    variant: str = "fp32"
    model_name: str = "emotion"
    max_batch: int = 32
    queue_delay_us: int = 2000
    dynamic_batching: bool = True
    instances: int = 1
    threads: int = 0  # per instance; 0 = every core

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.instances < 1 or self.queue_delay_us < 0:
            raise ConfigError("max_batch and instances must be >= 1, queue_delay_us >= 0")
        find_variant(self.backend, self.variant)  # unknown variants fail here, with the list


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UserError("writing Triton configs needs tritonclient: "
                           "pip install 'tritonclient[grpc,http]' (the `serve` dependency group)") from exc
    return model_config_pb2


def _write_config(cfg, folder: Path) -> Path:
    from google.protobuf import text_format

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.pbtxt"
    path.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    return path


def contract_io(cfg, pb) -> None:
    """The client-facing input and outputs (shared by the local model and the ensemble)."""
    cfg.input.add(name="text", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label_id", data_type=pb.TYPE_INT64, dims=[1])
    cfg.output.add(name="probs", data_type=pb.TYPE_FP32, dims=[NUM_LABELS])


def _batching(cfg, sc: ServeConfig) -> None:
    if sc.dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = sc.queue_delay_us


def preflight(sc: ServeConfig, artifacts: Path) -> None:
    """Fail before starting a server: the artifact must be built and current, and the backend's
    library present (a model that cannot load would only show up in the server log)."""
    Manifest(artifacts).verify(find_variant(sc.backend, sc.variant).artifact)
    if sc.backend == "trt":
        from common.trt import require_tensorrt

        require_tensorrt(f"serving trt/{sc.variant}")


def write_local_repo(repo: Path, sc: ServeConfig, artifacts: Path) -> Path:
    """One Python-backend model running the variant's Runner; returns its config path."""
    pb = _pb()
    preflight(sc, Path(artifacts))
    cfg = pb.ModelConfig(name=sc.model_name, backend="python", max_batch_size=sc.max_batch)
    contract_io(cfg, pb)
    _batching(cfg, sc)
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    params = {"project_root": str(PROJECT_ROOT), "artifacts": str(Path(artifacts).resolve()),
              "backend": sc.backend, "variant": sc.variant, "threads": str(sc.threads)}
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    folder = repo / sc.model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "triton_model.py", folder / "1" / "model.py")
    return _write_config(cfg, folder)


# --- NGC repository --------------------------------------------------------------------------

ONNX_VARIANTS = ("fp32", "ptq", "qat", "dynamic")  # ORT-servable graphs (plain ONNX ops / QDQ)
TRT_VARIANTS = ("fp32", "fp16", "int8", "ptq", "qat")


def _onnx_model(pb, name: str, backend: str, input_names: list[str], sc: ServeConfig, gpu: bool):
    cfg = pb.ModelConfig(name=name, backend=backend, max_batch_size=sc.max_batch)
    for n in input_names:  # variable sequence length: dims [-1]
        cfg.input.add(name=n, data_type=pb.TYPE_INT64, dims=[-1])
    cfg.output.add(name="logits", data_type=pb.TYPE_FP32, dims=[NUM_LABELS])
    _batching(cfg, sc)
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=sc.instances, kind=kind)
    return cfg


def write_ngc_repo(out: Path, artifacts: Path, sc: ServeConfig, gpu: bool = True) -> dict:
    """Every built ONNX / TensorRT variant + tokenizer + postprocess + the `emotion` ensemble over
    the variant named in `sc` (backend ort -> onnxruntime, trt -> tensorrt)."""
    pb = _pb()
    artifacts = Path(artifacts)
    man = Manifest(artifacts)
    meta = baseline_meta(artifacts)
    names = list(meta["input_names"])
    written: dict[str, str] = {}
    for backend, variants, ext, triton_backend in (("ort", ONNX_VARIANTS, "onnx", "onnxruntime"),
                                                   ("trt", TRT_VARIANTS, "plan", "tensorrt")):
        for v in variants:
            art = find_variant(backend, v).artifact
            if not man.built(art):
                continue
            src = man.verify(art)
            name = f"emotion_{backend}_{v.replace('-', '_')}"
            folder = out / name
            (folder / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / "1" / f"model.{ext}")
            cfg = _onnx_model(pb, name, triton_backend, names, sc, gpu)
            cfg.default_model_filename = f"model.{ext}"
            _write_config(cfg, folder)
            written[f"{backend}/{v}"] = name
    target = written.get(f"{sc.backend}/{sc.variant}")
    if target is None:
        raise UserError(f"{sc.backend}/{sc.variant} is not built (or not servable on the NGC "
                           f"image): built and servable here: {sorted(written)}")
    # tokenizer: tokenizer.json + its settings, and the input checks shared with the local server
    tok = out / "tokenizer"
    (tok / "1" / "project" / "common").mkdir(parents=True, exist_ok=True)
    (tok / "1" / "project" / "deploy").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "triton_tokenizer.py", tok / "1" / "model.py")
    shutil.copy(artifacts / man.get("baseline")["path"] / "tokenizer.json", tok / "1" / "tokenizer.json")
    for rel in ("common/__init__.py", "common/feeds.py", "common/labels.py", "deploy/service.py"):
        shutil.copy(PROJECT_ROOT / rel, tok / "1" / "project" / rel)
    (tok / "1" / "project" / "deploy" / "__init__.py").write_text("")
    (tok / "1" / "settings.json").write_text(json.dumps(
        {"max_length": int(meta["max_length"]), "input_names": names}))
    cfg = pb.ModelConfig(name="tokenizer", backend="python", max_batch_size=sc.max_batch)
    cfg.input.add(name="text", data_type=pb.TYPE_STRING, dims=[1])
    for n in names:
        cfg.output.add(name=n, data_type=pb.TYPE_INT64, dims=[-1])
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    _write_config(cfg, tok)
    post = out / "postprocess"
    (post / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "triton_postprocess.py", post / "1" / "model.py")
    cfg = pb.ModelConfig(name="postprocess", backend="python", max_batch_size=sc.max_batch)
    cfg.input.add(name="logits", data_type=pb.TYPE_FP32, dims=[NUM_LABELS])
    cfg.output.add(name="label", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label_id", data_type=pb.TYPE_INT64, dims=[1])
    cfg.output.add(name="probs", data_type=pb.TYPE_FP32, dims=[NUM_LABELS])
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    _write_config(cfg, post)
    ens = pb.ModelConfig(name=sc.model_name, platform="ensemble", max_batch_size=sc.max_batch)
    contract_io(ens, pb)
    step = ens.ensemble_scheduling.step.add(model_name="tokenizer", model_version=-1)
    step.input_map["text"] = "text"
    for n in names:
        step.output_map[n] = n
    step = ens.ensemble_scheduling.step.add(model_name=target, model_version=-1)
    for n in names:
        step.input_map[n] = n
    step.output_map["logits"] = "logits"
    step = ens.ensemble_scheduling.step.add(model_name="postprocess", model_version=-1)
    step.input_map["logits"] = "logits"
    for n in ("label", "label_id", "probs"):
        step.output_map[n] = n
    (out / sc.model_name / "1").mkdir(parents=True, exist_ok=True)
    _write_config(ens, out / sc.model_name)
    return {"models": written, "ensemble": sc.model_name, "serves": target}
