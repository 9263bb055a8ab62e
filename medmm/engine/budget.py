"""The run's clock: a wall-clock budget (``engine.time_limit`` / ``--time-limit``), the plan that fits
it, and the estimate of the time left that the ETA prints.

The rule (docs/reliability.md, "Time budget"):

- The budget counts from the start of the command (a demo's data building included) and covers
  everything the run does after training too: the test evaluation, the validation pass of the
  operating point, the bootstrap CIs, the classic baseline and the report (the *finish*).
- Seconds per step are measured on the latest epoch: the steps since the latest evaluation that has
  :data:`FIRST_AFTER_STEPS` steps after it (else since the one before, ...), never the first step,
  so a first epoch that fills caches or warms up does not count once later steps are measured.
- After the first :data:`FIRST_AFTER_STEPS` optimizer steps the plan is made once, from the
  measured seconds per step, the cost of an evaluation (measured at the first one; before, the
  one validation batch timed before the steps) and the finish: the passes at the measured
  evaluation speed, the bootstrap at its timed resample, the report's figures at one probe figure
  timed before the steps, and the classic baseline fitted before training (spent, not estimated);
  only what a run could not measure falls back to quiet-machine constants scaled by sqrt(load per core).
  When the configured steps do not fit, ``engine.max_steps`` is lowered to what fits (the learning
  rate schedule then ends there) and the run says so. When fewer than :data:`USEFUL_FRACTION` of
  the configured steps (and less than one epoch) fit and the task declares a cheaper recipe
  (:attr:`medmm.task.TaskSpec.cheaper_recipe`) the user has not overridden, the run restarts on that
  recipe (:class:`SwitchRecipe`) and says so.
- At every step boundary: when the next step plus the finish would pass the limit, training
  stops there with a ``last`` checkpoint; the best checkpoint, the report and every output are
  written, and ``run.json`` says ``stopped: time limit``. ``--resume`` continues exactly (a larger
  ``--time-limit`` lets it run on).

Every clock read goes through ``Budget.clock`` so tests drive the planner with a fake clock.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "Planner", "Sizes", "SwitchRecipe", "activate", "boot_passes_for", "current", "evals_between",
           "process_started"]

FIRST_AFTER_STEPS = 5  # optimizer steps measured before the plan is made
USEFUL_FRACTION = 0.25  # fewer steps than this share of the configured ones (and < 1 epoch): the cheaper recipe
MARGIN = 0.05  # share of the limit kept free for the noise of the estimate
MIN_MARGIN_S = 1.0
FORWARD_SHARE = 0.35  # an evaluated example costs about this share of a trained one (forward only, larger batches)
# The finish, estimated from sizes (calibrated on the four demos, see docs/reliability.md):
# fixed costs on a quiet CPU, scaled by sqrt(load per core) when the machine is busier (Budget.load_factor)
REPORT_S = 1.5  # report.html figures, model card, predictions (1.0-2.0 s at load 2.5-3 per core, 5.5-9.4 s at 8-11)
BASELINE_S = 0.3  # classic baseline, fixed part ...
BASELINE_S_PER_EXAMPLE = 0.0005  # ... and per training example (0.06-1.2 s measured on the demos at load 2.5-3 per core)
BOOT_PASSES = 3.0  # bootstrap passes over the test metrics (CIs, operating point, decision curves, subgroups)
BOOT_S_GUESS = 0.002  # seconds per bootstrap resample of every metric, before it is timed


class SwitchRecipe(Exception):
    """Fine-tuning cannot reach a useful number of steps in the budget: restart on ``overrides``."""

    def __init__(self, overrides: Mapping[str, Any], reason: str) -> None:
        self.overrides, self.reason = dict(overrides), reason
        super().__init__(reason)


@dataclass
class Budget:
    """One run's limit and start (``clock`` seconds), the cheaper recipe it may switch to, and its record.

    ``limit_s=None``: no limit; the budget still keeps the ETA record for the run's summary.
    """

    limit_s: float | None = None
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None
    cheaper: dict[str, Any] | None = None  # config overrides (dotted keys) of the task's cheaper recipe
    notes: list[str] = field(default_factory=list)  # what the budget did, in words (run.json, summary)
    stopped: str | None = None  # "time limit" once training was stopped at the limit
    etas: list[dict[str, float | str]] = field(default_factory=list)  # estimates printed: when, how much left
    load: Callable[[], float] | None = None  # runnable processes per core (default: the 1-minute load average)
    # the fits this run trains after the current one (a task's own, e.g. model.backbone=auto's next candidate):
    # how many seconds more (or less) each one's step takes than the current fit's, from a probe of both
    # models on one batch (Trainer.probe_step_s): the loop's own cost per step (data, optimizer) is shared
    later: list[float] = field(default_factory=list)
    # the finish measured in this run where it can be (docs/reliability.md, "Honest ETAs"):
    figures: int = 0  # figures the finish draws (report.html, decision curves); 0: unknown (REPORT_S reserved)
    figure_s: float | None = None  # seconds per figure: one probe figure timed before the first fit's steps
    baseline_done: bool = False  # the classic baseline was fitted before training: its fit is spent, not estimated

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def load_factor(self) -> float:
        """How much slower than on a quiet machine the fixed finish costs run: sqrt(load per core), >= 1."""
        if self.load is not None:
            per_core = self.load()
        else:
            try:
                per_core = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
            except OSError:  # no load average on this platform
                per_core = 1.0
        return math.sqrt(max(1.0, per_core))

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.clock() - float(self.started)  # type: ignore[arg-type]

    def left(self) -> float:
        """Seconds left in the budget (``inf`` without a limit)."""
        return math.inf if self.limit_s is None else self.limit_s - self.elapsed()

    def margin(self) -> float:
        """Seconds kept free for the noise of the estimate."""
        return 0.0 if self.limit_s is None else max(MIN_MARGIN_S, MARGIN * self.limit_s)

    def record_eta(self, label: str, left_s: float) -> None:
        """Keep an estimate (``label``: when it was made) to compare with the real remaining time."""
        self.etas.append({"label": label, "at_s": round(self.elapsed(), 3), "predicted_s": round(left_s, 3)})

    def eta_check(self) -> list[dict[str, float | str]]:
        """Each recorded estimate with the real time it had left (call at the very end of the run)."""
        now = self.elapsed()
        return [{**e, "actual_s": round(now - float(e["at_s"]), 3)} for e in self.etas]


def process_started(clock: Callable[[], float] = time.perf_counter, most_s: float = 300.0) -> float:
    """``clock()``'s value when this process started (Linux ``/proc``: the command's imports count against
    its budget); now where unknown, or when the process is older than ``most_s`` (not a fresh command:
    a notebook, a test runner calling the CLI in-process)."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return clock()
    return clock() - age if 0.0 <= age <= most_s else clock()


