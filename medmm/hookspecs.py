"""The pluggy contract between medmm and its plugins.

Every hook receives a ``register`` callback and returns nothing: plugins register objects by
name into the registry, and collisions are resolved there (explicitly), never by hook order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("medmm")


class Register(Protocol):
    """The callback a ``register_*`` hook receives: ``register(spec, override=False)``."""

    def __call__(self, spec: object, *, override: bool = False) -> None: ...


@hookspec
def register_tasks(register: Register) -> None:
    """Register :class:`medmm.task.TaskSpec` objects (cheap: no torch import here)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`medmm.registry.Component` backbones (text, image or tabular encoders)."""


@hookspec
def register_readers(register: Register) -> None:
    """Register :class:`medmm.registry.Component` data readers (DICOM folders, tables, ...).

    A component whose ``extra`` holds ``"suffixes"`` (e.g. ``[".psv"]``) and/or a ``"predicate"``
    (``path -> bool``) is a table format: :func:`medmm.data.readers.read_table`, the one table
    reader of every table task, calls its factory ``(path, **options) -> pandas.DataFrame``.
    """


@hookspec
def register_fusion_heads(register: Register) -> None:
    """Register :class:`medmm.registry.Component` fusion heads for the ``fusion`` task."""


@hookspec
def register_callbacks(register: Register) -> None:
    """Register :class:`medmm.registry.Component` engine callbacks (logging integrations)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``medmm`` click group."""
