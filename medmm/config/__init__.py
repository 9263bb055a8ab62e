"""Configuration: typed models (pydantic v2) filled from defaults, YAML files and ``--set a.b=c``.

Layers, each checked against the model (unknown keys are errors naming the dotted key, with a
did-you-mean; wrong types and out-of-range values are one-line errors naming the key):

1. the model's defaults: :class:`medmm.config.engine.EngineConfig` (defined once, here) and the
   task's ``data`` / ``model`` sections (its ``TaskSpec.config_model``, in the task's plugin
   package);
2. the task's YAML (``configs/<task>.yaml``): only the values that differ from those defaults;
3. the user's ``--config FILE``; a run directory's saved ``config.yaml`` is read leniently (keys
   this medmm no longer knows are dropped with a warning), so old runs still load;
4. ``--set a.b=c`` (YAML scalars; a string field keeps the raw text, e.g. ``data.window=40,400``).

A third-party task may still give only a YAML file whose defaults are the schema (the legacy
contract): :func:`model_from_defaults` derives the model from it (type of each default, ``null``
= any value, ``TaskSpec.choices`` / ``ranges`` as Literal / bounds).
"""

from __future__ import annotations

import copy
import difflib
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, create_model

from medmm.config.base import Bool, ConfigModel, Float, Int, iter_leaves
from medmm.config.engine import DataConfig, EngineConfig, EvalConfig, ModelConfig, TaskConfig
from medmm.errors import ConfigError

__all__ = ["Config", "ConfigModel", "DataConfig", "EngineConfig", "EvalConfig", "ModelConfig", "Range",
           "TaskConfig", "apply_overrides", "as_config", "current_key", "dump_yaml", "iter_leaves",
           "json_schema", "load_yaml", "merge", "model_from_defaults", "parse_override", "resolve",
           "run_config", "saved_config", "set_key", "task_config_model", "task_defaults", "validate"]

log = logging.getLogger("medmm")

Config = TaskConfig  # the type every task receives (was: dict[str, Any])


# ------------------------------------------------------------------------------ YAML files
def load_yaml(path: str | Path) -> dict[str, Any]:
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


def dump_yaml(cfg: Mapping[str, Any] | BaseModel) -> str:
    """YAML text of a config (a model or a mapping), keys in their defined order."""
    plain = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)


# ------------------------------------------------------------------------------ legacy ranges
@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key in a legacy ``TaskSpec.ranges`` table.

    Typed configs say this in the field instead (``Field(ge=1)``). ``Range(1)`` is ">= 1";
    ``Range(0, 1, hi_open=True)`` is "in [0, 1)".
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

    def bounds(self) -> dict[str, float]:
        """The pydantic ``Field`` constraints of this interval."""
        out: dict[str, float] = {}
        if self.lo is not None:
            out["gt" if self.lo_open else "ge"] = self.lo
        if self.hi is not None:
            out["lt" if self.hi_open else "le"] = self.hi
        return out

    def __contains__(self, value: Any) -> bool:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        if value != value:
            return False
        lo = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        return lo and (self.hi is None or (value < self.hi if self.hi_open else value <= self.hi))


