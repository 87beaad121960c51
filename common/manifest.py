"""Artifact manifest: what each artifact is, what made it, and whether it is still current.

Each entry records the artifact's own hash, the hashes of its inputs, the recipe and the library
versions. A build step is skipped only when its key (recipe + input hashes) is unchanged AND the
file on disk still has the recorded hash; loaders refuse an artifact whose hash no longer matches,
or whose inputs have since been rebuilt, naming the command that rebuilds it.
Files are written to a temporary name and renamed into place, so an interrupted build never
leaves a half-written file that a later run would trust. A writer re-reads the file under a
lock and merges (two writers never lose each other's entries), and keeps a copy of each entry in
.entries/, from which a corrupt manifest is rebuilt without throwing intact artifacts away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.errors import UserError

MANIFEST_NAME = "manifest.json"
REBUILD_HINT = "make engines"


class ArtifactError(UserError, RuntimeError):
    """A missing, corrupt or stale artifact."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def seal_of(entry: dict[str, Any]) -> str:
    """sha256 over every field of a built entry but the seal itself: what a build recorded beside
    the key (ort/ptq's chosen recipe, the student's kept layers, the task) is read by later steps
    and the cards, so an edit of any of it is caught like an edit of the recipe."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "sealed"})
                          .encode()).hexdigest()


def edited(entry: dict[str, Any]) -> bool:
    """Whether a built entry no longer matches its key or its seal (entries recorded before
    seals existed carry none: their key alone is checked)."""
    if Manifest.key(entry.get("recipe", {}), entry.get("inputs", {})) != entry.get("key"):
        return True
    return "sealed" in entry and seal_of(entry) != entry["sealed"]


# file sha256 by (path, size, mtime_ns, inode): a file rewritten since is hashed again, one read
# twice in a process is not (every read of an artifact verifies it, some several times a run)
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names + contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _FILE_HASHES:
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _FILE_HASHES[key] = h.hexdigest()
        return _FILE_HASHES[key]
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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name: a later build removes it only once this process is gone
    # (common.workdir.clean_leftovers)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


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


def describe_change(entry: dict[str, Any], recipe: dict[str, Any], inputs: dict[str, str]) -> str:
    """What differs between a manifest entry and the recipe / inputs asked for now."""
    old_r, old_i = entry.get("recipe", {}), entry.get("inputs", {})
    if old_r.get("type") != recipe.get("type"):
        return f"its config changed from {old_r.get('type')} to {recipe.get('type')}"
    fields = sorted(k for k in set(old_r.get("fields", {})) | set(recipe.get("fields", {}))
                    if old_r.get("fields", {}).get(k) != recipe.get("fields", {}).get(k))
    if fields:
        return f"recipe field(s) changed: {', '.join(fields)}"
    changed = sorted(k for k in set(old_i) | set(inputs) if old_i.get(k) != inputs.get(k))
    if changed == ["code"]:
        return "the code that builds it changed"
    if changed:
        names = [k.removeprefix("artifact:") for k in changed]
        return f"input(s) changed: {', '.join(names)}"
    return "its key changed"


ENTRIES_DIR = ".entries"  # a copy of each built entry: what a corrupt manifest is rebuilt from


class ManifestCorrupt(ArtifactError):
    """manifest.json cannot be read as {name: entry}. `make engines` rebuilds it from the entry
    copies of the artifacts still intact (never by throwing the artifacts away)."""

    def __init__(self, path: Path, why: str):
        self.why = why
        super().__init__(
            f"{path} is corrupt ({why}); run `{REBUILD_HINT}`: it rebuilds the manifest from the "
            f"entry copies in {path.parent / ENTRIES_DIR}, keeping every intact artifact")


def _json_type(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(obj), type(obj).__name__)


def entry_problem(name: str, e: Any) -> str | None:
    """Why `e` is not a usable manifest entry (one phrase), or None."""
    if not isinstance(e, dict):
        return f"entry {name!r} is {_json_type(e)}, not an object"
    if "skipped" in e:
        return None if isinstance(e["skipped"], str) else f"entry {name!r}: skipped is not text"
    missing = [k for k in ("path", "sha256", "key") if not isinstance(e.get(k), str)]
    if missing:
        return f"entry {name!r} lacks {', '.join(missing)}"
    bad = [k for k in ("recipe", "inputs") if not isinstance(e.get(k, {}), dict)]
    return f"entry {name!r}: {', '.join(bad)} not an object" if bad else None


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest file's entries, each checked for what readers use (path, sha256, key)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} ({exc.strerror or exc})") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestCorrupt(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ManifestCorrupt(path, f"invalid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(obj, dict):
        raise ManifestCorrupt(path, f"a JSON {_json_type(obj)}, not an object")
    for name, e in obj.items():
        why = entry_problem(name, e)
        if why:
            raise ManifestCorrupt(path, why)
    return obj


def entry_copy_path(root: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(root) / ENTRIES_DIR / f"{safe}.json"


def recovered_entries(root: Path) -> dict[str, dict[str, Any]]:
    """The entry copies under root/.entries whose artifact is intact: its file still has the
    recorded sha256 and its stored recipe and inputs still match its key."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((Path(root) / ENTRIES_DIR).glob("*.json")):
        try:
            saved = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = saved.get("name") if isinstance(saved, dict) else None
        e = saved.get("entry") if isinstance(saved, dict) else None
        if not isinstance(name, str) or not isinstance(e, dict) or entry_problem(name, e) \
                or "skipped" in e:
            continue
        if Manifest.key(e.get("recipe", {}), e.get("inputs", {})) != e["key"]:
            continue
        path = Path(root) / e["path"]
        if path.exists() and sha256_of(path) == e["sha256"]:
            out[name] = e
    return out


