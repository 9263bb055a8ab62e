"""Streaming ``medmm predict`` of a table: one block of rows at a time, appended to the output CSV.

A task that can read its prediction input in blocks offers ``predict_chunks(path, rows)`` (an iterator
of ``(Split, collate)``, blocks in table order; the built-in table task does). Each block is predicted, its rows
of ``predictions.csv`` are written, and only its scores are kept (for the metrics and the summary
line), so the memory of a prediction does not grow with the table beyond a few numbers per row
(the ids are kept only for the training-rows caveat of the run's own data).
The file is byte-identical to the one a single block gives: every row depends on its own unit only
(:func:`medmm.predictions.predictions_table`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Rows per block: about 10 MB of features at 50 columns; small against the libraries' footprint.
#: ``MEDMM_PREDICT_CHUNK_ROWS`` sets another (a smaller one for a tight memory limit).
CHUNK_ROWS = 50_000


def chunk_rows() -> int:
    """Rows per block: ``MEDMM_PREDICT_CHUNK_ROWS`` when set (a positive integer), else :data:`CHUNK_ROWS`."""
    from medmm.errors import ConfigError

    raw = os.environ.get("MEDMM_PREDICT_CHUNK_ROWS", "").strip()
    if not raw:
        return CHUNK_ROWS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError("MEDMM_PREDICT_CHUNK_ROWS must be a positive integer (rows per block)")
    return int(raw)


def stream_predict(task: Any, data: Path, run_dir: Path, trainer: Any, model: Any, out: Path,
                   rows: int | None = None) -> Any:
    """Predict ``data`` block by block into ``out`` (atomically); the pooled scores as an
    :class:`~medmm.engine.trainer.EvalOutput`, or ``None`` when this input does not stream (the task has
    no ``predict_chunks``; ``data`` is a folder or not a CSV / TSV file; or the run's prediction sets
    are grouped by a column, which needs the whole column) and the caller reads it whole.

    Per row only the scores (and targets) are kept; the unit ids only when the table is the run's own
    labelled data (the training-rows caveat counts them), else ``units`` is empty: count ``scores``."""
    from medmm.data.readers import streams
    from medmm.engine.trainer import EvalOutput
    from medmm.evaluation.calibration import apply_stored_calibration
    from medmm.evaluation.conformal import load_conformal
    from medmm.evaluation.overlap import own_data
    from medmm.evaluation.threshold import load_operating_point
    from medmm.io import atomic_write
    from medmm.predictions import predictions_table

    chunks = getattr(task, "predict_chunks", None)
    if chunks is None or not streams(data):  # JSON Lines, Parquet, plugin formats: read whole, one pass
        return None
    conf = load_conformal(run_dir)
    if conf is not None and conf.get("group_column"):
        return None
    op = load_operating_point(run_dir)
    model.to(trainer.device)
    batch = max(int(trainer.e.eval_batch_size), 1)  # blocks of whole batches: the model sees the same batches
    rows = -(-(rows or chunk_rows()) // batch) * batch  # as in one pass, so its float32 sums are the same bits
    units: list[str] = []  # kept only for the training-rows caveat of the run's own data (labelled)
    keep_units: bool | None = None
    scores: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    loss, n = 0.0, 0
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        for i, (split, collate) in enumerate(chunks(Path(data), rows)):
            ev = apply_stored_calibration(run_dir, task.problem, trainer.evaluate(model, split, collate))
            header, lines = predictions_table(ev, task.problem, task.label_names, task.unit_columns,
                                              operating_point=op, conformal=conf)
            if i == 0:
                writer.writerow(header)
            writer.writerows(lines)
            if keep_units is None:  # decided once: ids are kept only where the caveat needs them
                keep_units = ev.targets is not None and own_data(run_dir, Path(data))
            if keep_units:
                units += ev.units
            scores.append(np.asarray(ev.scores))
            if ev.targets is not None:
                targets.append(np.asarray(ev.targets))
            loss += float(ev.loss) * len(ev.units)
            n += len(ev.units)
    return EvalOutput(units, np.concatenate(scores), np.concatenate(targets) if targets else None,
                      loss / max(n, 1))
