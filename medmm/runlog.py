"""A run's ``train.log`` holds what its console showed: config and data summaries, per-evaluation
metrics, warnings (medmm's own and Python ``warnings``) and the final summary.

The ``medmm`` logger writes INFO and up to ``RUN_DIR/train.log`` (set up by the runner); this
module adds the console side: WARNING and up from any ``medmm.*`` logger are printed on stderr
as ``medmm: warning: ...``, and Python warnings raised during a run are shown exactly as before
and also logged. :func:`echo` prints a line as before and logs it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import click

__all__ = ["ConsoleHandler", "attach_console", "config_changes", "echo", "guard_root_logger", "log_evaluation"]

log = logging.getLogger("medmm")


class ConsoleHandler(logging.StreamHandler):
    """WARNING and up on the current ``sys.stderr`` (looked up per record: test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("medmm: %(levelname_lower)s: %(message)s"))

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ sets it; the live stderr wins
        pass

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _OthersLastResort(logging.StreamHandler):
    """The root logger's handler while medmm owns the console: other libraries' WARNING and up on
    stderr, as Python's last-resort handler prints them; never a ``medmm.*`` record (those have
    their own handlers). Its presence makes a library's ``logging.basicConfig()`` at import a no-op
    (opacus calls it, which printed every medmm console line twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.addFilter(lambda r: not (r.name == "medmm" or r.name.startswith("medmm.")))

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _PyWarningsConsole(logging.StreamHandler):
    """Python warnings captured into logging, printed on stderr as Python prints them."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage())  # already warnings.formatwarning's text
        except Exception:  # noqa: BLE001 - like logging: a broken stream must not break the run
            self.handleError(record)


def guard_root_logger() -> None:
    """Give the root logger medmm's last-resort handler when it has none, so that a library calling
    ``logging.basicConfig()`` at import (opacus) changes nothing: call it before such imports."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_OthersLastResort())


def attach_console(file_handler: logging.Handler | None) -> None:
    """Show medmm warnings on stderr, and log Python warnings to ``file_handler`` (the run's train.log) too.

    Idempotent: handlers are added once per process; the ``py.warnings`` logger follows the
    current run's file handler.
    """
    logger = logging.getLogger("medmm")
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    guard_root_logger()
    py = logging.getLogger("py.warnings")
    for h in [h for h in py.handlers if isinstance(h, logging.FileHandler) and h is not file_handler]:
        py.removeHandler(h)
    if file_handler is not None and file_handler not in py.handlers:
        py.addHandler(file_handler)
    if not any(isinstance(h, _PyWarningsConsole) for h in py.handlers):
        py.addHandler(_PyWarningsConsole())
    py.propagate = False
    logging.captureWarnings(True)


def echo(message: str, *, err: bool = True) -> None:
    """Print ``message`` (stderr by default) as before, and log each of its lines at INFO."""
    click.echo(message, err=err)
    for line in message.splitlines():
        if line.strip():
            log.info(line)


def config_changes(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` for every config key whose value differs from the task's defaults."""
    out: list[str] = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(value, Mapping):
            out += config_changes(value, default if isinstance(default, Mapping) else {}, f"{name}.")
        elif value != default:
            out.append(f"{name}={value}")
    return out


def log_evaluation(records: list[Mapping[str, Any]]) -> None:
    """One INFO line per evaluation: epoch, step, then each split's loss and metrics."""
    if not records:
        return
    head = records[0]
    parts = []
    for rec in records:
        skip = {"epoch", "step", "split", "lr", "samples_per_s"}
        values = ", ".join(f"{k} {_fmt(v)}" for k, v in rec.items() if k not in skip)
        parts.append(f"{rec['split']} {values}")
    if "lr" in head:
        parts.append(f"lr {head['lr']:.3g}")
    log.info(f"epoch {head['epoch']:g} step {head['step']}: " + " | ".join(parts))


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value and abs(value) < 1e-3:  # e.g. engine.privacy's delta
        return f"{value:.3g}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
