"""``predictions.csv``: one row per unit (row id, path/UID, document), keyed without PHI.

Columns after ``id`` (and any UID columns) by problem:

- binary: ``prob_<positive class>`` (probability), ``predicted`` (at 0.5), ``true`` when labelled;
- multiclass / multilabel: ``prob_<class>`` per class, ``predicted``, ``true``;
- regression: ``prediction`` in the target's units, ``true``;
- survival: ``risk`` = the model's **log hazard ratio** (Cox partial likelihood): higher means an
  earlier event. It is relative (compare and rank patients; ``exp(risk_a - risk_b)`` is their
  hazard ratio), not a probability or a time. ``time`` and ``event`` when the data had them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm.io import atomic_write


def _label_names(problem: str, names: list[str] | None, k: int) -> list[str]:
    if names and len(names) == k:
        return [str(n) for n in names]
    if problem == "binary" and names and len(names) == 2:
        return [str(n) for n in names]
    return [str(i) for i in range(k)]


def prediction_rows(ev: Any, problem: str, label_names: list[str] | None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for an :class:`~medmm.engine.EvalOutput`."""
    s, t = np.asarray(ev.scores), ev.targets
    has_t = t is not None and len(t) == len(ev.units)
    if problem == "binary":
        names = _label_names(problem, label_names, 2)
        header = ["id", f"prob_{names[1]}", "predicted"] + (["true"] if has_t else [])
        rows = [[u, f"{p:.6f}", names[int(p >= 0.5)]] + ([names[int(t[i])]] if has_t else [])
                for i, (u, p) in enumerate(zip(ev.units, s))]
    elif problem == "multiclass":
        names = _label_names(problem, label_names, s.shape[1])
        header = ["id", *[f"prob_{n}" for n in names], "predicted"] + (["true"] if has_t else [])
        rows = [[u, *[f"{p:.6f}" for p in s[i]], names[int(s[i].argmax())]] + ([names[int(t[i])]] if has_t else [])
                for i, u in enumerate(ev.units)]
    elif problem == "multilabel":
        names = _label_names(problem, label_names, s.shape[1])
        header = ["id", *[f"prob_{n}" for n in names], "predicted"] + (["true"] if has_t else [])
        rows = [[u, *[f"{p:.6f}" for p in s[i]], ";".join(n for n, p in zip(names, s[i]) if p >= 0.5)]
                + ([";".join(n for n, y in zip(names, t[i]) if y >= 0.5)] if has_t else [])
                for i, u in enumerate(ev.units)]
    elif problem == "regression":
        header = ["id", "prediction"] + (["true"] if has_t else [])
        rows = [[u, f"{s[i]:.6g}"] + ([f"{t[i]:.6g}"] if has_t else []) for i, u in enumerate(ev.units)]
    else:  # survival: log hazard, higher = earlier event
        header = ["id", "risk"] + (["time", "event"] if has_t else [])
        rows = [[u, f"{s[i]:.6g}"] + ([f"{t[i][0]:.6g}", int(t[i][1])] if has_t else []) for i, u in enumerate(ev.units)]
    return header, rows