class Manifest:
    """artifacts/manifest.json: {name: entry}. Paths inside are relative to the artifacts root.

    recover=True (a build, a dry run): a corrupt file is replaced, in memory, by the entries
    recovered from root/.entries (`corrupt` says why); `repair()` writes them. Otherwise a corrupt
    file is refused in one line."""

    def __init__(self, root: Path, recover: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():  # every command reads artifacts here
            raise ArtifactError(f"--artifacts {self.root} is a file, not a folder: pass the folder "
                                "`make engines` built (artifacts/ by default)")
        self.path = self.root / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.corrupt: str | None = None
        if self.path.exists():
            try:
                self.entries = read_entries(self.path)
            except ManifestCorrupt as exc:
                if not recover:
                    raise
                self.corrupt = exc.why
                self.entries = recovered_entries(self.root)
        elif recover and (self.root / ENTRIES_DIR).is_dir():  # deleted: the copies still say
            self.entries = recovered_entries(self.root)
            self.corrupt = "it was missing" if self.entries else None

    def repair(self) -> str | None:
        """Write the recovered entries as the manifest, the corrupt file kept beside it as
        manifest.json.corrupt-<time>; returns the line saying so (None: nothing to repair)."""
        if self.corrupt is None:
            return None
        kept = self.path.with_name(f"{MANIFEST_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        if self.path.exists():
            os.replace(self.path, kept)
        write_json_atomic(self.path, self.entries)
        line = (f"{self.path} was corrupt ({self.corrupt}"
                f"{f'; kept as {kept.name}' if kept.exists() else ''}): rebuilt from the entry "
                f"copies of {len(self.entries)} intact artifact(s); the others are rebuilt")
        self.corrupt = None
        return line

    def save_copies(self) -> None:
        """Write the entry copy of every built entry that lacks one (artifacts built before the
        copies existed), so a later corrupt manifest loses none of them."""
        for name, e in self.entries.items():
            copy = entry_copy_path(self.root, name)
            if "skipped" not in e and not copy.is_file():
                write_json_atomic(copy, {"name": name, "entry": e})

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
        """Apply `change`, write the manifest (atomically) when `change` says it changed it. One
        writer: only a build writes the manifest, and a build holds the folder's build lock
        (common.workdir.build_lock), so no lock of its own is needed here."""
        if change(self.entries):
            write_json_atomic(self.path, self.entries)

    @staticmethod
    def key(recipe: dict[str, Any], inputs: dict[str, str]) -> str:
        return hashlib.sha256(canonical_json({"recipe": recipe, "inputs": inputs}).encode()).hexdigest()

    def is_current(self, name: str, recipe: dict[str, Any], inputs: dict[str, str]) -> bool:
        return self.why_stale(name, recipe, inputs) is None

    def why_stale(self, name: str, recipe: dict[str, Any], inputs: dict[str, str]) -> str | None:
        """None when the artifact is current for this recipe and these inputs; else why not (one
        line: what changed, for `--dry-run` and the build log)."""
        e = self.entries.get(name)
        if not e:
            return "not built yet"
        if "skipped" in e:
            return "skipped by an earlier run"
        if edited(e):
            return "its manifest entry was edited (what it records does not match its key)"
        if e.get("key") != self.key(recipe, inputs):
            return describe_change(e, recipe, inputs)
        path = self.root / e["path"]
        if not path.exists():
            return f"{e['path']} is missing"
        if sha256_of(path) != e["sha256"]:
            return f"{e['path']} was modified since it was built"
        return None

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
        entry = json.loads(canonical_json(entry))  # as it will read back, then sealed
        entry["sealed"] = seal_of(entry)

        def change(entries: dict[str, dict[str, Any]]) -> bool:
            write_json_atomic(entry_copy_path(self.root, name), {"name": name, "entry": entry})
            entries[name] = entry
            return True

        self._update(change)
        return entry

    def record_skip(self, name: str, recipe: dict[str, Any], reason: str) -> None:
        """A step the model family or this machine cannot build: the reason, instead of a file."""

        def change(entries: dict[str, dict[str, Any]]) -> bool:
            old = entries.get(name, {})
            if old.get("skipped") == reason and old.get("recipe") == recipe:
                return False  # unchanged: a second run leaves the manifest as it was
            entries[name] = {"skipped": reason, "recipe": recipe,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            entry_copy_path(self.root, name).unlink(missing_ok=True)
            return True

        self._update(change)

    def stamp(self, name: str) -> dict[str, Any]:
        """The stamp a report carries of the artifact it measured (the report's `made_by` field),
        so whoever publishes the report can check it is still the current one (freshness)."""
        e = self.get(name)
        return {"artifact": name, "sha256": e["sha256"], "key": e["key"], "recipe": e["recipe"],
                "code": e.get("inputs", {}).get("code")}

    def freshness(self, stamp: Any) -> str | None:
        """None when `stamp` (a report's `made_by`: what it measured) is the current artifact;
        else why not."""
        if not isinstance(stamp, dict) or not {"artifact", "sha256", "key"} <= stamp.keys():
            return "it records no artifact hash and key (written by older code)"
        name = stamp["artifact"]
        e = self.entries.get(name)
        if e is None or "skipped" in e:
            return f"{name} is not built in {self.root}"
        if e["sha256"] != stamp["sha256"]:
            return (f"it measured another build of {name} (sha256 {str(stamp['sha256'])[:12]}, "
                    f"current {e['sha256'][:12]})")
        if e.get("key") != stamp["key"]:
            return f"{name} has been rebuilt from another recipe or inputs since"
        try:
            self.verify(name)
        except ArtifactError as exc:
            return str(exc)
        return None

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
        if edited(e):  # every read of what a build recorded: the recipe, the chosen recipe...
            raise ArtifactError(f"{name}'s manifest entry was edited: what it records no longer "
                                f"matches its key; rebuild it with `{REBUILD_HINT}`")
        return e

    def verify(self, name: str, check_hash: bool = True) -> Path:
        """Path of a built artifact, after checking it is intact and its inputs are current."""
        e = self.get(name)  # the entry's key and seal checked there
        path = self.root / e["path"]
        if not path.exists():
            raise ArtifactError(f"{path} ({name}) is missing; rebuild it with `{REBUILD_HINT}`")
        if check_hash and sha256_of(path) != e["sha256"]:
            raise ArtifactError(f"{path} ({name}) does not match its manifest hash (corrupt or "
                                f"modified); rebuild it with `{REBUILD_HINT}`")
        for dep, dep_hash in e.get("inputs", {}).items():
            if dep.startswith("artifact:"):
                cur = self.entries.get(dep.removeprefix("artifact:"))
                if cur is None or "skipped" in cur or cur.get("sha256") != dep_hash:
                    raise ArtifactError(
                        f"{name} is stale: it was built from a different {dep.removeprefix('artifact:')}"
                        f"; rebuild it with `{REBUILD_HINT}`")
        return path
