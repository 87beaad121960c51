"""Artifact manifest: what each artifact is, what made it, and whether it is still current.

Each entry records the artifact's own hash, the hashes of its inputs, the recipe and the library
versions. A build step is skipped only when its key (recipe + input hashes) is unchanged AND the
file on disk still has the recorded hash; loaders refuse an artifact whose hash no longer matches,
or whose inputs have since been rebuilt, naming the command that rebuilds it.
Files are written to a temporary name and renamed into place, so an interrupted build never
leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import UserError

MANIFEST_NAME = "manifest.json"
REBUILD_HINT = "make engines"


class ArtifactError(UserError, RuntimeError):
    """A missing, corrupt or stale artifact."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names + contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if path.is_dir():
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(member.relative_to(path)).encode())
            h.update(bytes.fromhex(sha256_of(member)))
        return h.hexdigest()
    raise ArtifactError(f"{path} does not exist")


def size_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name in the same folder, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success move it into place, else delete it.

    Works for files and folders (a folder is swapped in with two renames; the old one is removed
    only after the new one is in place).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        yield tmp
        if not tmp.exists():
            raise ArtifactError(f"build step wrote nothing to {tmp} for {final}")
        if final.is_dir() and not final.is_symlink():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


class Manifest:
    """artifacts/manifest.json: {name: entry}. Paths inside are relative to the artifacts root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{self.path} is corrupt ({exc}); delete it and run "
                                    f"`{REBUILD_HINT}` to rebuild every artifact") from exc

    @staticmethod
    def key(recipe: dict[str, Any], inputs: dict[str, str]) -> str:
        return hashlib.sha256(canonical_json({"recipe": recipe, "inputs": inputs}).encode()).hexdigest()

    def is_current(self, name: str, recipe: dict[str, Any], inputs: dict[str, str]) -> bool:
        e = self.entries.get(name)
        if not e or "skipped" in e or e.get("key") != self.key(recipe, inputs):
            return False
        path = self.root / e["path"]
        return path.exists() and sha256_of(path) == e["sha256"]

    def record(self, name: str, rel_path: str, recipe: dict[str, Any], inputs: dict[str, str],
               versions: dict[str, str], device: dict[str, Any], extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        path = self.root / rel_path
        entry = {
            "path": rel_path, "sha256": sha256_of(path), "size_bytes": size_bytes(path),
            "key": self.key(recipe, inputs), "inputs": inputs, "recipe": recipe,
            "versions": versions, "device": device,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}),
        }
        self.entries[name] = entry
        write_json_atomic(self.path, self.entries)
        return entry

    def record_skip(self, name: str, recipe: dict[str, Any], reason: str) -> None:
        """A step the model family or this machine cannot build: the reason, instead of a file."""
        old = self.entries.get(name, {})
        if old.get("skipped") == reason and old.get("recipe") == recipe:
            return  # unchanged: a second run leaves the manifest as it was
        self.entries[name] = {"skipped": reason, "recipe": recipe,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self.path, self.entries)

    def skipped(self, name: str) -> str | None:
        return self.entries.get(name, {}).get("skipped")

    def built(self, name: str) -> bool:
        return name in self.entries and "skipped" not in self.entries[name]

    def get(self, name: str) -> dict[str, Any]:
        e = self.entries.get(name)
        if e is None:
            raise ArtifactError(f"artifact {name!r} is not built in {self.root} "
                                f"(build it with `{REBUILD_HINT}`)")
        if "skipped" in e:
            raise ArtifactError(f"artifact {name!r} was not built: {e['skipped']}")
        return e

    def verify(self, name: str, check_hash: bool = True) -> Path:
        """Path of a built artifact, after checking it is intact and its inputs are current."""
        e = self.get(name)
        path = self.root / e["path"]
        if not path.exists():
            raise ArtifactError(f"{path} ({name}) is missing; rebuild it with `{REBUILD_HINT}`")
        if check_hash and sha256_of(path) != e["sha256"]:
            raise ArtifactError(f"{path} ({name}) does not match its manifest hash (corrupt or "
                                f"modified); rebuild it with `{REBUILD_HINT}`")
        for dep, dep_hash in e.get("inputs", {}).items():
            if dep.startswith("artifact:"):
                cur = self.entries.get(dep.removeprefix("artifact:"))
                if cur is None or cur["sha256"] != dep_hash:
                    raise ArtifactError(
                        f"{name} is stale: it was built from a different {dep.removeprefix('artifact:')}"
                        f"; rebuild it with `{REBUILD_HINT}`")
        return path