_active: list[Budget] = []


@contextmanager
def activate(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the one every :class:`~medmm.engine.Trainer` of this run uses (also a task's own fits)."""
    _active.append(budget)
    try:
        yield budget
    finally:
        _active.remove(budget)


def current() -> Budget | None:
    """The active run's budget, if any."""
    return _active[-1] if _active else None


@dataclass
class Sizes:
    """What the finish costs depend on."""

    n_train: int
    n_val: int
    n_test: int
    n_boot: int
    batch_size: int
    val_pass: bool = True  # the finish evaluates val again (operating point / conformal calibration)
    baseline: bool = True
    boot_passes: float = BOOT_PASSES  # bootstrap passes over the test metrics (boot_passes_for the problem)

    @classmethod
    def of(cls, data: Any, engine: Any) -> Sizes:
        """From a :class:`~medmm.task.DataBundle` and the engine config."""
        def n(split: Any) -> int:
            return len(split.dataset) if split is not None else 0

        return cls(n(data.train), n(data.val), n(data.test), int(engine.bootstrap),
                   int(engine.batch_size) * int(engine.grad_accum), baseline=engine.baseline != "none")


def boot_passes_for(problem: str, n_boot: int) -> float:
    """Bootstrap passes over the test metrics that the finish makes for ``problem``: the CIs; for
    classification the operating point's statistics; for binary and multilabel the decision curves (at
    most 200 resamples). The classic baseline's pass is counted apart (:meth:`Planner.finish_s`)."""
    if problem in ("binary", "multilabel"):
        return 2.0 + min(1.0, 200 / max(1, n_boot))
    return 2.0 if problem == "multiclass" else 1.0


def evals_between(done: int, total: int, steps_per_epoch: int, eval_every: int) -> int:
    """Evaluations at steps ``done+1 .. total``: every ``eval_every`` steps, each epoch end, and the last step."""
    if total <= done:
        return 0

    def count(k: int) -> int:
        return 0 if k <= 0 else total // k - done // k

    n = count(steps_per_epoch)
    if eval_every:
        n += count(eval_every) - count(math.lcm(eval_every, steps_per_epoch))
    last_counted = (steps_per_epoch and total % steps_per_epoch == 0) or (eval_every and total % eval_every == 0)
    return n + (0 if last_counted else 1)


class Planner:
    """One fit's measurements and plan: seconds per step and per evaluation, the finish, the stop."""

    def __init__(self, budget: Budget | None, *, total: int, steps_per_epoch: int, eval_every: int, sizes: Sizes,
                 start_step: int = 0, useful: int | None = None, patience: int = 0, work_per_step: float = 1.0,
                 warmup: int = 0) -> None:
        self.budget = budget or Budget()
        self.warmup = warmup  # learning-rate warm-up steps (the best is not expected before twice as many)
        # what a step's time is proportional to, on average over an epoch (text: the real tokens of its batch,
        # whose lengths differ from batch to batch; 1.0: every step alike); step() is told each step's own
        self.work_per_step = work_per_step if work_per_step > 0 else 1.0
        self.total, self.spe, self.eval_every, self.sizes = total, max(1, steps_per_epoch), eval_every, sizes
        self.start_step = start_step
        self.useful = useful if useful is not None else min(self.spe, max(1, math.ceil(USEFUL_FRACTION * total)))
        self.t_first: float | None = None  # clock after the first step (its time holds one-off warm-up work)
        self.steps = 0
        self.eval_s: list[float] = []
        self.eval_in_steps = 0.0  # evaluation seconds between the first and the last step (not step time)
        self.pending_eval = 0.0  # evaluation seconds since the last step
        self.boot_s: float | None = None  # seconds per bootstrap resample of the metrics (timed at the first evaluation)
        self.val_example_s: float | None = None  # seconds per validation example: one batch timed before the steps
        self.planned = False
        self.last_step_at: float | None = None
        self.patience = patience if sizes.n_val else 0  # early stopping (evaluations without improvement)
        self.bad_evals = 0  # evaluations since the best one
        self.hist: list[tuple[float, float, float]] = []  # after each step: (clock, evaluation seconds inside the
        # steps so far, work so far)
        self.eval_at: list[int] = []  # steps done at each evaluation (the windows the rate is measured on)

    # ------------------------------------------------------------------ measurements
    def step(self, work: float | None = None) -> None:
        """One optimizer step ended now; ``work``: its share of the work (e.g. its tokens; default: the mean)."""
        now = self.budget.clock()
        if self.steps:  # evaluations since the last step are not step time
            self.eval_in_steps += self.pending_eval
        self.pending_eval = 0.0
        self.steps += 1
        if self.steps == 1:
            self.t_first = now
            self.t_first_cost = now - (self.last_step_at if self.last_step_at is not None else now)
        self.last_step_at = now
        done = self.hist[-1][2] if self.hist else 0.0
        self.hist.append((now, self.eval_in_steps, done + (self.work_per_step if work is None else work)))

    def started(self) -> None:
        """The step loop starts now (the first step's time is measured from here)."""
        self.last_step_at = self.budget.clock()

    def evaluated(self, seconds: float, boot_seconds: float | None = None, bad_evals: int = 0) -> None:
        """An evaluation (validation pass, metrics, best checkpoint) took ``seconds``; ``boot_seconds``: one
        bootstrap resample of the metrics, when timed; ``bad_evals``: evaluations since the best one."""
        self.bad_evals = bad_evals
        self.eval_at.append(self.steps)
        self.eval_s.append(seconds)
        self.pending_eval += seconds
        if boot_seconds is not None:
            self.boot_s = boot_seconds

    @property
    def measured(self) -> bool:
        """Enough steps to estimate from."""
        return self.steps >= min(FIRST_AFTER_STEPS, max(1, self.total - self.start_step))

    def window_start(self) -> int:
        """The step the rate is measured from: the latest evaluation with :data:`FIRST_AFTER_STEPS` steps
        after it (the latest epoch), else the first step (its warm-up excluded)."""
        for mark in reversed(self.eval_at):
            if mark >= 1 and self.steps - mark >= FIRST_AFTER_STEPS:
                return mark
        return 1

    def step_s(self) -> float:
        """Seconds per optimizer step on the latest epoch (:meth:`window_start`), evaluations excluded: the
        seconds per unit of work measured there times a step's mean work (steps of short batches measured
        early do not make the whole epoch look short)."""
        if self.steps >= 2 and len(self.hist) == self.steps:
            a = self.window_start()
            (ta, ea, wa), (tb, eb, wb) = self.hist[a - 1], self.hist[-1]
            if wb <= wa:
                return 0.0
            return max(0.0, tb - ta - (eb - ea)) / (wb - wa) * self.work_per_step
        return max(0.0, getattr(self, "t_first_cost", 0.0))

    def one_eval_s(self) -> float:
        """Seconds per evaluation: measured (the latest); before, a validation batch timed before the steps
        (:attr:`val_example_s`) for each validation example; else the forward share of the steps' work."""
        if self.eval_s:
            return self.eval_s[-1]
        if self.val_example_s is not None:
            return self.val_example_s * self.sizes.n_val
        per_example = self.step_s() / max(1, self.sizes.batch_size)
        return FORWARD_SHARE * per_example * self.sizes.n_val

    def finish_s(self) -> float:
        """The work after training: test (and val) pass, bootstrap, baseline, report.

        Measured in this run where it can be: the passes at the evaluation's speed, the bootstrap at its
        timed resample, the report's figures at the probe figure's time (:attr:`Budget.figure_s`), a
        baseline fitted before training (:attr:`Budget.baseline_done`) only for its predictions and CIs
        (one bootstrap pass); only what was not measured falls back to the quiet-machine constants scaled
        by :meth:`Budget.load_factor`."""
        s, b = self.sizes, self.budget
        per_val_example = (self.one_eval_s() / s.n_val) if s.n_val else FORWARD_SHARE * self.step_s() / max(1, s.batch_size)
        passes = per_val_example * (s.n_test + (s.n_val if s.val_pass else 0))
        per_resample = self.boot_s if self.boot_s is not None else BOOT_S_GUESS
        one_pass = s.n_boot * per_resample * (s.n_test / s.n_val if s.n_val else 1.0)
        guessed = 0.0  # seconds at quiet-machine constants, scaled by the load below
        if b.figures and b.figure_s is not None:
            report = b.figures * b.figure_s
        else:
            report, guessed = 0.0, REPORT_S
        base = 0.0
        if s.baseline and b.baseline_done:
            base = one_pass  # its test predictions, its CIs and the paired difference (one metric each)
        elif s.baseline:
            guessed += BASELINE_S + BASELINE_S_PER_EXAMPLE * s.n_train
        return passes + s.boot_passes * one_pass + base + report + guessed * (b.load_factor() if guessed else 1.0)

    def train_left_s(self, done: int, total: int | None = None) -> float:
        """Training steps and evaluations from step ``done`` to ``total``."""
        total = self.total if total is None else total
        return (max(0, total - done) * self.step_s()
                + evals_between(done, total, self.spe, self.eval_every) * self.one_eval_s())

    def evals_left(self, done: int, end: int | None = None) -> int:
        """Evaluations after step ``done`` up to ``end`` (default: the plan's total)."""
        return evals_between(done, self.total if end is None else end, self.spe, self.eval_every)

    def expected_total(self, done: int) -> int:
        """The step early stopping is expected to end the run at (``total`` without it).

        The best evaluation so far came after ``k - bad`` of ``k`` evaluations; the run is expected to keep
        improving for as long again (and at least until twice the learning-rate warm-up: a run still
        improving while its rate warms up has barely started), then stop ``patience`` evaluations after its
        last best.
        """
        full = evals_between(done, self.total, self.spe, self.eval_every)
        if not self.patience or not full:
            return self.total
        k = len(self.eval_s)
        best_at = k - self.bad_evals
        every = min(self.spe, self.eval_every) if self.eval_every else self.spe
        best = max(2 * best_at, math.ceil(2 * self.warmup / every))  # the evaluation the best is expected at
        left = max(1, best + self.patience - k) if k else max(best, 1) + self.patience
        if left >= full:
            return self.total
        return min(self.total, done + left * every - done % every)

    def later_step_s(self, extra: float) -> float:
        """Seconds per step of a later fit whose probed step takes ``extra`` seconds more than this one's:
        this fit's measured step plus the difference (at least a tenth of it)."""
        return max(0.1 * self.step_s(), self.step_s() + extra)

    def later_eval_s(self, extra: float) -> float:
        """Seconds per evaluation of such a later fit: this fit's evaluation plus the forward share of the
        extra step cost for each validation batch."""
        batches = self.sizes.n_val / max(1, self.sizes.batch_size)
        return max(0.1 * self.one_eval_s(), self.one_eval_s() + FORWARD_SHARE * extra * batches)

    def later_s(self, done: int, total: int | None = None) -> float:
        """The fits the run trains after this one (:attr:`Budget.later`), each on the same data and schedule,
        expected to end where this one is (``total``, default: :meth:`expected_total`)."""
        end = self.expected_total(done) if total is None else total
        evals = evals_between(0, end, self.spe, self.eval_every)
        return sum(end * self.later_step_s(x) + evals * self.later_eval_s(x) for x in self.budget.later)

    def remaining_s(self, done: int) -> float:
        """The estimate of the time the run has left: training and evaluations until early stopping is
        expected to end it (:meth:`expected_total`), the fits the run trains after this one, and the finish."""
        return self.train_left_s(done, self.expected_total(done)) + self.later_s(done) + self.finish_s()

    def steps_that_fit(self, extra: float = 0.0) -> int | None:
        """How many steps (with their evaluations) of a fit started now, whose probed step takes ``extra``
        seconds more than this one's, fit in the time left after the finish and the margin; ``None``: no limit."""
        if self.budget.limit_s is None:
            return None
        avail = self.budget.left() - self.budget.margin() - self.finish_s()
        per_step = self.later_step_s(extra) + self.later_eval_s(extra) / self.spe
        return max(0, int(avail // per_step)) if per_step > 0 else self.total

    # ------------------------------------------------------------------ decisions
    def plan(self, done: int) -> int | None:
        """Once, when measured: the lowered total that fits the budget, or ``None`` (it fits / no limit).

        Raises :class:`SwitchRecipe` when too few steps fit and a cheaper recipe is declared.
        """
        if self.planned or not self.measured or self.budget.limit_s is None:
            return None
        self.planned = True
        avail = self.budget.left() - self.budget.margin() - self.finish_s()
        later = self.later_s(0, self.total)  # the fits after this one, were they trained in full
        if self.train_left_s(done) + later <= avail:
            return None
        kept = 0.0
        if later > 0:  # this fit and the ones after it share what is left in proportion to their full cost
            kept = avail * later / (self.train_left_s(done) + later)
            avail -= kept
        lo, hi = done, self.total  # the largest total whose steps and evaluations fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.train_left_s(done, mid) <= avail:
                lo = mid
            else:
                hi = mid - 1
        fits = max(lo, done + 1)  # at least one more step: a run is never planned to zero
        limit = _fmt(self.budget.limit_s)
        if fits < self.useful and self.budget.cheaper:
            raise SwitchRecipe(self.budget.cheaper, (
                f"the time limit ({limit}) fits only {fits} of {self.total} optimizer steps at "
                f"{self.step_s():.2f} s/step (a useful fine-tuning needs >= {self.useful}): switching to the "
                f"task's cheaper recipe {_overrides(self.budget.cheaper)}"))
        short = "" if fits >= self.useful else " (too few for a useful fine-tuning; no cheaper recipe is declared)"
        shared = f" and {kept:.0f} s for the fits this run trains after this one" if kept > 0 else ""
        note = (f"the time limit ({limit}) fits {fits} of {self.total} optimizer steps at {self.step_s():.2f} s/step "
                f"with {self.finish_s():.0f} s kept for test, baseline, bootstrap and report{shared}: engine.max_steps="
                f"{fits}{short}; a larger --time-limit trains the full run")
        self.budget.notes.append(note)
        self.total = fits
        return fits

    def evaluates_at(self, step: int) -> bool:
        """Whether the loop evaluates after optimizer step ``step``."""
        return step % self.spe == 0 or bool(self.eval_every and step % self.eval_every == 0) or step >= self.total

    def must_stop(self, done: int) -> bool:
        """Stop at this step boundary: the next step (and its evaluation) plus the finish would pass the limit."""
        if self.budget.limit_s is None or not self.steps or done >= self.total:
            return False
        nxt = self.step_s() + (self.one_eval_s() if self.evaluates_at(done + 1) else 0.0)
        return self.budget.left() < nxt + self.finish_s()


def _fmt(seconds: float) -> str:
    from medmm.engine.eta import format_seconds

    return format_seconds(seconds)


def _overrides(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())
