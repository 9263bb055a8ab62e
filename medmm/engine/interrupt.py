"""Stopping a run on SIGTERM / SIGINT: cleanly, at a step boundary, with its status right.

``timeout``, a batch scheduler, Ctrl-C or a closed terminal stops a run with a signal. While
:func:`handle_signals` is active (the runner, around a training run), SIGTERM, SIGINT and SIGHUP
(unless ignored, as under ``nohup``) raise :class:`Interrupted`, a
``KeyboardInterrupt`` that names the signal, so the run's ``except`` path marks ``run.json``
``interrupted`` and the process exits with ``128 + signal``. Inside :func:`deferred` (the
engine's step loop on a single process) the first signal is only recorded: the loop saves a
``last`` checkpoint at the next step boundary and raises there (:func:`pending`); a second signal
stops at once. Under torch.distributed nothing is deferred (ranks could stop at different steps).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Interrupted", "deferred", "handle_signals", "pending", "raise_pending"]

log = logging.getLogger("medmm")
SIGNALS = (signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))  # HUP: terminal gone
_state: dict[str, Any] = {"defer": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum`` (SIGTERM / SIGINT); ``detail`` says what was kept."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = "") -> None:
        self.signum = int(signum)
        self.detail = detail
        super().__init__(f"interrupted by {self.signal_name}" + (f"; {detail}" if detail else ""))

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: Any) -> None:
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum
        log.warning("%s received: stopping at the next step boundary with a 'last' checkpoint "
                    "(send it again to stop now)", signal.Signals(signum).name)
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGTERM / SIGINT raise :class:`Interrupted` inside the block (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    installed = []
    for s in SIGNALS:
        if previous[s] in (signal.SIG_IGN, None):  # a signal the caller ignores stays ignored (nohup)
            continue
        signal.signal(s, _handler)
        installed.append(s)
    try:
        yield
    finally:
        for s in installed:
            signal.signal(s, previous[s])
        _state["pending"] = None


@contextmanager
def deferred(enabled: bool = True) -> Iterator[None]:
    """Inside the block a first signal waits for :func:`raise_pending` at the next step boundary."""
    if not enabled:
        yield
        return
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1


def pending() -> int | None:
    """The signal waiting for the next step boundary, if any."""
    return _state["pending"]


def raise_pending(detail: str = "") -> None:
    """Raise :class:`Interrupted` for the pending signal (cleared), if there is one."""
    signum = _state["pending"]
    if signum is not None:
        _state["pending"] = None
        raise Interrupted(signum, detail)
