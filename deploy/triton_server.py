"""Start and stop a real Triton Inference Server on this machine: the `tritonserver` binary that
the PyPI package nvidia-pytriton bundles (2.51, Python backend only), run directly on a model
repository we generate. PyTriton's Python API is not used (see deploy/triton_model.py for why).

Two quirks of running that binary outside NVIDIA's container, handled here:
- the Python-backend stub must sit in backends/python/ beside libtriton_python.so; the wheel ships
  one stub per Python version under python_backend_stubs/, so a backend folder is assembled with
  the stub of the running interpreter;
- the stub links libpython3.x and may load the system's older copy instead of the running
  interpreter's; models then fail with "'_thread.RLock' object has no attribute
  '_recursion_count'" (upstream pytriton issue #51). LD_LIBRARY_PATH = this interpreter's
  LIBDIR fixes it, and the interpreter's bin/ first on PATH makes the stub import this
  environment's packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError


class ServerError(UserError, RuntimeError):
    """The server could not be started (port in use, missing library, model failed to load)."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


# Triton's KServe v2 health endpoints (readiness turns true once every model has loaded)
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"


def triton_home() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the tritonserver binary comes with nvidia-pytriton: "
                          "pip install nvidia-pytriton==0.7.0 (the `serve` dependency group; "
                          "`make setup` installs it)")
    home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise ServerError(f"{home}/bin/tritonserver is missing: reinstall nvidia-pytriton")
    return home


def backend_dir(cache: Path) -> Path:
    """backends/ with the Python-backend stub of this interpreter in backends/python/."""
    home = triton_home()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (home / "python_backend_stubs").iterdir())
        raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {ver} "
                          f"(it has {', '.join(have)}); use one of those Pythons")
    out = cache / f"backends-py{ver}"
    if not (out / "python" / "triton_python_backend_stub").is_file():
        tmp = Path(tempfile.mkdtemp(dir=cache))
        shutil.copytree(home / "backends", tmp / "backends")
        shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
        if not out.exists():  # another process may have assembled it meanwhile
            os.replace(tmp / "backends", out)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # the stub's RPATH finds the wheel's bundled libraries (libcudart...) relative to where the
    # wheel put it; our copy lives elsewhere, so name that folder explicitly
    wheel_libs = str(triton_home().parents[1] / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        x for x in (libdir, wheel_libs, env.get("LD_LIBRARY_PATH")) if x)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    # the stub runs with this environment: same thread count rules, no tokenizers fork warning
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports() -> Ports:
    """Three free loopback ports (for tests and the benchmark's own servers)."""
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = Ports(*(s.getsockname()[1] for s in socks))
    for s in socks:
        s.close()
    return ports


def ready(http_port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{READY_PATH}",
                                    timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_flags(exit_timeout_s: int = 30) -> list[str]:
    """The tritonserver flags every launch of ours uses: here, in the Kubernetes manifests and in
    docker/Dockerfile.triton's CMD (a test checks the Dockerfile against this)."""
    return ["--strict-readiness=true",
            # our configs are complete; auto-complete would add dynamic_batching {} to a model
            # written without it (the onnxruntime/tensorrt backends do, when max_batch > 1)
            "--disable-auto-complete-config", f"--exit-timeout-secs={exit_timeout_s}"]


class TritonServer:
    """`with TritonServer(repo, ports) as s:` starts tritonserver, waits until /v2/health/ready,
    and stops it with SIGTERM (in-flight requests finish; Triton waits up to exit_timeout_s)."""

    def __init__(self, repo: Path, ports: Ports = Ports(), log: Path | None = None,
                 start_timeout_s: float = 180, exit_timeout_s: int = 30, host: str = "127.0.0.1"):
        self.repo, self.ports, self.host = Path(repo), ports, host
        self.log = Path(log) if log else self.repo.parent / "tritonserver.log"
        self.start_timeout_s, self.exit_timeout_s = start_timeout_s, exit_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def command(self, backends: Path) -> list[str]:
        return [str(triton_home() / "bin" / "tritonserver"), f"--model-repository={self.repo}",
                f"--backend-directory={backends}", f"--http-port={self.ports.http}",
                f"--grpc-port={self.ports.grpc}", f"--metrics-port={self.ports.metrics}",
                f"--http-address={self.host}", f"--grpc-address={self.host}",
                *server_flags(self.exit_timeout_s), "--exit-on-error=true", "--log-verbose=0"]

    def start(self) -> TritonServer:
        for what, port in (("--http-port", self.ports.http), ("--grpc-port", self.ports.grpc),
                           ("--metrics-port", self.ports.metrics)):
            if not port_free(port):
                raise ServerError(f"port {port} is already in use: stop what holds it or pass "
                                  f"another {what}")
        cache = Path(tempfile.gettempdir()) / "bert-emotion-triton"
        cache.mkdir(exist_ok=True)
        backends = backend_dir(cache)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log.open("wb")
        self.proc = subprocess.Popen(self.command(backends), stdout=logf, stderr=subprocess.STDOUT,
                                     env=server_env(), start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.proc.returncode} before it "
                                  f"was ready: {self.failure_reason()} (full log: {self.log})")
            if ready(self.ports.http):
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.start_timeout_s:.0f} s "
                          f"(log: {self.log})")

    def failure_reason(self) -> str:
        """The most telling line of the server log (a model's load error, first)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        for key in ("failed to load", "UNAVAILABLE", "Error", "error"):
            hits = [x for x in lines if key in x]
            if hits:
                return hits[-1][-600:]
        return lines[-1][-600:] if lines else "no output"

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(repo: Path, ports: Ports | None = None, log: Path | None = None) -> Iterator[TritonServer]:
    with TritonServer(repo, ports or free_ports(), log) as s:
        yield s
