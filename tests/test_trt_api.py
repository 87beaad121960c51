"""Every TensorRT name our code uses is declared in tensorrt-stubs (TensorRT 10.13).

TensorRT cannot be installed on the CPU machines, and mypy rejects some lines of the stub files,
so this test reads the .pyi files as text (classes, their members and bases) and checks, with the
ast of our modules: every `trt.X`, `trt.X.Y`, every method called on a TensorRT object (by the
variable names mapped below) and every calibrator method we override."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

TRT_MODULES = ["engines/trt_build.py", "common/trt.py", "calibration/trt_calibrator.py",
               "deploy/trt_runner.py", "engines/steps.py"]
# variable (as written in our code) -> TensorRT class it holds
OBJECTS = {"builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition",
           "parser": "OnnxParser", "profile": "IOptimizationProfile",
           "calib_profile": "IOptimizationProfile", "runtime": "Runtime",
           "engine": "ICudaEngine", "self.engine": "ICudaEngine",
           "self.context": "IExecutionContext"}
# TensorRT 11 removed these; each use must sit where 10.x is already established (the functions
# named here check the version first), so an 11.x build never reaches them.
REMOVED_IN_11 = {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "int8_calibrator", "set_calibration_profile",
                 "IInt8EntropyCalibrator2"}
GUARDED_10X = {"engines/trt_build.py": {"configure", "build_engine"},
               "calibration/trt_calibrator.py": {"make_entropy_calibrator", "EntropyCalibrator",
                                                 "__init__"}}


def _stub_files() -> list[Path]:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    site = Path(list(spec.submodule_search_locations)[0]).parent
    return [site / "tensorrt" / "__init__.pyi", site / "tensorrt_bindings" / "tensorrt.pyi",
            site / "tensorrt_bindings" / "__init__.pyi"]


def parse_stubs(files: list[Path]) -> tuple[set[str], dict[str, set[str]], dict[str, list[str]]]:
    top: set[str] = set()
    members: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    current = None
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if m := re.match(r"class (\w+)(?:\((.*)\))?:", line):
                current = m.group(1)
                top.add(current)
                members.setdefault(current, set())
                bases[current] = [b.strip().split(".")[-1] for b in (m.group(2) or "").split(",") if b.strip()]
            elif m := re.match(r"from tensorrt_bindings(?:\.tensorrt)? import (\w+)", line):
                top.add(m.group(1))
            elif m := re.match(r"(?:def |)(\w+)\s*[(:=]", line):
                top.add(m.group(1))
                current = None
            elif current and (m := re.match(r"    (?:def |class |)(\w+)\s*[(:=]", line)):
                members[current].add(m.group(1))
    return top, members, bases


def has_member(cls: str, name: str, members, bases) -> bool:
    seen, todo = set(), [cls]
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        if name in members.get(c, set()):
            return True
        todo.extend(bases.get(c, []))
    return False


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def undeclared(source: str, top, members, bases) -> list[str]:
    bad = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if not dotted:
                continue
            parts = dotted.split(".")
            if parts[0] == "trt":
                if parts[1] not in top:
                    bad.append(dotted)
                elif len(parts) == 3 and not has_member(parts[1], parts[2], members, bases):
                    bad.append(dotted)
            owner = dotted.rsplit(".", 1)[0]
            if owner in OBJECTS and not has_member(OBJECTS[owner], node.attr, members, bases):
                bad.append(f"{dotted} ({OBJECTS[owner]})")
        if isinstance(node, ast.ClassDef) and any(_dotted(b) == "trt.IInt8EntropyCalibrator2" for b in node.bases):
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("__") and \
                        not has_member("IInt8EntropyCalibrator2", fn.name, members, bases):
                    bad.append(f"IInt8EntropyCalibrator2.{fn.name}")
    return sorted(set(bad))


@pytest.fixture(scope="module")
def stubs():
    return parse_stubs(_stub_files())


def test_stub_parser_knows_the_api(stubs):
    top, members, bases = stubs
    assert {"Builder", "OnnxParser", "IInt8EntropyCalibrator2", "nptype"} <= top
    assert has_member("IInt8EntropyCalibrator2", "get_batch_size", members, bases)  # via base
    assert has_member("Logger", "WARNING", members, bases)


def test_checker_catches_wrong_names(stubs):
    src = ("def f(trt, builder, config):\n"
           "    config.set_flag(trt.BuilderFlag.FP17)\n"
           "    builder.build_engine_v9()\n"
           "    trt.NoSuchThing()\n")
    assert undeclared(src, *stubs) == ["builder.build_engine_v9 (Builder)", "trt.BuilderFlag.FP17",
                                       "trt.NoSuchThing"]


@pytest.mark.parametrize("module", TRT_MODULES)
def test_every_tensorrt_name_is_declared(stubs, module):
    src = (REPO / module).read_text()
    assert "trt." in src
    assert undeclared(src, *stubs) == []


def test_names_removed_in_tensorrt_11_stay_on_the_10x_paths():
    for module in TRT_MODULES:
        tree = ast.parse((REPO / module).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.ClassDef)):
                continue
            inner = {id(n) for f in ast.walk(fn) if f is not fn and
                     isinstance(f, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(f)}
            used = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)
                    and id(n) not in inner and n.attr in REMOVED_IN_11}
            if used:
                assert fn.name in GUARDED_10X.get(module, set()), (module, fn.name, used)
