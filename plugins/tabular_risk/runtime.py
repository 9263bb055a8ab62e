"""tabular-risk's torch-free input reader for its exports (``TaskSpec.runtime``): the run's
fitted preprocessor (JSON) on a table's feature columns, as the task's predict reader applies it."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import (
    DataError, Examples, Preprocessor, batch_slices, prepare_target, read_json, read_table, read_table_chunks,
)
from medmm_plugins.tabular_risk.config import TabularRiskConfig

log = logging.getLogger("medmm")


def row_ids(df: Any, col: str | None) -> list[str]:
    """Each row's id (``col`` as text, else the row number); a missing column or a repeated id is a one-line
    :class:`DataError` (the repeat names its table lines)."""
    if col:
        if col not in df.columns:
            raise DataError(f"id column {col!r} is not in the data")
        ids = df[col].astype(str)
        repeated = np.flatnonzero(ids.duplicated().to_numpy())
        if len(repeated):  # the engine pools scores by id: repeated ids would be averaged silently
            rows = ", ".join(str(r + 2) for r in repeated[:5]) + (", ..." if len(repeated) > 5 else "")
            many = len(repeated) > 1
            raise DataError(f"data.id_column {col!r} has duplicate values (table line{'s' * many} {rows} "
                            f"repeat{'' if many else 's'} an earlier row's id): each row needs its own id")
        return ids.tolist()
    return [str(i) for i in range(len(df))]


def target_array(t: Any, problem: str) -> np.ndarray:
    """The model's targets of a :func:`prepare_target` result: ``[N, 2]`` (time, event) for survival."""
    if problem == "survival":
        return np.stack([t.time, t.event], axis=1).astype(np.float32)
    return t.y.astype(np.float32)


def table_blocks(path: Path, rows: int, d: Any, problem: str, label_names: list[str] | None,
                 preprocessor: Any) -> tuple[bool, Iterator[tuple[np.ndarray, list[str], np.ndarray | None]]]:
    """A table's prediction input in consecutive blocks of at most ``rows`` rows: ``(labelled, blocks)``,
    each block ``(features, ids, targets)`` as one whole read gives them (the torch task's
    ``predict_chunks`` and the export's streamed predict share it).

    A first pass reads only the id and target columns (duplicate ids and whether every row can be
    scored are whole-table questions); the blocks read the features. CSV / TSV stream, other formats
    are read whole and cut (:func:`read_table_chunks`)."""
    import pandas as pd

    cols = [d.time, d.event] if problem == "survival" else [d.target]
    present = next(read_table_chunks(path, 1, decimal=d.decimal)).columns  # the header (one row read)
    head = [c for c in dict.fromkeys([d.id_column, *cols]) if c and c in present]
    parts, id_blocks = [], []  # the targets; the id column as read (8 bytes a row when numeric), not strings
    for block in read_table_chunks(path, rows, columns=head, decimal=d.decimal) if head else ():
        if d.id_column in block.columns:
            id_blocks.append(block[d.id_column])
        parts.append(block[[c for c in block.columns if c != d.id_column or c in cols]])
    raw_ids = None
    if d.id_column:
        if d.id_column not in present:
            row_ids(pd.DataFrame(), d.id_column)  # the one-line error naming the column
        raw_ids = pd.concat(id_blocks, ignore_index=True)  # one dtype for the column, as one read gives
        del id_blocks
        hashes = np.concatenate([pd.util.hash_pandas_object(raw_ids[i:i + rows].astype(str), index=False).to_numpy()
                                 for i in range(0, len(raw_ids), rows)])
        if len(np.unique(hashes)) < len(hashes):  # a repeated id (or a hash collision): the exact check
            row_ids(pd.DataFrame({d.id_column: raw_ids}), d.id_column)  # names the table lines
        del hashes
    small = pd.concat(parts) if parts else pd.DataFrame()
    y = None
    if all(c and c in small.columns for c in cols):
        try:
            target = prepare_target(small, problem, d.target, d.time, d.event,
                                    positive_label=label_names[1] if label_names else None)
        except DataError as exc:  # as a whole read: predictions without metrics
            log.warning("no metrics: the label column cannot be scored (%s)", exc)
            target = None
        if target is not None and target.mask.all():
            y = target_array(target, problem)
    del small, parts

    def blocks() -> Iterator[tuple[np.ndarray, list[str], np.ndarray | None]]:
        start = 0
        for df in read_table_chunks(path, rows, decimal=d.decimal):
            stop = start + len(df)
            x = preprocessor.transform(df)
            part = raw_ids[start:stop].astype(str).tolist() if raw_ids is not None else [str(i) for i in range(start, stop)]
            yield x, part, None if y is None else y[start:stop]
            start = stop

    return y is not None, blocks()


class TabularInputs:
    """The run's fitted preprocessor (JSON) on a table's feature columns."""

    accepts = "rows"

    def __init__(self, export_dir: Path, cfg: TabularRiskConfig, batch_size: int, manifest: Mapping[str, Any]) -> None:
        
        self.cfg, self.d, self.batch_size = cfg, cfg.data, batch_size
        payload = read_json(export_dir / "artifacts" / "tabular.json")
        self.problem, self.label_names = payload["problem"], payload["label_names"]
        self.features = list(payload["features"])
        self.preprocessor = Preprocessor.from_json(payload["preprocessor"])
        self.columns = list(self.features)  # what a served row must hold

    def read(self, path: Path) -> Any:
        return read_table(path, **({"decimal": self.d.decimal} if self.d.decimal else {}))

    def blocks(self, path: Path, rows: int) -> Iterator[Examples]:
        """:meth:`examples` of ``read(path)`` in consecutive blocks of ``rows`` rows (whole eval batches):
        the streamed ``medmm predict EXPORT_DIR`` of a CSV / TSV table holds one block at a time."""
        _, parts = table_blocks(Path(path), rows, self.d, self.problem, self.label_names, self.preprocessor)
        for x, ids, y in parts:
            x = np.ascontiguousarray(x, dtype=np.float32)
            yield Examples([{"x": x[s]} for s in batch_slices(len(x), self.batch_size)], ids, y)

    def examples(self, df: Any) -> Examples:
        d = self.d
        x = np.ascontiguousarray(self.preprocessor.transform(df), dtype=np.float32)
        col = d.id_column
        if col and col not in df.columns:
            raise DataError(f"id column {col!r} is not in the data")
        ids = df[col].astype(str).tolist() if col else [str(i) for i in range(len(df))]
        y = None
        cols = [d.time, d.event] if self.problem == "survival" else [d.target]
        if all(c and c in df.columns for c in cols):
            try:
                t = prepare_target(df, self.problem, d.target, d.time, d.event,
                                   positive_label=self.label_names[1] if self.label_names else None)
            except DataError as exc:
                log.warning("no metrics: the label column cannot be scored (%s)", exc)
                t = None
            if t is not None and t.mask.all():
                y = (np.stack([t.time, t.event], axis=1) if self.problem == "survival" else t.y).astype(np.float32)
        return Examples([{"x": x[s]} for s in batch_slices(len(x), self.batch_size)], ids, y)
