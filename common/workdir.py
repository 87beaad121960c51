"""The artifacts folder as a place builds write to: one build at a time, the leftovers of a killed
build cleaned (an interrupted folder swap put back, not retrained), and every output folder
checked writable, with room, before long work starts rather than after it.

Temporary names are the ones common.manifest writes: `.X.tmp-<pid>-<ns>` and `.X.old-<pid>`
(atomic_output), `.X.<pid>-<random>.tmp` (write_text_atomic), `.qlora-overlap-<pid>[.log]`
(engines/overlap.py). A leftover is removed only when its process is gone, or by a build that
holds the folder's lock (no other build can be writing then).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError

LOCK_NAME = ".lock"

_TMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-\d+$")  # atomic_output's new output
_OLD = re.compile(r"^\.(?P<final>.+)\.old-(?P<pid>\d+)$")  # atomic_output's swapped-out folder
_TEXT = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?\w+\.tmp$")  # write_text_atomic (older: no pid)
_OVERLAP = re.compile(r"^\.qlora-overlap-(?P<pid>\d+)(?:\.log)?$")


class OutputError(UserError):
    """An output folder that cannot be written: a file, read-only, or full."""


class BuildLocked(UserError):
    """Another build holds the artifacts folder."""


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def check_writable(folder: Path | str, need_bytes: int = 0, flag: str = "") -> Path:
    """Create `folder` if needed and check a file can be written there with `need_bytes` free:
    one line naming the path (and the flag that chose it) otherwise. Returns the folder."""
    folder = Path(folder)
    name = f"{flag} {folder}" if flag else str(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{name} is a file, not a folder: pass a folder (or remove the file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {name} ({exc.strerror or exc}): pass a folder you can "
                          "write to") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".probe.{os.getpid()}-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{name} is not writable ({exc.strerror or exc}): make it writable or "
                          "pass another folder") from None
    if need_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise OutputError(f"{name} has {free / 1e6:.0f} MB free, the build needs about "
                              f"{need_bytes / 1e6:.0f} MB: free some space or pass a folder on "
                              "another disk")
    return folder


def lock_held(root: Path | str) -> bool:
    """Whether a build holds `root/.lock` now (asked read-only: it works on a read-only folder)."""
    import fcntl

    try:
        f = open(Path(root) / LOCK_NAME, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return False  # no lock file: no build ever held it
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        f.close()


@contextlib.contextmanager
def build_lock(root: Path | str) -> Iterator[None]:
    """Hold `root/.lock` (flock, released when the process ends, even when it is killed) for the
    block; a second build into the same folder is refused in one line naming the holder."""
    import fcntl

    root = Path(root)
    path = root / LOCK_NAME
    try:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise OutputError(f"cannot open the build lock {path} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise BuildLocked(f"another build is running in {root} (pid {pid}): wait for it to "
                          "finish, or build into another --artifacts folder") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the lock


def clean_leftovers(root: Path | str, locked: bool = False, dry_run: bool = False) -> list[str]:
    """Remove what killed builds left under `root` (theirs only: a process still alive keeps its
    files, unless `locked`, the caller holding the build lock) and put back a folder whose swap
    was interrupted (the final name missing, the old copy still there), so it is not rebuilt.
    Returns one line per thing done (`dry_run`: per thing it would do, doing nothing)."""
    root = Path(root)
    done: list[str] = []
    if not root.is_dir():
        return done

    def dead(pid: str | None) -> bool:
        return locked or (pid is not None and not pid_alive(int(pid)))

    # outputs sit in the root or one folder down (onnx/, hf/, trt/, .entries/ ...): their
    # temporary names beside them; deeper folders are an artifact's own files
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here != root and here.parent != root:
            dirs[:] = []
            continue
        for name in sorted(dirs + files):
            if not name.startswith("."):
                continue
            p = here / name
            m = _TMP.match(name) or _OVERLAP.match(name) or _TEXT.match(name)
            if m and dead(m.group("pid")):
                if not dry_run:
                    _remove(p)
                done.append(f"removed {p} (left by a killed build)")
            elif (m := _OLD.match(name)) and dead(m.group("pid")):
                final = here / m.group("final")
                if final.exists():
                    if not dry_run:
                        _remove(p)
                    done.append(f"removed {p} (left by a killed build)")
                else:
                    if not dry_run:
                        os.replace(p, final)
                    done.append(f"restored {final} (a build was killed while replacing it)")
        dirs[:] = [d for d in dirs if (here / d).is_dir()]  # removed or renamed: not walked
    return done


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
