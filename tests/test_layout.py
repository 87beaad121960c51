"""The import direction, enforced: every import of every module (those inside functions too)
against one table of allowed edges, the same table the README's Layout section draws; and no
module imports another's private (_name) helpers."""

import ast
import re
from pathlib import Path

from tests.conftest import REPO

# folder -> the project folders its modules may import (besides itself). Stages build upward
# (common <- train, export, calibration <- engines); the runtime goes common <- deploy <- evaluate;
# the study reads artifacts through common only. Publishing (evaluate.compare) asks the build
# which artifacts it would remake (engines.freshness), so one rule decides both.
ALLOWED = {
    "common": set(),
    "train": {"common"},
    "export": {"common"},
    "calibration": {"common"},
    "engines": {"common", "train", "export", "calibration"},
    "deploy": {"common"},
    "evaluate": {"common", "deploy", "engines"},
    "study": {"common"},
}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def modules():
    for folder in ALLOWED:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_every_import_follows_the_table():
    bad = []
    for path in modules():
        src = path.relative_to(REPO).parts[0]
        for line, mod, names in imports(path):
            dst = mod.split(".")[0]
            if dst in ALLOWED and dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod} ({src} -> {dst})")
            private = [n for n in names if n.startswith("_")] + \
                [p for p in mod.split(".")[1:] if p.startswith("_") and p != "__main__"]
            if dst in ALLOWED and private and mod != path.relative_to(REPO).with_suffix("") \
                    .as_posix().replace("/", "."):
                bad.append(f"{path.relative_to(REPO)}:{line} imports private {private} from {mod}")
    assert bad == []


def test_the_checker_sees_lazy_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from engines.trt_build import _parse\n    import train.qat\n")
    assert imports(p) == [(2, "engines.trt_build", ["_parse"]), (3, "train.qat", [])]


def test_contributing_guide_draws_the_same_table():
    text = (REPO / "docs" / "contributing.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)/` \| ([^|]*) \|", text, flags=re.M))
    drawn = {k: {x.strip(" `/") for x in v.split(",") if x.strip(" `/-")} for k, v in rows.items()}
    assert drawn == ALLOWED
