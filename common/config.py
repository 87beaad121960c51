"""Frozen dataclass configs: their canonical recipe (what the manifest hashes), loading a saved
one back, and command-line flags generated one to one from their fields.

A recipe is `{"type": <class name>, "fields": {...}}`, nested configs tagged the same way; it holds
every field that decides what a step makes. It carries no version number: what a field means is
the code's, and the code that builds a step is fingerprinted into the step's key
(docs/architecture.md), so a recipe read back is only checked to be this class's, field for
field. Two kinds of field stay out: `run_only` ones (device, threads: how a step runs, not what it makes), and `location` ones
(the data or model to read), whose content goes into the key through the step's inputs (content
fingerprints), so the same folder spelled two ways (relative, absolute, trailing slash) keys the
same and a changed file under the same name does not.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from common.errors import ConfigError

T = TypeVar("T")


def run_only(default: Any, help: str = "") -> Any:
    """A field that says how a step runs (device, threads), not what it makes: not in the recipe."""
    return dataclasses.field(default=default, metadata={"recipe": False, "help": help})


def doc(default: Any, help: str) -> Any:
    """A field with a help text for its command-line flag."""
    return dataclasses.field(default=default, metadata={"help": help})


def location(default: Any, help: str = "") -> Any:
    """Where a step reads its data or model from: not in the recipe (its content is keyed)."""
    return dataclasses.field(default=default, metadata={"recipe": False, "help": help})


def _within(v: float, rule: str) -> bool:
    op, _, rest = rule.partition(" ")
    if op == "in":  # "in [0, 1)": brackets say closed or open
        lo, hi = (float(x.strip("[]() ")) for x in rest.split(","))
        return (v >= lo if rest[0] == "[" else v > lo) and (v <= hi if rest[-1] == "]" else v < hi)
    bound = float(rest)
    return {">=": v >= bound, ">": v > bound, "<=": v <= bound, "<": v < bound}[op]


def check_ranges(cfg: Any, **rules: str) -> None:
    """Range-check numeric fields of a config: `check_ranges(self, lr="> 0", seed=">= 0",
    dropout="in [0, 1)")`; a tuple field has each element checked. The first value out of range
    raises ConfigError (one line naming the field, its rule and the value; NaN is never in
    range)."""
    for name, rule in rules.items():
        value = getattr(cfg, name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float) or not _within(v, rule):
                raise ConfigError(f"{name} must be {rule}, not {v!r}")


def recipe(cfg: Any) -> dict[str, Any]:
    """The canonical, tagged form of a config (nested configs included)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"recipe() takes a config instance, not {cfg!r}")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("recipe", True):
            v = getattr(cfg, f.name)
            fields[f.name] = recipe(v) if dataclasses.is_dataclass(v) else (
                list(v) if isinstance(v, tuple) else v)
    return {"type": type(cfg).__name__, "fields": fields}


def from_recipe(cls: type[T], saved: dict[str, Any], where: str = "a saved config") -> T:
    """Rebuild a config from its recipe; a recipe written by other code says so in one line."""
    name = saved.get("type") if isinstance(saved, dict) else None
    if name != cls.__name__:
        raise ConfigError(f"{where} is a {name or 'unknown config'}, not a {cls.__name__}: rebuild "
                          "it with `make engines`")
    if not isinstance(saved.get("fields"), dict):
        raise ConfigError(f"{where} is a {cls.__name__} with no fields: rebuild it with "
                          "`make engines`")
    known = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if f.metadata.get("recipe", True)}
    # both directions: a field this code lacks, or one it has that the recipe lacks, means other
    # code wrote it (a default filled in here could differ from what that code meant)
    extra = sorted(set(saved["fields"]) - set(known))
    missing = sorted(set(known) - set(saved["fields"]))
    if extra or missing:
        said = "; ".join(x for x in (extra and f"field(s) {extra} that this code does not know",
                                     missing and f"no field(s) {missing}") if x)
        raise ConfigError(f"{where} has {said} ({cls.__name__}): other code wrote it; rebuild it "
                          "with `make engines`")
    kw: dict[str, Any] = {}
    for k, v in saved["fields"].items():
        default = _default(known[k])
        if dataclasses.is_dataclass(default):
            v = from_recipe(type(default), v, f"{where} ({k})")
        elif isinstance(default, tuple):
            v = tuple(v)
        kw[k] = v
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} does not fit {cls.__name__}: {exc}; rebuild it with "
                          "`make engines`") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ConfigError(f"config field {f.name} has no default: every config field needs one")


