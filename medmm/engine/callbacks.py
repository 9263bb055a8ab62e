"""Engine callbacks: a small ``on_*`` protocol, and the built-in metric loggers.

Plugins register callback factories with the ``register_callbacks`` hook
(``Component(name, factory)``); the factory receives ``(cfg, run_dir)`` and returns an object
with any of the methods below. Callbacks run on rank 0 only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Callback(Protocol):
    """Every method is optional; missing ones are skipped."""

    def on_train_start(self, trainer: Any) -> None: ...
    def on_epoch_end(self, trainer: Any, epoch: int) -> None: ...
    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Any, path: Path, kind: str) -> None: ...
    def on_train_end(self, trainer: Any, result: Any) -> None: ...  # after fit, with its FitResult


def call(callbacks: list[Any], event: str, *args: Any) -> None:
    """Invoke ``event`` on every callback that defines it."""
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Appends one line per evaluation to ``metrics.jsonl`` and ``metrics.csv``."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """On resume: drop records logged after the checkpoint's step; return the rest."""
        rows = read_jsonl(self.jsonl)
        kept = [r for r in rows if r.get("step", 0) <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._rewrite_csv(kept)
        return kept

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._rewrite_csv(read_jsonl(self.jsonl))

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        write_metrics_csv(self.csv, rows)


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv``: the records of ``metrics.jsonl`` as one table (columns in first-seen order), atomically."""
    import io

    from medmm.io import write_text_atomic

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


class TensorBoardLogger:
    """Scalars to ``RUN_DIR/tensorboard`` when the ``tensorboard`` package is installed."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def on_evaluate(self, trainer: Any, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in {"epoch", "step"}:
                self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
        self.writer.flush()

    def on_train_end(self, trainer: Any, result: Any) -> None:
        self.writer.close()


def tensorboard_logger(run_dir: Path) -> TensorBoardLogger | None:
    """A TensorBoard logger, or None (with a note) when tensorboard is missing."""
    try:
        return TensorBoardLogger(run_dir)
    except ImportError:
        log.warning("engine.tensorboard=true but tensorboard is not installed; skipping it")
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (empty if missing); a torn last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
