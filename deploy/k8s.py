"""Scale-out beyond one machine: Kubernetes manifests for the NGC model repository
(`python -m deploy triton-repo`), written by `python -m deploy k8s`.

- a KServe InferenceService on KServe's Triton runtime (modelFormat triton);
- the plain Kubernetes equivalent: a Deployment of the Triton image with GPU requests and
  readiness / liveness probes on Triton's health endpoints, a Service for HTTP, gRPC and metrics,
  and a HorizontalPodAutoscaler (CPU utilisation by default; Triton's queue time per request
  through a Prometheus adapter with --hpa-metric queue).
The model name, ports, probe paths and max batch come from the same ServeConfig and Ports as
`triton-repo` and the local server (never typed twice); the tests validate every manifest against
the real Kubernetes schemas (kubernetes-validate) and the InferenceService against KServe's own
Python models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import check_ranges, doc
from common.errors import ConfigError
from deploy.triton_repo import ServeConfig
from deploy.triton_server import LIVE_PATH, METRICS_PATH, READY_PATH, Ports, server_flags

APP = "emotion-triton"


@dataclass(frozen=True)
class K8sConfig:
    image: str = doc("emotion-triton:25.10", "the image of docker/Dockerfile.triton, pushed")
    storage_uri: str = doc("pvc://emotion-models/model_repository",
                           "where the model repository lives (KServe storageUri)")
    pvc: str = doc("emotion-models", "PersistentVolumeClaim holding model_repository/ (Deployment)")
    namespace: str = "default"
    replicas: int = 1
    max_replicas: int = 4
    gpus: int = doc(1, "GPUs per replica; 0 = CPU serving (the repository of `triton-repo --cpu`)")
    cpu_target: int = doc(70, "HPA: average CPU utilisation (%) to scale at")
    hpa_metric: str = doc("cpu", "cpu | queue (nv_inference_queue_duration_us via a Prometheus "
                          "adapter)")
    queue_target_us: int = 50_000

    def __post_init__(self) -> None:
        if self.hpa_metric not in {"cpu", "queue"}:
            raise ConfigError("hpa_metric must be cpu or queue")
        if not 1 <= self.replicas <= self.max_replicas:
            raise ConfigError("need 1 <= replicas <= max_replicas")
        if self.gpus < 0:
            raise ConfigError("gpus must be >= 0 (0 = CPU serving)")
        check_ranges(self, cpu_target="in [1, 100]", queue_target_us=">= 1")


def triton_args(sc: ServeConfig, ports: Ports, repo: str) -> list[str]:
    return [f"--model-repository={repo}", f"--http-port={ports.http}", f"--grpc-port={ports.grpc}",
            f"--metrics-port={ports.metrics}", *server_flags()]


def container_ports(ports: Ports) -> list[dict[str, Any]]:
    return [{"name": "http", "containerPort": ports.http, "protocol": "TCP"},
            {"name": "grpc", "containerPort": ports.grpc, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports.metrics, "protocol": "TCP"}]


def probe(path: str, delay: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "initialDelaySeconds": delay,
            "periodSeconds": 10, "failureThreshold": 6}


def manifests(sc: ServeConfig, k: K8sConfig, ports: Ports | None = None) -> dict[str, dict[str, Any]]:
    ports = ports or Ports()
    labels = {"app": APP, "model": sc.model_name}
    meta = {"name": APP, "namespace": k.namespace, "labels": labels}
    gpu = {"nvidia.com/gpu": str(k.gpus)} if k.gpus else {}  # gpus 0: a CPU deployment
    annotations = {"emotion/max-batch": str(sc.max_batch), "emotion/model": sc.model_name,
                   "emotion/variant": f"{sc.backend}/{sc.variant}"}
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {**meta, "name": sc.model_name, "annotations": annotations},
        "spec": {"predictor": {
            "minReplicas": k.replicas, "maxReplicas": k.max_replicas,
            "model": {"modelFormat": {"name": "triton"}, "storageUri": k.storage_uri,
                      "args": server_flags(),
                      "ports": [{"name": "h2c", "containerPort": ports.grpc, "protocol": "TCP"}],
                      "resources": {"limits": {**gpu, "cpu": "2", "memory": "4Gi"},
                                    "requests": {**gpu, "cpu": "2", "memory": "4Gi"}}}}},
    }
    container = {
        "name": "tritonserver", "image": k.image,
        "command": ["tritonserver"], "args": triton_args(sc, ports, "/models"),
        "ports": container_ports(ports),
        "readinessProbe": probe(READY_PATH, 10), "livenessProbe": probe(LIVE_PATH, 30),
        "resources": {"limits": {**gpu}, "requests": {**gpu, "cpu": "2", "memory": "4Gi"}},
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**meta, "annotations": annotations},
        "spec": {"replicas": k.replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels,
                                           "annotations": {"prometheus.io/scrape": "true",
                                                           "prometheus.io/port": str(ports.metrics),
                                                           "prometheus.io/path": METRICS_PATH}},
                              "spec": {"containers": [container],
                                       "volumes": [{"name": "models", "persistentVolumeClaim":
                                                    {"claimName": k.pvc, "readOnly": True}}]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": labels, "ports": [
            {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"],
             "protocol": "TCP"} for p in container_ports(ports)]},
    }
    metric: dict[str, Any]
    if k.hpa_metric == "cpu":
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": k.cpu_target}}}
    else:  # Triton's cumulative queue time, averaged per pod by a Prometheus adapter
        metric = {"type": "Pods", "pods": {"metric": {"name": "nv_inference_queue_duration_us"},
                                           "target": {"type": "AverageValue",
                                                      "averageValue": str(k.queue_target_us)}}}
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
                 "minReplicas": k.replicas, "maxReplicas": k.max_replicas, "metrics": [metric]},
    }
    return {"kserve-inferenceservice": isvc, "deployment": deployment, "service": service,
            "hpa": hpa}


def _plain_dumper() -> type:
    import yaml

    class PlainDumper(yaml.SafeDumper):
        """Plain YAML: a dict used twice is written twice, never as an &id001 anchor."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    return PlainDumper


def write_manifests(out: Path, sc: ServeConfig, k: K8sConfig,
                    ports: Ports | None = None) -> list[Path]:
    import yaml

    from common.manifest import write_text_atomic
    from common.variants import servable

    if sc.backend + "/" + sc.variant not in {v.key for v in servable("k8s")}:
        raise ConfigError(f"{sc.backend}/{sc.variant} is not served by these manifests (they serve "
                          "the NGC repository); servable: "
                          + ", ".join(v.key for v in servable("k8s")))
    if sc.backend == "trt" and not k.gpus:
        raise ConfigError("TensorRT variants run on GPUs only: drop --cpu / --gpus 0, or serve an "
                          "ort variant on CPU")
    dumper = _plain_dumper()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc_ in manifests(sc, k, ports).items():
        p = out / f"{name}.yaml"
        write_text_atomic(p, yaml.dump(doc_, Dumper=dumper, sort_keys=False))
        paths.append(p)
    return paths