# ------------------------------------------------------------------------------ errors
def _unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (allowed here: {', '.join(known)})")


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _short(err: Mapping[str, Any]) -> str:
    """What an error says the value must be, e.g. ``an integer`` or ``>= 1``."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind.startswith("int_"):
        return "an integer"
    if kind.startswith("bool_"):
        return "true or false"
    if kind == "finite_number":
        return "a finite number"
    if kind.startswith("float_"):
        return "a number"
    if kind == "string_type":
        return "a string"
    if kind in ("list_type", "tuple_type", "set_type"):
        return "a list"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "a mapping"
    if kind == "none_required":
        return "null"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return f"one of: {expected}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"{_BOUNDS[kind]} {bound:g}" if isinstance(bound, (int, float)) else f"{_BOUNDS[kind]} {bound}"
    return str(err.get("msg", kind)).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _dotted(loc: Sequence[Any], data: Any, prefix: str = "") -> str:
    """The dotted key of an error location in ``data`` (union member names in ``loc`` are skipped)."""
    parts: list[str] = [prefix.rstrip(".")] if prefix else []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
            node = node[part] if part < len(node) else None
        elif i == len(loc) - 1 and isinstance(node, Mapping):
            parts.append(str(part))  # an unknown / missing key
        else:
            continue
    return ".".join(parts)


def _interval(cls: type[BaseModel] | None, loc: Sequence[Any]) -> str | None:
    """``in [0, 1)`` for a field bounded on both sides (from its Field constraints), else ``None``."""
    field = None
    for part in loc:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            break
        field, cls = cls.model_fields[part], _section(cls, part)
    if field is None:
        return None
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if lo is None or hi is None:
        return None
    return f"in {'(' if 'gt' in bounds else '['}{lo:g}, {hi:g}{')' if 'lt' in bounds else ']'}"


def config_error(exc: ValidationError, data: Any, prefix: str = "", cls: type[BaseModel] | None = None
                 ) -> ConfigError:
    """ONE line naming the first failing dotted key and what its value must be."""
    errors = exc.errors()
    key = _dotted(errors[0]["loc"], data, prefix)
    same = [e for e in errors if _dotted(e["loc"], data, prefix) == key]
    first = same[0]
    if first["type"] == "extra_forbidden":
        return ConfigError(f"unknown config key {key!r}")
    value = first.get("input")
    if first["type"] in _BOUNDS and len(same) == 1:
        interval = _interval(cls, first["loc"])
        if interval:
            return ConfigError(f"config key {key!r} must be {interval} (got {value!r})")
    wants = list(dict.fromkeys(_short(e) for e in same if e["type"] != "none_required" or len(same) == 1))
    if all(e["type"] in _BOUNDS or e["type"] == "literal_error" for e in same):
        return ConfigError(f"config key {key!r} must be {' or '.join(wants)} (got {value!r})")
    return ConfigError(f"config key {key!r} must be {' or '.join(wants)}, got {value!r}")


def _build(cls: type[ConfigModel], data: Mapping[str, Any]) -> ConfigModel:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, data, cls=cls) from None


def set_key(cfg: ConfigModel, key: str, value: Any) -> None:
    """Set a dotted key of a config in place, validated (a ConfigError names the key)."""
    *path, leaf = key.split(".")
    node: Any = cfg
    for part in path:
        node = getattr(node, part)
    if isinstance(node, ConfigModel):
        leaf = type(node).current_name(leaf, f"{'.'.join(path)}." if path else "")
    try:
        setattr(node, leaf, value)
    except ValidationError as exc:
        raise config_error(exc, {leaf: value}, ".".join(path), type(node)) from None


# ------------------------------------------------------------------------------ merging layers
def _strip(annotation: Any) -> list[Any]:
    """The plain types an annotation accepts (Annotated / Optional / Union unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _strip(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _strip(a)]
    return [annotation]


def _section(cls: type[BaseModel], name: str) -> type[ConfigModel] | None:
    """The model of sub-section ``name`` of ``cls`` (``None`` for a leaf)."""
    field = cls.model_fields.get(name)
    if field is None:
        return None
    for t in _strip(field.annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _wants_raw_string(cls: type[BaseModel], parts: Sequence[str]) -> bool:
    """True when the leaf at ``parts`` only holds strings: ``--set`` keeps the raw text."""
    for part in parts[:-1]:
        sub = _section(cls, part)
        if sub is None:
            return False
        cls = sub
    field = cls.model_fields.get(parts[-1])
    if field is None:
        return False
    kinds = _strip(field.annotation)
    for t in kinds:
        if typing.get_origin(t) is Literal:
            if not all(isinstance(v, str) for v in typing.get_args(t)):
                return False
        elif t is not str and t is not type(None):
            return False
    return any(t is str or typing.get_origin(t) is Literal for t in kinds)


def _merge(cls: type[BaseModel], base: Mapping[str, Any], update: Mapping[str, Any], prefix: str = "",
           dropped: list[str] | None = None) -> dict[str, Any]:
    """``update`` deep-merged into a copy of ``base`` along the sections of ``cls``.

    Unknown keys are ConfigErrors, or (``dropped`` given: a saved run's config) left out and listed.
    """
    out = dict(base)
    allow_extra = cls.model_config.get("extra") == "allow"
    if issubclass(cls, ConfigModel) and cls.deprecated_keys:
        update = cls.rename_deprecated(update, prefix)
    for name, value in update.items():
        key = f"{prefix}{name}"
        if name not in cls.model_fields and not allow_extra:
            if dropped is not None:
                dropped.append(key)
                continue
            raise _unknown_key(key, cls.model_fields)
        sub = _section(cls, name)
        if sub is not None and name in cls.model_fields:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r} is a section; set its keys, e.g. {key}.<name>=... "
                                  f"(got {value!r})")
            current = base.get(name)
            current = current.model_dump() if isinstance(current, BaseModel) else dict(current or {})
            out[name] = _merge(sub, current, value, f"{key}.", dropped)
        else:
            out[name] = copy.deepcopy(value)
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


