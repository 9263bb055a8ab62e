"""How long the run will take: one line after the first steps, and the progress bar's ``eta``.

The estimate is the wall time per optimizer step measured so far (evaluations amortised once
they happen) times the steps left; early stopping can only make the run shorter. On a CPU, a long estimate
comes with the faster options the user has.
"""

from __future__ import annotations

import time

__all__ = ["Eta", "format_seconds"]

FIRST_AFTER_STEPS = 5
FIRST_AFTER_S = 10.0
LONG_S = 600.0  # on a CPU, estimates beyond this get a hint of faster options


def format_seconds(s: float) -> str:
    """``42 s``, ``7.5 min``, ``2.3 h``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Eta:
    """Per-run step timer; :meth:`step` returns the bar text and announces the estimate once."""

    def __init__(self, total_steps: int, device_type: str, announce: bool) -> None:
        self.total, self.device_type, self.announce = total_steps, device_type, announce
        self.t0 = time.perf_counter()
        self.steps = 0
        self.done = False

    def step(self, global_step: int) -> str:
        """Count one optimizer step; the bar's ``eta`` text ('' until measured)."""
        self.steps += 1
        if not self.total:
            return ""
        elapsed = time.perf_counter() - self.t0
        per_step = elapsed / self.steps
        left = max(0, self.total - global_step) * per_step
        if not self.done and self.steps >= FIRST_AFTER_STEPS and elapsed >= FIRST_AFTER_S:
            self.done = True
            if self.announce:
                self._announce(left, per_step)
        return format_seconds(left)

    def _announce(self, left: float, per_step: float) -> None:
        from medmm.runlog import echo

        msg = (f"medmm: about {format_seconds(left)} of training left ({self.total} optimizer steps at "
               f"{per_step:.2f} s/step; evaluations extra, early stopping may end it sooner)")
        if self.device_type == "cpu" and left > LONG_S:
            msg += ("\n  faster on this CPU: a TextCNN (model.backbone=textcnn) for text, fewer steps "
                    "(engine.max_steps), or the classic baseline this run also fits (engine.baseline); "
                    "or a GPU (engine.device=cuda)")
        echo(msg)
