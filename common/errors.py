"""One error type for everything a user can fix, and one wrapper every `python -m` entry point
uses, so a user error prints one line (never a traceback) and exits with status 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input, a missing or stale artifact, a missing library or device, a bad flag: something
    the user can fix. The message says how. Subclasses keep the builtin base they had
    (ValueError, RuntimeError) so existing `except` clauses still hold."""


class ConfigError(UserError, ValueError):
    """A config value out of range, or a saved config that no longer matches the code."""


def cli(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point `fn(argv) -> exit code`: a UserError becomes `error: <message>` on
    stderr and exit code 2; Ctrl-C exits 130 without a traceback. Anything else is a bug and
    keeps its traceback."""

    @functools.wraps(fn)
    def main(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return main
