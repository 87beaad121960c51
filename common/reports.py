"""The one report writer: `<stem>.json` + `<stem>.md` + the report's PNG figures, each written
to a temporary name and renamed into place (a crash never leaves a half-written report)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.manifest import write_json_atomic, write_text_atomic


def write_report(out: Path, stem: str, data: dict[str, Any], markdown: str,
                 figures: dict[str, Callable[[Path], Any]] | None = None) -> dict[str, Path]:
    """figures: {key: draw(path)}; each PNG is `<stem>-<key>.png` (key "" -> `<stem>.png`).
    Returns the paths: "json", "md" and one per figure key."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown)
    for key, draw in (figures or {}).items():
        paths[key or "png"] = out / (f"{stem}-{key}.png" if key else f"{stem}.png")
        draw(paths[key or "png"])
    return paths


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what sits between `<!-- {name}:start ... -->` and `<!-- {name}:end -->` (the one
    convention of every generated README block)."""
    import re

    from common.errors import ConfigError

    start, end = f"<!-- {name}:start", f"<!-- {name}:end -->"
    m = re.search(re.escape(start) + r"[^\n]*\n", text)
    if not m or end not in text:
        raise ConfigError(f"the README has no {name} markers ({start} ... {end})")
    return text[: m.end()] + body + "\n" + text[text.index(end):]


def figure_name(stem: str, key: str = "") -> str:
    """The file name write_report gives a figure (for the Markdown that links it)."""
    return f"{stem}-{key}.png" if key else f"{stem}.png"


def md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row (cells as given, str()'d:
    the caller formats its numbers)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out
