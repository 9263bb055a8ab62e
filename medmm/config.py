"""Configuration: task YAML defaults + user YAML + ``--set a.b=c`` -> a validated dict.

The task's default YAML is the schema: every key it holds is allowed, and the type of each
default is the type a value must have (``null`` defaults accept any scalar or list). A task may
also restrict keys to ``choices`` (a list of values, or a numeric :class:`Range`). Unknown keys,
wrong types and out-of-range values are errors naming the key.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medmm.errors import ConfigError

Config = dict[str, Any]


def load_yaml(path: str | Path) -> Config:
    """Read a YAML mapping; malformed YAML or a non-mapping top level is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    """YAML text of a config, keys in their defined order."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=False)


def _unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (allowed here: {', '.join(known)})")


def _type_name(value: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a section"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key; used in a ``choices`` table in place of a value list.

    ``Range(1)`` is ">= 1"; ``Range(0, 1, hi_open=True)`` is "in [0, 1)". ``null`` values pass
    (a ``null`` default means "unset"); NaN never does.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"

    def __contains__(self, value: Any) -> bool:
        try:
            self.check("", value)
        except ConfigError:
            return False
        return True

    def check(self, key: str, value: Any) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        ok = value == value  # NaN is out of every range
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        if not ok:
            raise ConfigError(f"config key {key!r} must be {self.describe()} (got {value!r})")


def _check_value(key: str, value: Any, default: Any, choices: Mapping[str, Sequence[Any]]) -> Any:
    """Validate (and lightly coerce) one leaf value against its default and choices."""
    if isinstance(default, dict):
        raise ConfigError(f"config key {key!r} is a section; set its keys, e.g. {key}.<name>=...")
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            value = float(value)
        except ValueError:
            pass
    if default is not None and value is not None:
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(default, bool) and isinstance(value, bool)
        elif isinstance(default, float) and isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(default, (list, tuple)):
            value = list(value) if isinstance(value, (list, tuple)) else [value]
            ok = True
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(
                f"config key {key!r} must be {_type_name(default)}, got {value!r}"
            )
    if key in choices and isinstance(choices[key], Range):
        choices[key].check(key, value)
    elif key in choices and value not in choices[key]:
        allowed = ", ".join(map(str, choices[key]))
        raise ConfigError(f"config key {key!r} must be one of: {allowed} (got {value!r})")
    return value


def merge(base: Config, update: Mapping[str, Any], choices: Mapping[str, Sequence[Any]] | None = None,
          prefix: str = "") -> Config:
    """Deep-merge ``update`` into a copy of ``base``; keys absent from ``base`` are errors."""
    out = copy.deepcopy(base)
    for name, value in update.items():
        key = f"{prefix}{name}"
        if name not in base:
            raise _unknown_key(key, base)
        if isinstance(base[name], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r} is a section; expected a mapping, got {value!r}")
            out[name] = merge(base[name], value, choices, prefix=f"{key}.")
        else:
            out[name] = _check_value(key, value, base[name], choices or {})
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], parsed value); values are YAML scalars or lists."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, e.g. engine.epochs=3; got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, set)) or (value is not None and not isinstance(value, (str, int, float, bool, list))):
        value = raw  # timestamps, mappings and the like stay plain strings
    return key.split("."), value


def apply_overrides(cfg: Config, items: Sequence[str], choices: Mapping[str, Sequence[Any]] | None = None) -> Config:
    """Apply ``--set`` items; a string default keeps the raw text (``data.window=40,400``)."""
    for item in items:
        parts, value = parse_override(item)
        raw = item.partition("=")[2]
        node: Any = cfg
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise _unknown_key(".".join(parts[: i + 1]), node if isinstance(node, dict) else {})
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[:-1])!r} is not a section")
        leaf = parts[-1]
        if leaf not in node:
            raise _unknown_key(".".join(parts), node)
        if isinstance(node[leaf], str) and value is not None and not isinstance(value, str):
            value = raw.strip()
        update: dict[str, Any] = {leaf: value}
        for part in reversed(parts[:-1]):
            update = {part: update}
        cfg = merge(cfg, update, choices)
    return cfg


def validate(cfg: Config, defaults: Config, choices: Mapping[str, Sequence[Any]] | None = None) -> Config:
    """Check a complete config against the defaults (types, choices, unknown keys)."""
    return merge(defaults, cfg, choices)


def resolve(defaults: Config, user_file: str | Path | None = None, overrides: Sequence[str] = (),
            choices: Mapping[str, Sequence[Any]] | None = None) -> Config:
    """Defaults, then the user's YAML file, then ``--set`` overrides; validated at each step."""
    cfg = validate(defaults, defaults, choices)
    if user_file is not None:
        cfg = merge(cfg, load_yaml(user_file), choices)
    return apply_overrides(cfg, overrides, choices)
