"""Plugin discovery: the ``medmm`` entry-point group, with per-plugin error capture.

Built-in plugins are registered through the same entry-point group as third-party ones. A
plugin that fails to import, validate or register is recorded (and shown by ``medmm plugins``)
while the rest keep working; ``MEDMM_STRICT_PLUGINS=1`` makes such failures fatal and
``MEDMM_DISABLE_PLUGINS=a,b`` skips plugins by entry-point name.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from medmm import hookspecs
from medmm.errors import PluginError
from medmm.registry import Registry

GROUP = "medmm"
BUILTIN_DIST = "medmm"
REGISTER_HOOKS = {
    "register_tasks": "task",
    "register_backbones": "backbone",
    "register_readers": "reader",
    "register_fusion_heads": "fusion_head",
    "register_callbacks": "callback",
}


@dataclass
class PluginInfo:
    """What ``medmm plugins`` shows for one entry point."""

    name: str
    dist: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False


@dataclass
class Plugins:
    """The loaded plugin manager, its registry, and a record of every plugin."""

    pm: pluggy.PluginManager
    registry: Registry
    infos: list[PluginInfo]


def _strict() -> bool:
    return os.environ.get("MEDMM_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("MEDMM_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised at import or registration"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the plugin at import or registration (not a Ctrl-C)"
    return f"{type(exc).__name__}: {exc}"


class _Recorder:
    """SIGINT handler that records the signal, then raises ``KeyboardInterrupt`` as Python's does."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.seen.append(signum)
        raise KeyboardInterrupt


@contextmanager
def user_interrupts() -> Iterator[list[int]]:
    """Record a real SIGINT (the user's Ctrl-C) while plugin code runs (import, hooks).

    A ``KeyboardInterrupt`` is re-raised only when the list this yields is not empty: one that a
    plugin raises itself is that plugin's failure, like any other exception. Nested blocks share
    the outer block's list. Outside the main thread, or when SIGINT is not Python's default handler
    (ignored, or the caller's own), nothing is installed and every ``KeyboardInterrupt`` seen is a
    plugin's.
    """
    current = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if isinstance(current, _Recorder):
        yield current.seen
        return
    if current is not signal.default_int_handler:
        yield []
        return
    recorder = _Recorder()
    signal.signal(signal.SIGINT, recorder)
    try:
        yield recorder.seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _sorted_entry_points() -> list[EntryPoint]:
    eps = list(entry_points(group=GROUP))
    dist = lambda ep: ep.dist.name if ep.dist else ""  # noqa: E731
    # built-ins first, so a third-party duplicate is the newcomer named in the error
    return sorted(eps, key=lambda ep: (dist(ep) != BUILTIN_DIST, dist(ep), ep.name))


def _fail(info: PluginInfo, exc: BaseException) -> None:
    info.error = _describe(exc)
    if _strict():
        raise PluginError(f"plugin {info.name!r} ({info.dist}) failed: {info.error}") from exc


def load_plugins(extra: list[tuple[str, Any]] | None = None) -> Plugins:
    """Discover, validate and register every plugin; ``extra`` adds ``(name, module)`` pairs.

    Any ``BaseException`` a plugin raises (``SystemExit``, ``KeyboardInterrupt``, ...) is recorded as
    that plugin's failure; only the user's own Ctrl-C (a real SIGINT) stops loading.
    """
    with user_interrupts() as ctrl_c:
        return _load(extra, ctrl_c)


def _load(extra: list[tuple[str, Any]] | None, ctrl_c: list[int]) -> Plugins:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    infos: list[PluginInfo] = []
    disabled = _disabled()
    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in _sorted_entry_points():
        info = PluginInfo(ep.name, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
        infos.append(info)
        if ep.name in disabled:
            info.disabled = True
            continue
        try:
            candidates.append((info, ep.load()))
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not kill the CLI
            if ctrl_c and isinstance(exc, KeyboardInterrupt):  # the user's Ctrl-C, not the plugin's doing
                raise
            _fail(info, exc)
    for name, module in extra or []:
        info = PluginInfo(name, "(in-process)", "")
        infos.append(info)
        candidates.append((info, module))

    for info, module in candidates:
        try:
            pm.register(module, name=info.name)
            pm.check_pending()  # catches misspelled hook implementations
        except BaseException as exc:
            if ctrl_c and isinstance(exc, KeyboardInterrupt):
                raise
            if pm.is_registered(module):
                pm.unregister(module)
            _fail(info, exc)
            continue
        info.hooks = sorted(impl.name for impl in pm.get_hookcallers(module) or [])
        _register_from(module, info, registry, ctrl_c)
    return Plugins(pm, registry, infos)


@cache
def default_plugins() -> Plugins:
    """The plugins of this process, loaded once."""
    return load_plugins()


def get_registry() -> Registry:
    """The registry of this process's plugins (tasks use it to resolve backbones by name)."""
    return default_plugins().registry


def _register_from(module: Any, info: PluginInfo, registry: Registry, ctrl_c: list[int]) -> None:
    """Call one plugin's ``register_*`` hooks; all or nothing, a failure is recorded."""
    calls: list[tuple[str, Any, bool]] = []

    def register(kind: str, spec: Any, *, override: bool = False) -> None:
        calls.append((kind, spec, override))

    try:
        for hook, kind in REGISTER_HOOKS.items():
            if hook in info.hooks:
                getattr(module, hook)(partial(register, kind))
        staged = Registry()
        for kind, spec, override in calls:
            registry.check(kind, spec, owner=info.name, override=override)
            staged.add(kind, spec, owner=info.name)  # duplicates inside one plugin raise too
        for kind, spec, override in calls:
            registry.add(kind, spec, owner=info.name, override=override)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: one plugin cannot end the process
        if ctrl_c and isinstance(exc, KeyboardInterrupt):
            raise
        _fail(info, exc)
