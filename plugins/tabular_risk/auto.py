"""``model.backbone=auto`` for tabular-risk: train ``linear`` and ``mlp`` on the same split, keep the
one with the better validation metric (#14).

Both candidates go through the same :class:`~medmm.engine.Trainer` (same seed, split, recipe,
early stopping) into a scratch folder; the winner is written into the run's config, so the
run trains it for real and ``medmm predict`` rebuilds it. Ties go to ``linear`` (the simpler model).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmm.errors import ConfigError

__all__ = ["CANDIDATES", "AutoChoice", "choose_backbone"]

CANDIDATES = ("linear", "mlp")  # first = the tie winner
log = logging.getLogger("medmm")


@dataclass
class AutoChoice:
    """The outcome: ``winner``, the monitored val metric per candidate and a one-line reason."""

    winner: str
    monitor: str
    mode: str
    values: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def margin(self) -> float:
        """How much better the winner is than the other candidate (in the metric's units, >= 0)."""
        other = [v for k, v in self.values.items() if k != self.winner]
        if not other or not all(math.isfinite(v) for v in self.values.values()):
            return math.nan
        return abs(self.values[self.winner] - other[0])

    def reason(self) -> str:
        if not self.values:
            return f"{self.winner} (no validation split to choose on)"
        figs = " vs ".join(f"{k} {v:.4f}" for k, v in self.values.items())
        return (f"{self.winner} won on val {self.monitor} ({figs}; by {self.margin:.4f}; "
                f"both trained in {self.seconds:.1f} s)")

    def markdown(self) -> str:
        rows = "\n".join(f"| {k} | {v:.4f} | {'chosen' if k == self.winner else ''} |" for k, v in self.values.items())
        return (f"## Backbone chosen by validation (model.backbone=auto)\n\n| backbone | val {self.monitor} | |\n"
                f"|---|---|---|\n{rows}\n\n{self.reason()}. Ties go to linear.")

    def html(self) -> str:
        import html

        rows = "".join(f"<tr><td>{k}</td><td>{v:.4f}</td><td>{'chosen' if k == self.winner else ''}</td></tr>"
                       for k, v in self.values.items())
        return (f"<table><tr><th>backbone</th><th>val {html.escape(self.monitor)}</th><th></th></tr>{rows}</table>"
                f'\n<p class="note">{html.escape(self.reason())}. Ties go to linear.</p>')


def _recipe(cfg: Any, name: str) -> dict[str, Any]:
    """Set the candidate's recipe (:mod:`medmm.recipes`) where the user set nothing; the old values."""
    from medmm.plugins import get_registry
    from medmm.recipes import _get, _has, _set_checked

    old: dict[str, Any] = {}
    for key, value in dict(get_registry().get("backbone", name).extra.get("recipe", {})).items():
        if key in getattr(cfg, "user", set()) or not _has(cfg, key):
            continue
        old[key] = _get(cfg, key)
        _set_checked(cfg, key, value, {})
    return old


def _better(a: float, b: float, mode: str) -> bool:
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if mode == "max" else a < b


def choose_backbone(task: Any, bundle: Any) -> AutoChoice | None:
    """When ``model.backbone`` is ``auto``: train every candidate, set the winner in ``task.cfg``.

    Returns ``None`` when the backbone was not ``auto`` (a user's explicit choice is kept).
    """
    from medmm.config import set_key
    from medmm.engine import Trainer

    cfg = task.cfg
    if cfg.model.backbone != "auto":
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("model.backbone=auto trains both tabular backbones on one process; "
                          "set model.backbone=linear or mlp under torchrun")
    if bundle.val is None or not len(bundle.val.dataset):
        set_key(cfg, "model.backbone", CANDIDATES[0])
        for key in _recipe(cfg, CANDIDATES[0]):
            cfg.provenance[key] = f"recipe of backbone {CANDIDATES[0]}"
        return AutoChoice(CANDIDATES[0], "", "max")
    start, values, monitor, mode = time.perf_counter(), {}, "", "max"
    for name in CANDIDATES:
        set_key(cfg, "model.backbone", name)
        old = _recipe(cfg, name)  # each candidate with its own recipe, as an explicit choice would get
        log.info("model.backbone=auto: training candidate %s on the run's split (scratch folder; the epoch lines "
                 "below are its)", name)
        with tempfile.TemporaryDirectory(prefix="medmm-auto-") as tmp:
            fit = Trainer(task, cfg, Path(tmp), quiet=True).fit(task.build_model(), bundle)
        monitor, mode = fit.monitor, fit.mode
        best = fit.state.best_value
        values[name] = float(best) if best is not None else math.nan
        log.info("model.backbone=auto: %s reached val %s %.4f", name, monitor, values[name])
        for key, value in old.items():
            set_key(cfg, key, value)
    winner = CANDIDATES[0]
    for name in CANDIDATES[1:]:
        if _better(values[name], values[winner], mode):
            winner = name
    set_key(cfg, "model.backbone", winner)
    for key in _recipe(cfg, winner):
        cfg.provenance[key] = f"recipe of backbone {winner}"
    return AutoChoice(winner, monitor, mode, values, time.perf_counter() - start)
