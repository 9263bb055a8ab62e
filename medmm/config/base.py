"""The base of every typed config section, and the field types the built-in sections share.

Sections are pydantic v2 models: unknown keys are rejected (``extra="forbid"``), assignments are
validated, and the JSON Schema comes for free (``medmm config TASK --schema``). Read values as
attributes (``cfg.engine.epochs``, already an ``int``).

``cfg["engine"]["epochs"]`` and ``cfg.get(...)`` still work on every section: a DEPRECATED
compatibility path for code written against the old plain-dict config (third-party tasks);
new code uses attributes.

A section lists renamed keys in ``deprecated_keys`` (old name -> current name): the old name still
works from YAML, ``--set``, a saved run's ``config.yaml`` and the constructor, with a
:class:`DeprecationWarning`; giving both names is a one-line :class:`~medmm.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from medmm.errors import ConfigError

__all__ = ["Bool", "ConfigModel", "Float", "Fraction", "Int", "NonNegInt", "OptStrList", "PosInt", "Probability", "StrList"]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# Numbers never accept true/false; floats accept integers and YAML 1.1's "1e-4" strings.
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Float = Annotated[float, BeforeValidator(_no_bool)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Fraction = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, lt=1)]  # [0, 1)
Probability = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1)]  # [0, 1]
StrList = Annotated[list[str], BeforeValidator(_as_list)]  # one value or a list: "text" -> ["text"]
OptStrList = Annotated[list[str] | None, BeforeValidator(_as_list)]  # the same, or null


class ConfigModel(BaseModel):
    """A config section: typed fields, unknown keys rejected, assignments validated.

    The mapping methods (``cfg["key"]``, ``get``, ``in``, ``keys``, ``items``, ``cfg["key"] = v``)
    are a deprecated bridge from the plain-dict config; use attributes in new code.
    """

    # allow_inf_nan=False: a float field never takes inf / nan (lr=inf would pass ge=0 and fail later as a NaN loss)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True, allow_inf_nan=False)

    #: renamed keys of this section: old name -> current name (the old one warns, see the module doc)
    deprecated_keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def current_name(cls, name: str, where: str = "") -> str:
        """``name``, or its current name if it is deprecated (a DeprecationWarning names both)."""
        new = cls.deprecated_keys.get(name)
        if new is None:
            return name
        msg = f"config key {where + name!r} is deprecated; use {where + new!r}"
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        logging.getLogger("medmm").warning("%s", msg)  # the CLI shows this; DeprecationWarning is hidden
        return new

    @classmethod
    def rename_deprecated(cls, data: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """``data`` (this section's keys) with deprecated names renamed; both names: ConfigError."""
        out = dict(data)
        for old, new in cls.deprecated_keys.items():
            if old in out:
                if new in out:
                    raise ConfigError(f"config keys {where + old!r} (deprecated) and {where + new!r} are "
                                      f"both given; keep only {where + new!r}")
                cls.current_name(old, where)  # warns
                out[new] = out.pop(old)
        return out

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if cls.deprecated_keys and isinstance(data, Mapping):
            return cls.rename_deprecated(data)
        return data

    # -- deprecated dict-style access ------------------------------------------------------
    def _names(self) -> list[str]:
        return [*type(self).model_fields, *(self.__pydantic_extra__ or {})]

    def __getitem__(self, key: str) -> Any:
        key = type(self).current_name(key)
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        key = type(self).current_name(key)
        if key not in self._names():
            raise KeyError(key)
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:  # a deprecated name is in, as cfg[name] works
        return isinstance(key, str) and type(self).current_name(key) in self._names()

    def get(self, key: str, default: Any = None) -> Any:
        key = type(self).current_name(key)
        return getattr(self, key) if key in self._names() else default

    def keys(self) -> list[str]:
        return self._names()

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self._names()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self._names()]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # keys, like the Mapping it is registered as
        return iter(self._names())

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe values), keys in their defined order."""
        return self.model_dump(mode="json")


Mapping.register(ConfigModel)  # isinstance(section, Mapping): old code that walks a config keeps working


def iter_leaves(section: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a config (a model or a plain mapping)."""
    for key, value in section.items():
        if isinstance(value, (ConfigModel, Mapping)) and not isinstance(value, (str, bytes)):
            yield from iter_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
