"""`--config FILE` and `--print-config` for every command: a recipe kept in a file.

The file is TOML (or YAML: .yaml/.yml) whose keys are the command's flag names without the
dashes (`epochs = 3`, `ptq-calib-rows = [256, 512]`, `no-overlap = true`); each value is checked
against the flag it names with the flag's own parser, so a file and a command line mean the same.
Flags given on the command line win over the file. `--print-config` writes the effective
settings in that TOML form (every flag, defaults included) and exits: the file to keep.

The standard library reads TOML (tomllib); YAML is read with PyYAML, which transformers already
brings. Unknown keys and values of the wrong type: one line naming the key and the file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from common.errors import ConfigError

NOT_KEYS = frozenset({"help", "config", "print_config"})


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML or YAML file of settings, keys = flag names without the dashes "
                        "(flags given here win); `--print-config` writes one")
    p.add_argument("--print-config", action="store_true",
                   help="write the effective settings as TOML (a --config file) and exit")


def _toml_loads(path: Path, text: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # 3.10: the same parser as the package it came from, where installed
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ConfigError(f"--config {path}: reading TOML needs Python 3.11+ (tomllib) or "
                              "`pip install tomli`; or write the settings as YAML") from None
    return tomllib.loads(text)


def read_file(path: Path) -> dict[str, Any]:
    """The file's key/value table; one line naming the file when it cannot be read as one."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = _toml_loads(path, text)
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--config {path} cannot be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc})") from None
    except Exception as exc:  # yaml.YAMLError: a lazily imported class
        raise ConfigError(f"--config {path} is not valid YAML "
                          f"({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of flag = value, not a "
                          f"{type(data).__name__}")
    return data


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Flag name (no dashes) -> its action, for every optional flag but the config ones."""
    out = {}
    for a in p._actions:
        if a.dest in NOT_KEYS or not a.option_strings:
            continue
        for s in a.option_strings:
            if s.startswith("--"):
                out[s[2:]] = a
    return out


def _value(a: argparse.Action, key: str, v: Any, where: str) -> Any:
    """The value `key = v` gives `a`'s destination, checked by the flag's own parser."""
    def wrong(kind: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}' takes {kind}; it is {v!r}")

    if isinstance(a, argparse.BooleanOptionalAction):
        if not isinstance(v, bool):
            raise wrong("true or false")
        return v
    if a.nargs == 0:  # store_true / store_false / store_const: the file says whether it is given
        if not isinstance(v, bool):
            raise wrong("true or false")
        return a.const if v else a.default
    if isinstance(v, dict) or v is None:
        raise wrong("a value")
    if isinstance(v, list) and not isinstance(getattr(a, "config_default", None), tuple):
        raise wrong("one value, not a list")
    kinds = {"int": "an integer", "float": "a number"}
    if isinstance(v, list):
        items = [str(x).lower() if isinstance(x, bool) else str(x) for x in v]
        text = ",".join(items)
    elif isinstance(v, bool):
        if a.type is not None and a.type not in (str,):
            raise wrong(kinds.get(getattr(a.type, "__name__", ""), "a value its flag accepts"))
        text = str(v).lower()
    else:
        text = str(v)
    if a.type is None and not isinstance(v, str):
        raise wrong("a string")
    parse: Any = a.type
    try:
        out = parse(text) if parse is not None else text
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise wrong(kinds.get(getattr(a.type, "__name__", ""), "a value its flag accepts")) \
            from None
    if a.choices is not None and out not in a.choices:
        raise ConfigError(f"{where}: key '{key}' is one of {', '.join(map(str, a.choices))}, "
                          f"not {v!r}")
    return out


def apply_file(p: argparse.ArgumentParser, path: Path) -> None:
    """Make the file's settings `p`'s defaults (flags on the command line still win)."""
    acts = _actions(p)
    values = {}
    for key, v in read_file(path).items():
        a = acts.get(str(key))
        if a is None:
            raise ConfigError(f"--config {path}: unknown key '{key}': not a flag of {p.prog} "
                              f"(`{p.prog} --help` lists them)")
        value = _value(a, str(key), v, f"--config {path}")
        if isinstance(a, argparse.BooleanOptionalAction) and f"--{key}" not in a.option_strings[:1]:
            value = not value  # `no-x = true` is --no-x
        values[a.dest] = value
    p.set_defaults(**values)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a TOML basic string


def effective(p: argparse.ArgumentParser, ns: argparse.Namespace) -> str:
    """Every flag of `p` with the value it has in `ns` (a flag left unset: the default its
    config field has, recorded by common.config.add_flags), as TOML."""
    lines = [f"# {p.prog}: effective settings (--config FILE reads this back; flags win)"]
    seen: set[str] = set()
    for key, a in _actions(p).items():
        if a.dest in seen or key.startswith("no-") and isinstance(a, argparse.BooleanOptionalAction):
            continue
        seen.add(a.dest)
        v = getattr(ns, a.dest, None)
        if v is None:
            v = getattr(a, "config_default", None)
        if a.nargs == 0 and not isinstance(a, argparse.BooleanOptionalAction):
            v = v == a.const
        if v is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml(v)}")
    return "\n".join(lines) + "\n"


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`p.parse_args(argv)` with `--config` applied first (to the subcommand's parser where `p`
    has subcommands); `--print-config` prints the effective settings and exits 0, as `--help`
    does."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    target = subparser(p, argv) or p
    if known.config:
        apply_file(target, Path(known.config))
    ns = p.parse_args(argv)
    if getattr(ns, "print_config", False):
        print(effective(target, ns), end="")
        raise SystemExit(0)
    return ns


def subparser(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.ArgumentParser | None:
    """The subcommand parser `argv` picks (its first word), or None."""
    import sys

    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction) and words:
            return a.choices.get(words[0])
    return None
