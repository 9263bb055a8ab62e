"""Streaming ``medmm predict`` of a table: one block of rows at a time, appended to the output CSV.

A task that can read its prediction input in blocks offers ``predict_chunks(path, rows)`` (an iterator
of ``(Split, collate)``, blocks in table order; the built-in table task does). Each block is predicted and its rows
of ``predictions.csv`` are written. Labelled input keeps each row's scores (float32) and target (the smallest
exact dtype: int8 for class indices) for the metrics line, in buffers grown in place
(:class:`~medmm.pooling.Growing`); unlabelled input keeps nothing per row (the units are counted), so its
memory does not grow with the table.
The file is byte-identical to the one a single block gives: every row depends on its own unit only
(:func:`medmm.predictions.predictions_table`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmm.data.readers import CHUNK_ROWS, chunk_rows
from medmm.pooling import Growing

__all__ = ["CHUNK_ROWS", "Streamed", "chunk_rows", "stream_predict"]


@dataclass
class Streamed:
    """What a streamed prediction keeps: the pooled scores and targets of labelled input (for the metrics;
    none for unlabelled input), and counts for the console."""

    ev: Any
    n: int = 0  # units predicted (``ev.scores`` is empty when the input had no targets)
    set_groups: list[str] | None = None
    seen: dict[str, int] | None = None  # the run's own labelled data: units per run split (the training-rows caveat)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # the inputs not predicted (input, reason)
    skipped_key: str = "id"
    referral: str = ""  # the console's referral line (:class:`~medmm.evaluation.conformal.ReferralCount`)


def stream_predict(task: Any, data: Path, run_dir: Path, trainer: Any, model: Any, out: Path,
                   rows: int | None = None) -> Streamed | None:
    """Predict ``data`` block by block into ``out`` (atomically); the pooled scores as an
    :class:`~medmm.engine.trainer.EvalOutput` (in :class:`Streamed`), or ``None`` when this input does not
    stream (the task has no ``predict_chunks``; ``data`` is a folder or a plugin format; a grouped
    run calibrated before its group bands were stored) and the caller reads it whole. A run whose sets are
    grouped by a column reads that column alongside, block by block (:class:`~medmm.evaluation.conformal.StreamedGroups`).

    Per row only the scores and targets of labelled input are kept (and a grouped run's group label), never the
    unit ids (``units`` is empty: ``n`` counts them); unlabelled input keeps nothing per row; for the run's own labelled data the training-rows caveat's
    counts are made block by block (:class:`~medmm.evaluation.overlap.SplitCounter`, in ``seen``)."""
    from medmm.data.readers import streams
    from medmm.engine.trainer import EvalOutput
    from medmm.evaluation.calibration import apply_stored_calibration
    from medmm.evaluation.conformal import ReferralCount, StreamedGroups, load_conformal
    from medmm.evaluation.overlap import SplitCounter, own_data
    from medmm.evaluation.threshold import load_operating_point
    from medmm.io import atomic_write, release_free_memory
    from medmm.predictions import predictions_table

    chunks = getattr(task, "predict_chunks", None)
    if chunks is None or not streams(data):  # folders, plugin formats: read whole, one pass
        return None
    conf = load_conformal(run_dir)
    grouped = conf is not None and bool(conf.get("group_column"))
    if grouped and "group_edges" not in conf:  # banded by the new data's own quartiles: a whole-column question
        return None
    op = load_operating_point(run_dir)
    model.to(trainer.device)
    batch = max(int(trainer.e.eval_batch_size), 1)  # blocks of whole batches: the model sees the same batches
    rows = -(-(rows or chunk_rows()) // batch) * batch  # as in one pass, so its float32 sums are the same bits
    side = StreamedGroups(conf, Path(data), trainer.cfg, rows) if grouped else None  # type: ignore[arg-type]
    refer = ReferralCount(conf)  # the referral line's counts, block by block (no unit's set is kept)
    seen: SplitCounter | None = None  # the run's own labelled data: its splits counted block by block
    own: bool | None = None
    scores: Growing | None = Growing()  # labelled input only: the metrics' inputs, grown in place
    targets: Growing | None = Growing(exact_small=True)  # (a list of blocks joined at the end is 2x at the peak)
    loss, n = 0.0, 0
    skipped: list[tuple[str, str]] = []
    skipped_key = "id"
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        for i, (split, collate) in enumerate(chunks(Path(data), rows)):
            ev = apply_stored_calibration(run_dir, task.problem, trainer.evaluate(model, split, collate))
            groups = None if side is None else side.labels(ev.units)
            header, lines = predictions_table(ev, task.problem, task.label_names, task.unit_columns,
                                              operating_point=op, conformal=conf, set_groups=groups)
            refer.add(ev.scores, groups)
            skipped += getattr(split, "skipped", None) or []  # a task's block: the rows it did not predict
            skipped_key = getattr(split, "skipped_key", skipped_key)
            if i == 0:
                writer.writerow(header)
            writer.writerows(lines)
            if own is None:  # decided once: the caveat counts the run's splits only for its own labelled data
                own = ev.targets is not None and own_data(run_dir, Path(data))
                seen = SplitCounter(run_dir) if own else None
            if seen is not None:
                seen.add(ev.units)
            if not len(ev.units):
                pass
            elif ev.targets is None or scores is None or targets is None:
                scores = targets = None  # a block without targets: no metrics, so no row is kept
            else:
                scores.add(np.asarray(ev.scores))
                targets.add(np.asarray(ev.targets))
            loss += float(ev.loss) * len(ev.units)
            n += len(ev.units)
            del ev, split, collate, lines
            release_free_memory()  # the block's freed tensors and frames: glibc keeps them resident otherwise
    kept = None if scores is None else scores.array()
    ev = EvalOutput([], np.zeros(0, np.float32) if kept is None else kept, None if targets is None else targets.array(),
                    loss / max(n, 1))
    return Streamed(ev, n, None, None if seen is None else seen.result(), skipped, skipped_key, refer.line())
