"""`make gpu-bundle`, checked on the CPU: one archive under its size limit holding the source, the
build's task, the base model as FP16 + xz, the wheels a torch-only CUDA host lacks (the real
ones; bitsandbytes cut to its CPU and one CUDA library, still installable and importable) and
the run script, every member hashed in MANIFEST.json; the host side turns the model back into
FP32; the run script's parts fail one at a time, each logged, the rest still run."""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from common.errors import ConfigError
from deploy.gpu_bundle import GpuBundleConfig, build_bundle


@pytest.fixture(scope="module")
def bundle(tiny_artifacts, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    # the wheel cache is shared by the module (a download, then reused)
    cache = Path(os.environ.get("GPU_BUNDLE_CACHE", out / "cache"))
    cfg = GpuBundleConfig(out=str(out / "bundle.tar"), artifacts=str(tiny_artifacts),
                          model=str(tiny_model_dir), cache=str(cache))
    manifest = build_bundle(cfg, say=lambda s: None)
    with tarfile.open(cfg.out) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    return cfg, manifest, members


def _untar_xz(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}


def test_contents_hashes_and_size(bundle):
    import hashlib

    cfg, manifest, members = bundle
    assert Path(cfg.out).stat().st_size <= cfg.limit_mib * 2**20
    m = json.loads(members.pop("MANIFEST.json"))
    assert set(m["members"]) == set(members)
    for name, data in members.items():
        assert m["members"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert members["BUNDLE_ID"].decode().strip() == m["bundle"] == manifest["bundle"]
    wheels = sorted(n.split("/")[1].split("-")[0] for n in members if n.startswith("wheels/"))
    assert wheels == ["bitsandbytes", "huggingface_hub", "peft", "tokenizers", "transformers"]
    from importlib.metadata import version

    assert f"wheels/transformers-{version('transformers')}-py3-none-any.whl" in members
    src = _untar_xz(members["src.tar.xz"])
    assert {"engines/__main__.py", "deploy/gpu_run.sh", "deploy/gpu_host.py", "pyproject.toml",
            "tests/conftest.py"} <= set(src)
    assert not any(n.startswith("docs/results/") for n in src)
    task = _untar_xz(members["data.tar.xz"])
    assert "task/task.json" in task and any(n.endswith(".jsonl") for n in task)
    names = json.loads(task["task/task.json"])["labels"]
    assert json.loads(task["task/labels.json"]) == names and len(names) == 6
    assert members["gpu_run.sh"] == (Path(__file__).parents[1] / "deploy" / "gpu_run.sh").read_bytes()
    subprocess.run(["bash", "-n", "-c", members["gpu_run.sh"].decode()], check=True)
    from safetensors.numpy import load

    weights = load(lzma.decompress(members["model/model.fp16.safetensors.xz"]))
    assert {str(v.dtype) for v in weights.values() if v.dtype.kind == "f"} == {"float16"}
    assert "model/config.json" in members and "model/vocab.txt" in members


def test_bitsandbytes_cut_installs_and_imports(bundle, tmp_path):
    cfg, _, members = bundle
    name = next(n for n in members if n.startswith("wheels/bitsandbytes-"))
    z = zipfile.ZipFile(io.BytesIO(members[name]))
    libs = sorted(Path(n).name for n in z.namelist() if "libbitsandbytes_" in n)
    assert libs == ["libbitsandbytes_cpu.so", f"libbitsandbytes_cuda{cfg.cuda}.so"]
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    listed = {line.split(",")[0] for line in z.read(record).decode().splitlines() if line}
    assert listed <= set(z.namelist())
    wheel = tmp_path / Path(name).name
    wheel.write_bytes(members[name])
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(target), str(wheel)], check=True)
    r = subprocess.run([sys.executable, "-c", "import bitsandbytes as b, torch; "
                        "print(b.__file__); print(b.__version__)"],
                       env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True,
                       text=True, check=True)
    assert r.stdout.splitlines()[0].startswith(str(target))


def test_over_the_limit_is_refused_with_the_largest_members(tiny_artifacts, tiny_model_dir,
                                                            bundle, tmp_path):
    cfg, _, _ = bundle
    small = GpuBundleConfig(out=str(tmp_path / "b.tar"), artifacts=str(tiny_artifacts),
                            model=str(tiny_model_dir), cache=cfg.cache, limit_mib=0.5)
    with pytest.raises(ConfigError, match=r"over --limit-mib 0.5; its largest members: wheels/"):
        build_bundle(small, say=lambda s: None)
    assert not (tmp_path / "b.tar").exists()
    with pytest.raises(ConfigError, match="holds no task: run `make engines`"):
        build_bundle(GpuBundleConfig(out=str(tmp_path / "c.tar"), artifacts=str(tmp_path),
                                     model=str(tiny_model_dir), cache=cfg.cache), say=lambda s: None)


def test_the_host_turns_the_model_back_into_fp32(bundle, tiny_model_dir, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import load_file

    from deploy.gpu_host import main

    _, _, members = bundle
    model = tmp_path / "model"
    model.mkdir()
    for name, data in members.items():
        if name.startswith("model/") and not name.endswith(".xz"):
            (model / Path(name).name).write_bytes(data)
    (model / "model.fp16.safetensors").write_bytes(
        lzma.decompress(members["model/model.fp16.safetensors.xz"]))
    rc = main(["--out", str(tmp_path / "results"), "--model", str(model)])
    host = json.loads((tmp_path / "results" / "host.json").read_text())
    assert host["gpus"] == [] and rc == 1  # no GPU here: the run must not pass for one
    assert host["packages"]["transformers"] and host["missing"] == []
    assert not (model / "model.fp16.safetensors").exists()
    got, want = load_file(model / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v.astype(np.float16).astype(v.dtype)
                                      if v.dtype.kind == "f" else v)
    from common.modelsource import load_classifier
    from tests.conftest import EMOTION_LABELS

    load_classifier(str(model), EMOTION_LABELS.split(","))  # loads as a model folder


def test_the_run_script_runs_every_part_and_logs_each(bundle, tmp_path):
    """On this CPU host with no torch in the system Python: the install part works, the parts
    that need torch or a GPU fail one by one, each logged with its exit code, and the script
    still reaches its end."""
    cfg, _, _ = bundle
    b = tmp_path / "b"
    b.mkdir()
    with tarfile.open(cfg.out) as t:
        t.extractall(b, filter="data")
    out = tmp_path / "gpu-out"
    env = {**os.environ, "OUT": str(out), "PART_TIMEOUT": "300"}
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run(["bash", str(b / "gpu_run.sh"), "task"], env=env, capture_output=True,
                       text=True, timeout=900)
    log = (out / "logs" / "run.log").read_text()
    assert "install: exit 0" in log, log
    for part in ("environment", "build", "gpu-check", "pytest-gpu"):
        assert f"{part}: start" in log and (out / "logs" / f"{part}.log").is_file()
    # the task stage needs no torch: it ran, reading the bundled rows under their label names
    assert "build: exit 0" in log and "6 labels (sadness, joy, love, anger, fear, surprise) " \
        "from task/labels.json" in (out / "logs" / "build.log").read_text()
    assert "environment: exit 1" in log  # no torch and no GPU on this host: said, and went on
    assert "gpu-check: exit 0" not in log and "pytest-gpu: exit 0" not in log
    assert log.rstrip().splitlines()[-1].endswith("(gpu-check.md first)"), r.stdout
