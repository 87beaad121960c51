"""Fingerprints of the code that builds an artifact, so changing that code rebuilds exactly what it
affects (engines/pipeline.py puts it into each step's key).

A step's code is its factory function in engines/steps.py plus every project module that function
imports (lazily, inside it) and, transitively, what those modules import. Comments, docstrings and
blank lines are left out, so rewording them rebuilds nothing; the text is normalised the same way
on every Python version (a container's 3.12 and a host's 3.11 agree).

Left out on purpose: modules that only record or report (errors, manifest, environment, report
and plot writers, the config serialiser whose output is already in the key); they never change an
artifact's bytes. The variant registry (common.variants) is data, not code: a step built from a
variant's facts puts those facts in its key itself (a TensorRT engine's precision in its recipe
and its source ONNX as an input; a Hugging Face folder's name and backend as inputs), so
rewording or registering a variant rebuilds nothing that existed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import textwrap
import tokenize
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("common", "train", "export", "calibration", "engines", "deploy", "evaluate", "study")
NOT_CODE = frozenset({"common.errors", "common.manifest", "common.env", "common.reports",
                      "common.plots", "common.config", "common.codehash", "common.variants",
                      "engines.freshness"})


def normalised(source: str) -> str:
    """The source without comments, docstrings, trailing spaces and blank lines."""
    source = textwrap.dedent(source)
    lines = source.splitlines()
    drop: set[int] = set()  # 0-based lines that belong to a docstring
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            drop.update(range(body[0].lineno - 1, (body[0].end_lineno or body[0].lineno)))
    cut: dict[int, int] = {}  # 0-based line -> column where a comment starts
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            cut[tok.start[0] - 1] = tok.start[1]
    out = []
    for i, line in enumerate(lines):
        if i in drop:
            continue
        line = line[: cut[i]] if i in cut else line
        if line.strip():
            out.append(line.rstrip())
    return "\n".join(out)


def _module_file(name: str) -> Path | None:
    if name.split(".")[0] not in PROJECT:
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imported_modules(tree: ast.AST) -> set[str]:
    """Project modules an AST imports (at any depth: lazy imports count)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in out if _module_file(m) is not None and m not in NOT_CODE}


@functools.cache
def _closure(module: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        path = _module_file(m)
        assert path is not None
        todo += imported_modules(ast.parse(path.read_text(encoding="utf-8"))) - seen
    return frozenset(seen)


def _project_function(g: object) -> bool:
    module = getattr(g, "__module__", None) or ""
    return (inspect.isfunction(g) and module.split(".")[0] in PROJECT
            and module not in NOT_CODE)


def _helpers(fn: Callable) -> list[Callable]:
    """`fn` and the project functions it calls by name, transitively, each name looked up in the
    module of the function that uses it (a step factory's helpers, its own module's or ones it
    imported from another project module such as the baseline's step functions a student step
    reuses: their code builds the artifact too)."""
    seen: dict[str, Callable] = {}
    todo = [fn]
    while todo:
        f = todo.pop()
        key = f"{f.__module__}.{f.__qualname__}"
        if key in seen:
            continue
        seen[key] = f
        module = inspect.getmodule(f)
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                g = getattr(module, node.id, None)
                if _project_function(g):
                    todo.append(g)  # type: ignore[arg-type]
    return [seen[k] for k in sorted(seen)]


def code_modules(fn: Callable) -> list[str]:
    """The project modules `fn` (and its helpers) depend on: what they import, transitively."""
    mods: set[str] = set()
    for f in _helpers(fn):
        for m in imported_modules(ast.parse(textwrap.dedent(inspect.getsource(f)))):
            mods |= _closure(m)
    return sorted(mods)


def code_fingerprint(fn: Callable) -> str:
    """sha256 over the normalised source of `fn`, its helpers and every module they depend on."""
    h = hashlib.sha256()
    for f in _helpers(fn):
        h.update(normalised(inspect.getsource(f)).encode())
    for m in code_modules(fn):
        path = _module_file(m)
        assert path is not None
        h.update(f"\0{m}\0".encode())
        h.update(normalised(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()
