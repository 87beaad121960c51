"""The README as a front door: it names the model up front, its commands exist, and its
deployment snippet runs as written against built artifacts."""

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_first_lines_name_the_model():
    head = "\n".join(README.splitlines()[:8])
    assert "all-MiniLM-L6-v2" in head and "22.7M parameters" in head


def test_quick_start_commands_are_make_targets():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    used = {t for line in block.splitlines() if line.startswith("make ")
            for t in line.split("#")[0].split()[1:] if "=" not in t}
    assert used == {"engines", "report", "test"} and used <= targets


def test_deployment_snippet_runs_as_written(tiny_artifacts, tmp_path, monkeypatch, capsys):
    code = README.split("## Which variant to deploy", 1)[1].split("```python\n", 1)[1].split("```")[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 6
    (tmp_path / "artifacts").symlink_to(tiny_artifacts)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README snippet", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"'label': '(sadness|joy|love|anger|fear|surprise)'", out), out


def test_no_placeholder_is_left():
    """Every sentence of the README is written or generated; none is a stand-in for one."""
    assert not re.search(r"[A-Z_]{4,}PLACEHOLDER|BUILD_MIN|PEAK_GB|REPORT_MIN", README)
