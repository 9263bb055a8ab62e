"""Name -> object registries for tasks, backbones, readers, fusion heads and callbacks."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from medmm.errors import PluginError, UnknownNameError

KINDS = ("task", "backbone", "reader", "fusion_head", "callback")


def resolve_object(ref: str | Callable[..., Any]) -> Any:
    """Import ``"package.module:attr"`` lazily; return callables unchanged."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    if not attr:
        raise PluginError(f"bad reference {ref!r}: expected 'package.module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Component:
    """A registered backbone, reader, fusion head or callback.

    ``factory`` is a callable or a lazy ``"module:attr"`` reference, so registering a component
    never imports torch. ``modality`` is ``text``, ``image``, ``tabular`` or ``any``.
    """

    name: str
    factory: str | Callable[..., Any]
    modality: str = "any"
    summary: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """Import and return the factory."""
        return resolve_object(self.factory)

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Call the factory."""
        return self.load()(*args, **kwargs)


@dataclass
class Entry:
    """One registered object and the plugin that owns it."""

    obj: Any
    owner: str


class Registry:
    """Objects by kind and name; duplicates raise unless the newcomer asks to override."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, obj: Any, *, owner: str, override: bool = False) -> None:
        """Register ``obj`` (which has a ``name``) under ``kind`` for plugin ``owner``."""
        self.check(kind, obj, owner=owner, override=override)
        self._entries[kind][obj.name] = Entry(obj, owner)

    def check(self, kind: str, obj: Any, *, owner: str, override: bool = False) -> None:
        """Raise :class:`PluginError` if ``obj`` cannot be registered."""
        if kind not in self._entries:
            raise PluginError(f"plugin {owner!r} registered unknown kind {kind!r}")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner!r} registered a {kind} without a name: {obj!r}")
        table = self._entries[kind]
        if name in table and not override:
            raise PluginError(
                f"{kind} {name!r} is registered by both {table[name].owner!r} and {owner!r}; "
                f"the newcomer must pass override=True to replace it"
            )

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; :class:`UnknownNameError` lists the known names."""
        try:
            return self._entries[kind][name].obj
        except KeyError:
            raise UnknownNameError(kind.replace("_", " "), name, self._entries[kind]) from None

    def owner(self, kind: str, name: str) -> str:
        """The plugin that registered ``name``."""
        self.get(kind, name)
        return self._entries[kind][name].owner

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching a glob ``pattern``."""
        return sorted(n for n in self._entries[kind] if fnmatch.fnmatchcase(n, pattern))

    def items(self, kind: str) -> Iterator[tuple[str, Any]]:
        """``(name, obj)`` pairs of one kind, sorted by name."""
        for name in self.names(kind):
            yield name, self._entries[kind][name].obj