def predictions_table(ev: Any, problem: str, label_names: list[str] | None,
                      unit_columns: dict[str, dict[str, str]] | None = None,
                      operating_point: dict[str, Any] | None = None, conformal: dict[str, Any] | None = None,
                      set_groups: Any = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the predictions CSV; ``unit_columns`` adds columns per unit (e.g. UIDs).

    Every row depends on its own unit only, so the rows of consecutive blocks of units, written one
    block after another, are the rows of all of them at once (streaming ``medmm predict``).

    ``operating_point`` (the run's stored one) adds the thresholded decision: ``decision``
    (binary: a class name) or ``decision_<class>`` 0/1 columns (multiclass one-vs-rest; multilabel,
    each label at its own threshold).

    ``conformal`` (the run's stored thresholds, :mod:`medmm.evaluation.conformal`) adds the
    prediction set ``set_<level>`` (or ``lower_<level>`` / ``upper_<level>``; multi-label:
    ``set_<label>``) and ``abstain`` (1 = refer to a clinician) after the prediction columns;
    ``set_groups`` are the units' values of its ``group_column``.
    """
    header, rows = prediction_rows(ev, problem, label_names)
    if operating_point is not None and problem in ("binary", "multiclass", "multilabel") and len(rows):
        from medmm.evaluation.threshold import decisions

        calls = decisions(problem, ev.scores, operating_point)
        at = header.index("predicted") + 1
        if problem == "binary":
            names = [str(n) for n in operating_point["classes"]]
            header.insert(at, "decision")
            for r, c in zip(rows, calls[:, 0]):
                r.insert(at, names[int(c)])
        else:
            header[at:at] = [f"decision_{c}" for c in operating_point["classes"]]
            for r, c in zip(rows, calls):
                r[at:at] = [int(v) for v in c]
    if conformal is not None and len(rows):
        from medmm.evaluation.conformal import prediction_columns

        names = _label_names(problem, label_names, 2 if problem == "binary" else np.asarray(ev.scores).reshape(
            len(rows), -1).shape[1])
        c_head, c_rows = prediction_columns(conformal, ev.scores, names, set_groups)
        at = header.index("true") if "true" in header else len(header)
        header[at:at] = c_head
        for r, c in zip(rows, c_rows):
            r[at:at] = c
    named = getattr(unit_columns, "columns", None)  # UnitColumns: every unit has the same columns
    extra = list(named) if named is not None else sorted({k for cols in (unit_columns or {}).values() for k in cols})
    if extra:
        header = [header[0], *extra, *header[1:]]
        rows = [[r[0], *_values(unit_columns.get(r[0]) or {}, extra), *r[1:]] for r in rows]  # type: ignore[union-attr]
    return header, rows


def _values(cols: Mapping[str, str], names: list[str]) -> list[str]:
    return [cols.get(k, "") for k in names]


class UnitColumns(Mapping[str, Mapping[str, str]]):
    """The extra ``predictions.csv`` columns of each unit (``{unit: {column: value}}`` as a mapping), held as
    one value per unit (a tuple when there are several columns) instead of a dict per unit: about 180 bytes
    less per unit (a folder of 20,000 DICOM instances, each its own unit, held 3.6 MB of dicts)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.values_of: dict[str, Any] = {}

    def add(self, unit: str, values: Sequence[str]) -> None:
        """``unit``'s values, in the order of ``names``; a unit already added keeps its first values."""
        if self.names and unit not in self.values_of:
            self.values_of[unit] = values[0] if len(self.names) == 1 else tuple(values)

    @property
    def columns(self) -> list[str]:
        """The column names, sorted (as :func:`predictions_table` orders them); none when no unit was added."""
        return sorted(self.names) if self.values_of else []

    def __getitem__(self, unit: str) -> dict[str, str]:
        v = self.values_of[unit]
        return dict(zip(self.names, (v,) if len(self.names) == 1 else v))

    def __contains__(self, unit: object) -> bool:
        return unit in self.values_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.values_of)

    def __len__(self) -> int:
        return len(self.values_of)


def write_predictions(path: Path, ev: Any, problem: str, label_names: list[str] | None,
                      unit_columns: dict[str, dict[str, str]] | None = None,
                      operating_point: dict[str, Any] | None = None, conformal: dict[str, Any] | None = None,
                      set_groups: Any = None) -> Path:
    """Atomically write the predictions CSV (:func:`predictions_table`), :data:`WRITE_ROWS` units at a time (the
    rows of each slice are those of all units at once: a row depends on its own unit only), so the text of
    every row is never held at once (about 300 bytes a row)."""
    from types import SimpleNamespace

    n = len(ev.units)
    targets = ev.targets if ev.targets is not None and len(ev.targets) == n else None
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        for start in range(0, max(n, 1), WRITE_ROWS):
            part, groups = ev, set_groups
            if n > WRITE_ROWS:
                stop = start + WRITE_ROWS
                part = SimpleNamespace(units=ev.units[start:stop], scores=np.asarray(ev.scores)[start:stop],
                                       targets=None if targets is None else targets[start:stop])
                groups = None if set_groups is None else set_groups[start:stop]
            header, rows = predictions_table(part, problem, label_names, unit_columns, operating_point, conformal,
                                             groups)
            if start == 0:
                writer.writerow(header)
            writer.writerows(rows)
    return Path(path)


#: Units per slice of :func:`write_predictions`.
WRITE_ROWS = 50_000
