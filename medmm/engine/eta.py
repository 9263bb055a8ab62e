"""How long the run will take: one line after the first steps, one after the first evaluation (said
:data:`FIRST_AFTER_STEPS` steps after it, once the next epoch's steps are measured) or, for a fit whose
one evaluation ends it, after a quarter of its steps, and the progress bar's ``eta`` (re-estimated at
every step).

The estimate (:class:`medmm.engine.budget.Planner`) is the whole time left: the steps left at the
seconds per step measured on the latest epoch, the evaluations left at the measured seconds per evaluation, and the
finish (test and validation passes, bootstrap CIs, classic baseline, report) estimated from the
sizes; early stopping can only make the run shorter. On a CPU, a long estimate comes with the
faster options the user has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Eta", "format_seconds", "speed_hint"]

FIRST_AFTER_STEPS = 5  # also: steps after the first evaluation measured before its line
QUARTER = 0.25  # a fit whose one evaluation ends it: its firm estimate is said after this share of its steps
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
    """Prints the estimate of a fit's :class:`~medmm.engine.budget.Planner`; :meth:`step` returns the bar text."""

    def __init__(self, planner: Any, device_type: str, announce: bool, hints: Sequence[str] = ()) -> None:
        self.planner, self.device_type, self.announce = planner, device_type, announce
        self.hints = list(hints)  # the task's speed hints (Task.speed_hints)
        self.done = False
        self.after_eval = False
        self.first_eval_at: int | None = None  # the planner's step count at the first evaluation
        self.first_eval_step = 0
        self.quarter_said = False

    def step(self, global_step: int) -> str:
        """After an optimizer step: the bar's ``eta`` text ('' until measured); announces the estimate once."""
        p = self.planner
        if not p.total or not p.steps:
            return ""
        left = p.remaining_s(global_step)
        if not self.done and p.measured and p.budget.elapsed() >= FIRST_AFTER_S:
            self.done = True
            p.budget.record_eta("after the first steps", left)
            if self.announce:
                self._announce(global_step, left, "")
        if self.first_eval_at is not None and not self.after_eval and (
                p.steps - self.first_eval_at >= min(FIRST_AFTER_STEPS, max(1, p.total - self.first_eval_step))):
            self._after_first_eval(global_step, left)
        if not self.quarter_said and p.measured and global_step < p.total and p.evals_left(p.start_step) == 1 and (
                p.steps >= max(FIRST_AFTER_STEPS, math.ceil(QUARTER * (p.total - p.start_step)))):
            self.quarter_said = True  # its one evaluation ends the fit: the estimate a quarter of the way in
            p.budget.record_eta(f"after {QUARTER:.0%} of the steps (one evaluation, at the end)", left)
            if self.announce and left >= FIRST_AFTER_S:
                self._announce(global_step, left, f"after {QUARTER:.0%} of the steps: ")
        return format_seconds(left)

    def evaluated(self, global_step: int) -> None:
        """After an evaluation: the first one's measured cost makes the estimate firm. It is said once, when
        the steps after it are measured too (the first epoch's steps may have filled caches or warmed up)."""
        p = self.planner
        if self.first_eval_at is not None or not p.total or global_step >= p.total:
            return
        self.first_eval_at, self.first_eval_step = p.steps, global_step

    def _after_first_eval(self, global_step: int, left: float) -> None:
        self.after_eval = True
        self.planner.budget.record_eta("after the first evaluation", left)
        if self.announce and left >= FIRST_AFTER_S:
            self._announce(global_step, left, "after the first evaluation: ")

    def _announce(self, global_step: int, left: float, when: str) -> None:
        from medmm.runlog import echo

        p = self.planner
        end = p.expected_total(global_step)
        steps, evals = max(0, end - global_step), p.evals_left(global_step, end)
        limit = f" of the {format_seconds(p.budget.limit_s)} time limit" if p.budget.limit_s else ""
        stop = (f" (early stopping expected near step {end} of {p.total}; at most "
                f"{format_seconds(p.train_left_s(global_step) + p.later_s(global_step, p.total) + p.finish_s())})" if end < p.total else "")
        n_later = len(p.budget.later)
        later = (f", then {n_later} more fit{'s' if n_later > 1 else ''} of this run about "
                 f"{format_seconds(p.later_s(global_step))}" if n_later else "")
        msg = (f"medmm: {when}about {format_seconds(left)} left{limit}: {steps} optimizer steps at "
               f"{p.step_s():.2f} s/step, {evals} evaluations at {p.one_eval_s():.1f} s{later}, then test, baseline, "
               f"bootstrap and report about {format_seconds(p.finish_s())}{stop}")
        if not when:
            msg += speed_hint(self.device_type, left, self.hints)
        echo(msg)


def speed_hint(device_type: str, left: float, hints: Sequence[str]) -> str:
    """The faster options after a long estimate on a CPU ('' otherwise): the task's own, measured for
    it (:meth:`medmm.task.Task.speed_hints`), one line each."""
    if device_type == "cpu" and left > LONG_S and hints:
        return "\n  faster on this CPU:" + "".join(f"\n  - {h}" for h in hints)
    return ""
