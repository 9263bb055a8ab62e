"""``model.backbone=auto`` for tabular-risk: train ``linear`` and ``mlp`` on the same split, keep the
simpler one unless the MLP's validation metric is better beyond the noise of the val split (#14).

Both candidates go through the same :class:`~medmm.engine.Trainer` (same seed, split, recipe,
early stopping) into a scratch folder inside the run; the winner is written into the run's config
(``medmm predict`` rebuilds it) and its finished training (checkpoints, metrics) is moved into the
run, so the engine resumes that finished training instead of training the winner a third time (#30). The MLP wins only when the paired bootstrap
95% CI of (mlp - linear) on val excludes 0: picking the raw val winner measured worse than either
backbone alone on breast cancer / diabetes (bench/accuracy.py --quick), the val splits being small.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CANDIDATES", "AutoChoice", "choose_backbone"]

CANDIDATES = ("linear", "mlp")  # simpler first: it wins unless the MLP is better beyond the val noise
FALLBACK = "mlp"  # the former default, when no choice can be made (no val split, DP, torchrun)
BOOT = 500  # paired bootstrap resamples of the val difference (at least)
log = logging.getLogger("medmm")


@dataclass
class AutoChoice:
    """The outcome: ``winner``, the monitored val metric per candidate and a one-line reason."""

    winner: str
    monitor: str
    mode: str
    values: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    diff_ci: tuple[float, float] | None = None  # mlp - linear on val, paired bootstrap (when mlp scored better)
    note: str = ""  # why no choice was made
    kept: bool = False  # the winner's training was moved into the run directory (not trained again)
    skipped: str = ""  # a candidate not trained, and why (engine.time_limit)

    @property
    def margin(self) -> float:
        """How much better the winner is than the other candidate (in the metric's units, >= 0)."""
        other = [v for k, v in self.values.items() if k != self.winner]
        if not other or not all(math.isfinite(v) for v in self.values.values()):
            return math.nan
        return abs(self.values[self.winner] - other[0])

    def reason(self) -> str:
        if not self.values:
            return f"{self.winner}, not chosen by validation ({self.note})"
        figs = " vs ".join(f"{k} {v:.4f}" for k, v in self.values.items())
        ci = (f"; mlp - linear 95% CI {self.diff_ci[0]:+.4f} to {self.diff_ci[1]:+.4f}, paired"
              + ("" if self.winner == "mlp" else ": within the val noise, so the simpler model")
              if self.diff_ci else "")
        kept = "; its trained weights are kept, not trained again" if self.kept else ""
        if self.skipped:
            return f"{self.winner}, val {self.monitor} {figs}; {self.skipped}; trained in {self.seconds:.1f} s{kept}"
        return (f"{self.winner} won on val {self.monitor} ({figs}; by {self.margin:.4f}{ci}; "
                f"both trained in {self.seconds:.1f} s{kept})")

    def markdown(self) -> str:
        rows = "\n".join(f"| {k} | {v:.4f} | {'chosen' if k == self.winner else ''} |" for k, v in self.values.items())
        return (f"## Backbone chosen by validation (model.backbone=auto)\n\n| backbone | val {self.monitor} | |\n"
                f"|---|---|---|\n{rows}\n\n{self.reason()}. The MLP is kept only when it is better than linear beyond the val noise (paired bootstrap).")

    def html(self) -> str:
        import html

        rows = "".join(f"<tr><td>{k}</td><td>{v:.4f}</td><td>{'chosen' if k == self.winner else ''}</td></tr>"
                       for k, v in self.values.items())
        return (f"<table><tr><th>backbone</th><th>val {html.escape(self.monitor)}</th><th></th></tr>{rows}</table>"
                f'\n<p class="note">{html.escape(self.reason())}. The MLP is kept only when it is better than linear beyond the val '
                f'noise (paired bootstrap).</p>')


def _recipe(cfg: Any, name: str) -> dict[str, Any]:
    """Set the candidate's recipe (:mod:`medmm.recipes`) where the user set nothing; the old values."""
    from medmm import get_key, get_registry, has_key, set_key

    old: dict[str, Any] = {}
    for key, value in dict(get_registry().get("backbone", name).extra.get("recipe", {})).items():
        if key in getattr(cfg, "user", set()) or not has_key(cfg, key):
            continue
        old[key] = get_key(cfg, key)
        set_key(cfg, key, value)
    return old


def _better(a: float, b: float, mode: str) -> bool:
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if mode == "max" else a < b


def _keep_training(scratch: Path, run_dir: Path) -> bool:
    """Move a candidate's finished training (``checkpoints/``, ``metrics.jsonl`` / ``.csv``) into the run."""
    if not (scratch / "checkpoints" / "last").exists() or (run_dir / "checkpoints").exists():
        return False  # nothing finished to keep, or the run already has checkpoints of its own: never overwrite
    for name in ("checkpoints", "metrics.jsonl", "metrics.csv"):
        if (scratch / name).exists():
            os.replace(scratch / name, run_dir / name)  # same file system: a rename
    return True


def choose_backbone(task: Any, bundle: Any) -> AutoChoice | None:
    """When ``model.backbone`` is ``auto``: train every candidate, set the winner in ``task.cfg``, and
    move the winner's finished training into ``task.run_dir`` (``AutoChoice.kept``).

    Returns ``None`` when the backbone was not ``auto`` (a user's explicit choice is kept).
    """
    from medmm import load_weights, paired_diff_ci, set_key, Trainer

    cfg = task.cfg
    if cfg.model.backbone != "auto":
        return None
    why = ("engine.privacy is on: the privacy budget covers one training" if cfg.engine.privacy.enabled
           else "under torchrun the choice would run on every rank"
           if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("RANK", "0")) != 0
           else "no validation split to choose on" if bundle.val is None or not len(bundle.val.dataset) else None)
    if why is not None:  # no choice possible: the former default, trained once
        set_key(cfg, "model.backbone", FALLBACK)
        for key in _recipe(cfg, FALLBACK):
            cfg.provenance[key] = f"recipe of backbone {FALLBACK}"
        return AutoChoice(FALLBACK, "", "max", note=why)
    start, values, monitor, mode = time.perf_counter(), {}, "", "max"
    evals: dict[str, Any] = {}
    run_dir = Path(task.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    scratch = {name: Path(tempfile.mkdtemp(prefix=f".auto-{name}-", dir=run_dir)) for name in CANDIDATES}
    planned = cfg.engine.max_steps  # a candidate's plan for engine.time_limit is its own
    steps: dict[str, int] = {}
    skipped = ""
    try:
        costs = _step_costs(task, cfg, bundle, scratch[CANDIDATES[0]])
        previous: Any = None
        for i, name in enumerate(CANDIDATES):
            if previous is not None and previous.planner is not None:
                fit_n = previous.planner.steps_that_fit(costs[i] - costs[i - 1])
                if fit_n is not None and fit_n < previous.planner.useful:  # not even one epoch of it fits
                    skipped = (f"{name} not trained: the time limit left fits {fit_n} of its steps "
                               f"(at least {previous.planner.useful} needed)")
                    previous.planner.budget.notes.append(f"model.backbone=auto: {skipped}")
                    log.warning("model.backbone=auto: %s", skipped)
                    break
            set_key(cfg, "model.backbone", name)
            set_key(cfg, "engine.max_steps", planned)
            old = _recipe(cfg, name)  # each candidate with its own recipe, as an explicit choice would get
            log.info("model.backbone=auto: training candidate %s on the run's split (scratch folder; the epoch "
                     "lines below are its)", name)
            trainer, model = Trainer(task, cfg, scratch[name], quiet=True), task.build_model()
            trainer.later_step_s = [c - costs[i] for c in costs[i + 1:]]  # the run's ETA and plan see the next ones
            fit = trainer.fit(model, bundle)
            steps[name], previous = cfg.engine.max_steps, trainer
            if (scratch[name] / "checkpoints" / "best").exists():
                load_weights(scratch[name] / "checkpoints" / "best", model)
            evals[name] = trainer.evaluate(model, bundle.val, bundle.collate_fn)
            monitor, mode = fit.monitor, fit.mode
            best = fit.state.best_value
            values[name] = float(best) if best is not None else math.nan
            log.info("model.backbone=auto: %s reached val %s %.4f", name, monitor, values[name])
            for key, value in old.items():
                set_key(cfg, key, value)
        winner, ci = CANDIDATES[0], None
        simple, rich = CANDIDATES
        if rich in values and _better(values[rich], values[simple], mode):
            try:
                ci = paired_diff_ci(task.problem, monitor, evals[rich], evals[simple],
                                    max(cfg.engine.bootstrap, BOOT), cfg.seed)
            except ValueError:  # a monitor the bootstrap does not know (e.g. loss): the raw comparison decides
                ci = None
            if ci is None or (ci[0] > 0 if mode == "max" else ci[1] < 0):  # better beyond the val noise
                winner = rich
        set_key(cfg, "model.backbone", winner)
        set_key(cfg, "engine.max_steps", steps[winner])  # the winner's plan (its finished training is resumed)
        if steps[winner] != planned:
            cfg.provenance["engine.max_steps"] = f"planned to fit engine.time_limit ({steps[winner]} steps)"
        for key in _recipe(cfg, winner):
            cfg.provenance[key] = f"recipe of backbone {winner}"
        kept = _keep_training(scratch[winner], run_dir)
    finally:
        for folder in scratch.values():
            shutil.rmtree(folder, ignore_errors=True)
    if kept:
        log.info("model.backbone=auto: keeping %s's trained weights (the run resumes its finished training)", winner)
    return AutoChoice(winner, monitor, mode, values, time.perf_counter() - start, ci, kept=kept, skipped=skipped)


def _step_costs(task: Any, cfg: Any, bundle: Any, scratch: Path) -> list[float]:
    """Each candidate's seconds per training step, probed on one real batch before any is trained: the
    run's ETA and ``engine.time_limit`` plan weigh the candidates still to come with them."""
    from medmm import set_key, Trainer

    models = []
    for name in CANDIDATES:
        set_key(cfg, "model.backbone", name)
        models.append(task.build_model())
    costs = Trainer(task, cfg, scratch, quiet=True).probe_step_s(models, bundle)
    log.info("model.backbone=auto: a training step probed at %s", ", ".join(
        f"{name} {1000 * c:.1f} ms" for name, c in zip(CANDIDATES, costs)))
    return costs
