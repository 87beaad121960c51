import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("tensorrt", "bitsandbytes", "torch", "onnxruntime", "peft")


def test_importing_packages_loads_no_heavy_library():
    code = ("import sys, evaluate, deploy, engines, export, calibration, common, train\n"
            "import evaluate.run, evaluate.report, deploy.factories, deploy.runner, engines.pipeline\n"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
