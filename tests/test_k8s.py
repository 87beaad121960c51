"""Scale-out manifests: validated offline against the real Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelled field fails) and the InferenceService against KServe's own
Python models; names, ports, probe paths and max batch agree with the generated Triton configs."""

import dataclasses

import pytest
import yaml

from deploy.k8s import K8sConfig, manifests, write_manifests
from deploy.triton_repo import ServeConfig
from deploy.triton_server import LIVE_PATH, READY_PATH, Ports

K8S_VERSION = "1.30.0"


@pytest.mark.parametrize("metric", ["cpu", "queue"])
def test_manifests_validate_against_kubernetes_schemas(tmp_path, metric):
    import kubernetes_validate

    paths = write_manifests(tmp_path, ServeConfig(), K8sConfig(hpa_metric=metric))
    assert {p.stem for p in paths} == {"kserve-inferenceservice", "deployment", "service", "hpa"}
    for p in paths:
        doc = yaml.safe_load(p.read_text())
        if doc["kind"] == "InferenceService":
            continue  # a CRD: checked against KServe's models below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    bad = manifests(ServeConfig(), K8sConfig())["deployment"]
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def unknown_fields(doc: dict) -> list[str]:
    """In a subprocess: kserve's generated protos clash with tritonclient's in one process
    (both define inference.ServerLiveRequest), and the serving tests import tritonclient."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    r = subprocess.run([sys.executable, "-m", "tests.kserve_fields"], input=json.dumps(doc),
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_inference_service_matches_kserve_models():
    doc = manifests(ServeConfig(), K8sConfig())["kserve-inferenceservice"]
    assert unknown_fields(doc) == []
    assert doc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["predictor"]["model"]["storageUrl"] = broken["spec"]["predictor"]["model"].pop(
        "storageUri")
    assert unknown_fields(broken) == [".spec.predictor.model.storageUrl"]


def test_names_ports_and_batch_agree_with_the_triton_configs(tiny_artifacts, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from deploy.ngc_repo import write_ngc_repo

    sc = ServeConfig(model_name="feelings", max_batch=16)
    ports = Ports(9000, 9001, 9002)
    write_ngc_repo(tmp_path / "repo", tiny_artifacts, sc, gpu=True)
    ens = text_format.Parse((tmp_path / "repo" / "feelings" / "config.pbtxt").read_text(),
                            model_config_pb2.ModelConfig())
    m = manifests(sc, K8sConfig(), ports)
    c = m["deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert ens.name == m["kserve-inferenceservice"]["metadata"]["name"] == "feelings"
    assert m["deployment"]["metadata"]["annotations"]["emotion/max-batch"] == str(ens.max_batch_size)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == dataclasses.asdict(ports)
    assert f"--http-port={ports.http}" in c["args"] and f"--grpc-port={ports.grpc}" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert c["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert {p["port"] for p in m["service"]["spec"]["ports"]} == set(dataclasses.astuple(ports))
    assert m["service"]["spec"]["selector"] == m["deployment"]["spec"]["selector"]["matchLabels"]
    assert m["hpa"]["spec"]["scaleTargetRef"]["name"] == m["deployment"]["metadata"]["name"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cpu_manifests_plain_yaml_and_refusals(tmp_path):
    """--cpu (gpus 0) asks for no GPU anywhere; the YAML has no anchors; an unknown or unservable
    variant is refused in one line before anything is written."""
    from common.errors import UserError

    paths = write_manifests(tmp_path, ServeConfig(backend="ort", variant="ptq-fused"),
                            K8sConfig(gpus=0))
    for p in paths:
        text = p.read_text()
        assert "nvidia.com/gpu" not in text and "&id" not in text and "*id" not in text
    gpu = write_manifests(tmp_path / "gpu", ServeConfig(), K8sConfig())
    text = next(p for p in gpu if p.stem == "deployment").read_text()
    assert "&id" not in text and text.count("nvidia.com/gpu") == 2
    with pytest.raises(UserError, match="unknown variant ort/nope"):
        ServeConfig(backend="ort", variant="nope")
    with pytest.raises(UserError, match="not served by these manifests"):
        write_manifests(tmp_path / "q", ServeConfig(backend="qlora", variant="nf4"), K8sConfig())
    with pytest.raises(UserError, match="GPUs only"):
        write_manifests(tmp_path / "t", ServeConfig(backend="trt", variant="fp16"), K8sConfig(gpus=0))
    assert not (tmp_path / "q").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("cmd", ["serve", "triton-repo", "k8s", "bench"])
def test_every_deploy_subcommand_help_works(cmd, capsys):
    from deploy.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--variant" in out and "usage:" in out and "ort/ptq-fused" in out


def test_deploy_refuses_an_unknown_variant_in_one_line(tmp_path, capsys):
    from deploy.__main__ import main

    for cmd in (["k8s", "--out", str(tmp_path / "k")], ["triton-repo", "--out", str(tmp_path / "r")]):
        assert main([*cmd, "--variant", "nope"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "unknown variant ort/nope" in err[0]
    assert not (tmp_path / "k").exists() and not (tmp_path / "r").exists()
    assert main(["k8s", "--out", str(tmp_path / "c"), "--variant", "ort/ptq-fused", "--cpu"]) == 0
    assert "nvidia.com/gpu" not in (tmp_path / "c" / "deployment.yaml").read_text()


def test_tritonserver_flags_have_one_home():
    """The local server, the manifests and the NGC image's CMD start tritonserver with the same
    flags (deploy.triton_server.server_flags)."""
    import json
    import re

    from deploy.triton_server import server_flags
    from tests.conftest import REPO

    m = manifests(ServeConfig(), K8sConfig())
    assert m["kserve-inferenceservice"]["spec"]["predictor"]["model"]["args"] == server_flags()
    c = m["deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][-len(server_flags()):] == server_flags()
    text = re.sub(r"\\\n\s*", "", (REPO / "docker" / "Dockerfile.triton").read_text())
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, flags=re.M).group(1))
    assert cmd[0] == "tritonserver" and sorted(cmd[2:]) == sorted(server_flags())