def _parse_tuple(elem: type):
    def one(x: str) -> Any:
        if elem is bool:  # bool("off") is True: read the words
            words = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
            if x.lower() not in words:
                raise argparse.ArgumentTypeError(f"{x!r} is not on/off")
            return words[x.lower()]
        return elem(x)

    def parse(s: str) -> tuple:
        return tuple(dict.fromkeys(one(x.strip()) for x in s.split(",") if x.strip()))
    return parse


def add_flags(p: argparse.ArgumentParser | Any, cls: type, prefix: str = "",
              skip: tuple[str, ...] = (), title: str | None = None,
              choices: dict[str, Any] | None = None) -> None:
    """One flag per field: `--{prefix}{field-name}`; a nested config adds its own with its field
    name as a further prefix. bool fields get --x / --no-x; tuples take comma lists; `choices`
    maps a field name to the values its flag accepts."""
    choices = choices or {}
    group = p.add_argument_group(title) if title else p
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f)
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        dest = f"{prefix}{f.name}".replace("-", "_")
        if dataclasses.is_dataclass(default):
            add_flags(group, type(default), f"{prefix}{f.name.replace('_', '-')}-")
            continue
        help_ = f.metadata.get("help", "")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = f"{help_} (default: {shown})" if help_ else f"default: {shown}"
        help_ = help_.replace("%", "%%")  # argparse formats help strings with %
        if isinstance(default, bool):
            action = group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                        default=None, help=help_)
        elif isinstance(default, tuple):
            elem = type(default[0]) if default else str
            action = group.add_argument(flag, dest=dest, type=_parse_tuple(elem), default=None,
                                        metavar="on,off" if elem is bool else "A,B,...",
                                        help=help_)
        else:
            action = group.add_argument(flag, dest=dest, type=type(default), default=None,
                                        help=help_, choices=choices.get(f.name))
        # None above means "not given" (from_flags); the field's own default, for --print-config
        action.config_default = default  # type: ignore[attr-defined,union-attr]


def to_flags(cfg: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that give `cfg` back through add_flags + from_flags: one per field whose value
    differs from its default (a child process is handed its parent's config this way). For a
    config whose flags add_flags made as they are (EvalConfig, the mode configs), not for
    BuildConfig, whose nested configs' flags engines names itself."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        v, default = getattr(cfg, f.name), _default(f)
        name = f"{prefix}{f.name.replace('_', '-')}"
        if dataclasses.is_dataclass(default):
            out += to_flags(v, f"{name}-")
        elif v != default:
            if isinstance(default, bool):
                out.append(f"--{name}" if v else f"--no-{name}")
            elif isinstance(default, tuple):
                out.append(f"--{name}={','.join(map(str, v))}")
            else:
                out.append(f"--{name}={v}")
    return out


def from_flags(cls: type[T], ns: argparse.Namespace, prefix: str = "", **fixed: Any) -> T:
    """The config the flags describe: defaults, then `fixed` (shared flags), then each flag the
    user actually gave. Out-of-range values raise ConfigError (from the config's checks)."""
    kw: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = _default(f)
        dest = f"{prefix}{f.name}".replace("-", "_")
        if dataclasses.is_dataclass(default):
            kw[f.name] = from_flags(type(default), ns, f"{prefix}{f.name}_",
                                    **{k: v for k, v in fixed.items()
                                       if k in {g.name for g in dataclasses.fields(default)}})
            continue
        v = getattr(ns, dest, None)
        if v is not None:
            kw[f.name] = v
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in kw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