def current_key(cls: type[BaseModel], key: str, warn: bool = False) -> str:
    """Dotted ``key`` with a deprecated leaf name replaced by its current one (a warning if ``warn``)."""
    *path, leaf = key.split(".")
    node: type[BaseModel] | None = cls
    for part in path:
        node = _section(node, part) if node is not None else None
    if node is None or not issubclass(node, ConfigModel) or leaf not in node.deprecated_keys:
        return key
    prefix = f"{'.'.join(path)}." if path else ""
    return prefix + (node.current_name(leaf, prefix) if warn else node.deprecated_keys[leaf])


def _override_update(cls: type[BaseModel], item: str, seen: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``--set`` item as a nested update; checks the key path first (did-you-mean at its level).

    A deprecated key is renamed (with a warning); ``seen`` (current key -> key as given) catches an
    old and a new name of one key in the same ``--set`` list."""
    parts, value = parse_override(item)
    given = ".".join(parts)
    parts = current_key(cls, given, warn=True).split(".")
    if seen is not None:
        other = seen.setdefault(".".join(parts), given)
        if other != given:
            raise ConfigError(f"--set gives {other!r} and {given!r}, two names of one key; keep only "
                              f"{'.'.join(parts)!r}")
    node: type[BaseModel] = cls
    for i, part in enumerate(parts[:-1]):
        key = ".".join(parts[: i + 1])
        if part not in node.model_fields:
            raise _unknown_key(key, node.model_fields)
        sub = _section(node, part)
        if sub is None:
            raise ConfigError(f"config key {key!r} is not a section")
        node = sub
    if parts[-1] not in node.model_fields and node.model_config.get("extra") != "allow":
        raise _unknown_key(".".join(parts), node.model_fields)
    if _section(node, parts[-1]) is not None:
        raise ConfigError(f"config key {'.'.join(parts)!r} is a section; set its keys, e.g. "
                          f"{'.'.join(parts)}.<name>=...")
    if value is not None and not isinstance(value, str) and _wants_raw_string(cls, parts):
        value = item.partition("=")[2].strip()
    update: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        update = {part: update}
    return update


# ------------------------------------------------------------------------------ resolving
def _merge_file(cls: type[ConfigModel], data: Mapping[str, Any], path: Path, lenient: bool) -> dict[str, Any]:
    """The YAML file ``path`` merged into ``data``; ``lenient`` (a saved config): keys this medmm
    does not know are dropped with a warning instead of being errors."""
    dropped: list[str] | None = [] if lenient else None
    out = _merge(cls, data, load_yaml(path), dropped=dropped)
    if dropped:
        log.warning("%s: ignoring keys this medmm version does not know (made by another version): %s",
                    path, ", ".join(dropped))
    return out


def _start(defaults: ConfigModel | Mapping[str, Any], choices: Mapping[str, Any] | None
           ) -> tuple[type[ConfigModel], dict[str, Any]]:
    if isinstance(defaults, ConfigModel):
        return type(defaults), defaults.model_dump()
    cls = model_from_defaults(defaults, choices)
    return cls, _merge(cls, cls().model_dump(), defaults)


def resolve(defaults: ConfigModel | Mapping[str, Any], user_file: str | Path | None = None,
            overrides: Sequence[str] = (), choices: Mapping[str, Any] | None = None) -> ConfigModel:
    """Defaults, then the user's YAML file, then ``--set`` overrides -> a validated model.

    ``defaults`` is a model instance (its class is the schema) or, for legacy tasks, a plain
    mapping whose values are the schema (with ``choices``: allowed values / :class:`Range` per
    dotted key).
    """
    cls, data = _start(defaults, choices)
    if user_file is not None:
        user_file = Path(user_file)
        saved_run = user_file.name == "config.yaml" and (user_file.parent / "run.json").exists()
        data = _merge_file(cls, data, user_file, lenient=saved_run)
    seen: dict[str, str] = {}
    for item in overrides:
        data = _merge(cls, data, _override_update(cls, item, seen))
    return _build(cls, data)


def apply_overrides(cfg: ConfigModel | Mapping[str, Any], items: Sequence[str],
                    choices: Mapping[str, Any] | None = None) -> ConfigModel:
    """``cfg`` with ``--set`` items applied (a new, validated model)."""
    return resolve(cfg, None, items, choices)


def merge(base: ConfigModel | Mapping[str, Any], update: Mapping[str, Any],
          choices: Mapping[str, Any] | None = None) -> ConfigModel:
    """``update`` (a nested mapping) merged into ``base``; unknown keys are errors."""
    cls, data = _start(base, choices)
    return _build(cls, _merge(cls, data, update))


def as_config(cfg: ConfigModel | Mapping[str, Any]) -> TaskConfig:
    """A typed config: ``cfg`` itself, or a legacy nested dict turned into a model (its values are
    then the defaults and the schema; the engine's missing keys take the engine defaults)."""
    if isinstance(cfg, ConfigModel):
        return cfg  # type: ignore[return-value]
    return resolve(cfg)  # type: ignore[return-value]


def validate(cfg: Mapping[str, Any], defaults: ConfigModel | Mapping[str, Any],
             choices: Mapping[str, Any] | None = None) -> ConfigModel:
    """Check a complete config against the defaults' schema."""
    return merge(defaults, cfg, choices)


# ------------------------------------------------------------------------------ legacy YAML schema
def _as_list(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) or value is None else [value]


def _leaf_type(key: str, default: Any, choices: Mapping[str, Any]) -> Any:
    allowed = choices.get(key)
    if isinstance(default, bool):
        base: Any = Bool
    elif isinstance(default, int):
        base = Int
    elif isinstance(default, float):
        base = Float
    elif isinstance(default, str):
        base = str
    elif isinstance(default, (list, tuple)):
        base = Annotated[list, BeforeValidator(_as_list)]
    else:
        base = Any
    if isinstance(allowed, Range):
        base = Annotated[Float if base in (Any, Float) else base, Field(**allowed.bounds())]
        return base | None if default is None else base
    if allowed is not None and not isinstance(allowed, (str, bytes)):
        values = tuple(allowed)
        lit: Any = Literal[values]  # type: ignore[valid-type]
        return lit | None if default is None and None not in values else lit
    return base


def _section_from_defaults(name: str, defaults: Mapping[str, Any], choices: Mapping[str, Any], prefix: str,
                           base: type[ConfigModel]) -> type[ConfigModel]:
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(default, Mapping):
            sub = _section_from_defaults(f"{name}_{key}", default, choices, f"{dotted}.", ConfigModel)
            fields[str(key)] = (sub, Field(default_factory=sub))
        else:
            fields[str(key)] = (_leaf_type(dotted, default, choices), copy.deepcopy(default))
    return create_model(name, __base__=base, **fields)


def model_from_defaults(defaults: Mapping[str, Any], choices: Mapping[str, Any] | None = None,
                        name: str = "LegacyTaskConfig") -> type[TaskConfig]:
    """A root config model derived from a legacy YAML of defaults (the old "YAML is the schema").

    ``engine`` and ``eval`` are the engine's own models (their values in ``defaults`` are a layer
    of defaults on top); other sections and keys take the type of their default (``null`` =
    any value); ``choices`` (dotted key -> values or :class:`Range`) narrow them.
    """
    choices = dict(choices or {})
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        if key in ("engine", "eval"):
            if not isinstance(default, Mapping):
                raise ConfigError(f"config key {key!r} is a section; expected a mapping, got {default!r}")
            continue
        if isinstance(default, Mapping):
            base = DataConfig if key == "data" else ModelConfig if key == "model" else ConfigModel
            sub = _section_from_defaults(f"{name}_{key}", default, choices, f"{key}.", base)
            fields[str(key)] = (sub, Field(default_factory=sub))
        else:
            fields[str(key)] = (_leaf_type(str(key), default, choices), copy.deepcopy(default))
    return create_model(name, __base__=TaskConfig, **fields)


# ------------------------------------------------------------------------------ per task
def task_config_model(spec: Any) -> type[TaskConfig]:
    """The root config model of a task: ``TaskSpec.config_model``, or derived from its YAML."""
    ref = getattr(spec, "config_model", None)
    if ref is not None:
        from medmm.registry import resolve_object

        return resolve_object(ref)
    legacy = {**dict(getattr(spec, "choices", {}) or {}), **dict(getattr(spec, "ranges", {}) or {})}
    name = "".join(p.capitalize() for p in str(spec.name).replace("_", "-").split("-")) + "Config"
    return model_from_defaults(load_yaml(spec.config), legacy, name=name)


def task_defaults(spec: Any) -> TaskConfig:
    """Every default of a task: the models' defaults with the task's YAML on top."""
    cls = task_config_model(spec)
    try:
        return _build(cls, _merge(cls, cls().model_dump(), load_yaml(spec.config)))
    except ConfigError as exc:
        raise ConfigError(f"{spec.config}: {exc}") from None


def run_config(spec: Any, run_dir: str | Path, overrides: Sequence[str] = ()) -> TaskConfig:
    """A run directory's saved ``config.yaml`` (keys this version no longer knows dropped with a
    warning; keys added since take their defaults), plus ``overrides``."""
    return resolve(task_defaults(spec), Path(run_dir) / "config.yaml", overrides)  # type: ignore[return-value]


def saved_config(spec: Any, path: str | Path) -> TaskConfig:
    """A saved, resolved ``config.yaml`` (a run's or a ``medmm export`` folder's) on the model of task
    ``spec``: keys this medmm no longer knows are dropped with a warning (a config made by another
    version), keys added since take their defaults, every value is validated (a ConfigError names
    the key). Needs pydantic, PyYAML and the task's config module, never torch: the onnxruntime
    runtime (``medmm[runtime]``) reads an export's config through it."""
    defaults = task_defaults(spec)
    cls = type(defaults)
    return _build(cls, _merge_file(cls, defaults.model_dump(), Path(path), lenient=True))  # type: ignore[return-value]


def json_schema(spec: Any) -> dict[str, Any]:
    """The JSON Schema of a task's config; each ``default`` is the task's resolved default."""
    cls = task_config_model(spec)
    schema = cls.model_json_schema()
    defs = schema.get("$defs", {})

    def inject(node: dict[str, Any], values: Mapping[str, Any]) -> None:
        for name, prop in node.get("properties", {}).items():
            if name not in values:
                continue
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
            if ref and isinstance(values[name], Mapping):
                inject(defs[ref.rsplit("/", 1)[-1]], values[name])
            else:
                prop["default"] = values[name]

    inject(schema, task_defaults(spec).model_dump(mode="json"))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"medmm {spec.name} config", **{k: v for k, v in schema.items() if k != "title"}}
