"""Triton model repositories, written as protobuf messages (tritonclient's model_config_pb2) and
serialised with text_format, so a config.pbtxt cannot carry a typo the server would reject.

Two layouts, one client contract, shaped by the task the artifacts were built for (model
`classifier`, input `text` BYTES [1] batched, plus `text_pair` BYTES [1] for a pair task; outputs
`label` BYTES [1] (the task's label name), `label_id` INT64 [1], `probs` FP32 [number of labels]).
Triton itself refuses, per request, a pair task's request without `text_pair` and a single-text
task's request with one:
- `write_local_repo` (here): one Python-backend model that runs any variant through its Runner
  (what `python -m deploy serve` starts with the tritonserver binary bundled in nvidia-pytriton,
  whose only backend is Python);
- `write_ngc_repo` (deploy/ngc_repo.py): for the NGC `tritonserver` image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import doc
from common.errors import ConfigError, UserError
from common.manifest import Manifest
from deploy.factories import find_variant

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent


@dataclass(frozen=True)
class ServeConfig:
    """One served variant. The scheduling defaults are the CPU ones (CPU_DEFAULTS)."""

    backend: str = doc("ort", "ort | torch | qlora | trt (or give --variant as backend/name)")
    variant: str = doc("fp32", "the variant served; `--help` lists them")
    model_name: str = doc("classifier", "the name clients call")
    max_batch: int = 32
    queue_delay_us: int = doc(0, "dynamic batcher's wait for more requests (microseconds)")
    dynamic_batching: bool = True
    instances: int = doc(1, "model instances")
    threads: int = doc(0, "threads per instance; 0 = every core")
    # ONNX Runtime's intra-op threads spin-wait between runs (ORT's default) or sleep; the ort
    # backend only, other backends have no such setting and ignore it
    spin: bool = doc(False, "ONNX Runtime's intra-op threads spin-wait between requests (ort only)")

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.instances < 1 or self.queue_delay_us < 0 or self.threads < 0:
            raise ConfigError("max_batch and instances must be >= 1, queue_delay_us and threads "
                              ">= 0")
        v = find_variant(self.backend, self.variant)  # an unknown variant fails here, with the list
        if (v.backend, v.variant) != (self.backend, self.variant):  # written as backend/name
            object.__setattr__(self, "backend", v.backend)
            object.__setattr__(self, "variant", v.variant)

    @property
    def ort_spin(self) -> bool:
        """The spin setting the served Runner gets (True, ORT's default, for other backends)."""
        return self.spin or self.backend != "ort"


# Scheduling defaults per device. CPU: what `make bench` recommended (docs/serving.md has the
# sweep): 1 instance x every core with the batcher and no queue delay (Triton batches only what is
# already waiting), ONNX Runtime's threads not spinning (they share the cores with the HTTP server
# and its clients). GPU: not measured here; a GPU runs a batch of 32 short sentences in about the
# time of one, so the batcher with a short window is the usual choice (model-analyzer finds the
# best one).
CPU_DEFAULTS: dict[str, Any] = {
    "dynamic_batching": True, "queue_delay_us": 0, "instances": 1, "threads": 0, "spin": False}
GPU_DEFAULTS: dict[str, Any] = {
    "dynamic_batching": True, "queue_delay_us": 100, "instances": 1, "threads": 0, "spin": True}


def triton_pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise UserError("writing Triton configs needs tritonclient: "
                           "pip install 'tritonclient[grpc,http]' (the `serve` dependency group)") from exc
    return model_config_pb2


def write_config(cfg, folder: Path) -> Path:
    from google.protobuf import text_format

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.pbtxt"
    path.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    return path


def text_inputs(pair: bool) -> tuple[str, ...]:
    """The request's text inputs: `text`, and a pair task's `text_pair`."""
    return ("text", "text_pair") if pair else ("text",)


def contract_io(cfg, pb, num_labels: int, pair: bool) -> None:
    """The client-facing inputs and outputs (shared by the local model and the ensemble)."""
    for name in text_inputs(pair):
        cfg.input.add(name=name, data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="label_id", data_type=pb.TYPE_INT64, dims=[1])
    cfg.output.add(name="probs", data_type=pb.TYPE_FP32, dims=[num_labels])


def batching(cfg, sc: ServeConfig) -> None:
    if sc.dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = sc.queue_delay_us


def preflight(sc: ServeConfig, artifacts: Path) -> None:
    """Fail before starting a server: the artifact must be built and current, the baseline whose
    tokenizer and max length every request is encoded with intact, and the backend's library
    present (a model that cannot load would only show up in the server log)."""
    from common.checkpoint import baseline_dir
    from common.variants import servable, unavailable

    v = find_variant(sc.backend, sc.variant)
    if v not in servable("triton"):
        raise UserError(f"{v.key} is not served by the local server (its Python backend runs CPU "
                        "runners); serve it from the NGC repository (`python -m deploy "
                        "triton-repo`), or pick one of: "
                        + ", ".join(x.key for x in servable("triton")))
    why = unavailable(v, "cpu")
    if why:
        raise UserError(f"{v.key} cannot be served here: {why}")
    Manifest(artifacts).verify(v.artifact)
    baseline_dir(artifacts)


def write_local_repo(repo: Path, sc: ServeConfig, artifacts: Path) -> Path:
    """One Python-backend model running the variant's Runner; returns its config path."""
    from common.task import task_of

    pb = triton_pb()
    preflight(sc, Path(artifacts))
    task = task_of(Path(artifacts))
    cfg = pb.ModelConfig(name=sc.model_name, backend="python", max_batch_size=sc.max_batch)
    contract_io(cfg, pb, task.num_labels, task.pair)
    batching(cfg, sc)
    cfg.instance_group.add(count=sc.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    params = {"project_root": str(PROJECT_ROOT), "artifacts": str(Path(artifacts).resolve()),
              "backend": sc.backend, "variant": sc.variant, "threads": str(sc.threads),
              "spin": "1" if sc.ort_spin else "0"}
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    folder = repo / sc.model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "triton_model.py", folder / "1" / "model.py")
    return write_config(cfg, folder)
