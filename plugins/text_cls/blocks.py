"""A CSV / TSV of notes read block by block for streamed prediction, shared by the task
(``predict_chunks``) and its torch-free exported runtime (``TextInputs.blocks``): one reading, one
label rule, so the two paths cut the same blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm import DataError, eval_window, load_text_examples, read_table_chunks

__all__ = ["NoteBlocks", "SeenIds", "columns", "note_blocks", "repeatable_ids"]

log = logging.getLogger("medmm")

#: ``(rows read, examples without labels, examples with labels or None)`` per block of the table
NoteBlocks = Callable[[bool], Iterator[tuple[int, Any, Any]]]


def columns(value: Any) -> list[str]:
    """A config value naming one column or a list of columns -> list of names."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


class SeenIds:
    """The ``seen_ids`` of :func:`medmm.load_text_examples` across blocks, holding only the ids that can repeat
    (:func:`repeatable_ids`): an id outside them occurs once in the table, so it needs no remembering. A set of
    every id was about 100-220 bytes a row (a string and a slot in one or two sets) for the whole prediction."""

    def __init__(self, repeatable: set[str]) -> None:
        self.repeatable, self.seen = repeatable, set()

    def __contains__(self, key: object) -> bool:
        return key in self.seen

    def add(self, key: str) -> None:
        if key in self.repeatable:
            self.seen.add(key)


def _hashes(keys: Any) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_pandas_object(keys, index=False).to_numpy()


def repeatable_ids(path: Path, id_col: str, rows: int) -> set[str]:
    """The ids of ``id_col`` (as keys: text, stripped) whose 64-bit hash occurs more than once: the repeated ids
    and, rarely, ids whose hash collides (harmless: they are remembered exactly). One pass over the id column
    holding 8 bytes a row; a second one, only when some hash repeats, collects those ids' text."""
    def keys() -> Iterator[Any]:
        for df in read_table_chunks(path, rows, columns=[id_col], string_columns=[id_col]):
            yield df[id_col].dropna().astype(str).str.strip()

    parts = [_hashes(k) for k in keys()]
    h = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    del parts
    h.sort()
    twice = np.unique(h[1:][h[1:] == h[:-1]])
    del h
    if not len(twice):
        return set()
    return {key for k in keys() for key in k[np.isin(_hashes(k), twice)].tolist()}


def note_blocks(path: Path, d: Any, label_names: Sequence[str] | None, rows: int, batch_size: int, *,
                warn_unlabelled: bool = True) -> tuple[int, bool, NoteBlocks]:
    """``(rows per block, use labels, read)``: ``rows`` rounded up to whole length-sorted windows of
    ``batch_size`` evaluation batches (:func:`medmm.eval_window`), the one-pass label rule (labels
    only when every predicted row has a usable one, decided by a first pass when a label column is
    configured) and ``read(with_labels)``, which yields each block's examples; ids are unique across
    blocks and rows keep their table numbers. ``d``: the task's data config; ``warn_unlabelled``: say
    when some rows lack a usable label (as the path's one-pass read does)."""
    window = eval_window(batch_size)
    rows = -(-rows // window) * window
    text_cols, label_cols = columns(d.text_column), columns(d.label_column)
    id_col = d.id_column
    if id_col and id_col not in next(read_table_chunks(path, 1)).columns:
        log.warning("id column %r is not in %s; predictions are keyed by row number", id_col, Path(path).name)
        id_col = None
    strings = [c for c in (id_col, d.group_column, *text_cols) if c]  # a block of digits stays text
    common = {"text_columns": text_cols, "id_column": id_col, "separator": d.separator,
              "max_chars": d.max_chars, "label_names": label_names, "block": True}

    repeatable = repeatable_ids(path, id_col, rows) if id_col else set()

    def read(with_labels: bool) -> Iterator[tuple[int, Any, Any]]:
        seen = {False: SeenIds(repeatable), True: SeenIds(repeatable)}  # only ids that can repeat are kept
        for df in read_table_chunks(path, rows, string_columns=strings):
            first = int(df.index[0]) if len(df) else 0
            ex = load_text_examples(df, **common, label_columns=[], label_delimiter=None, first_row=first,
                                    seen_ids=seen[False])
            lab = (load_text_examples(df, **common, label_columns=label_cols, label_delimiter=d.label_delimiter,
                                      first_row=first, seen_ids=seen[True]) if with_labels else None)
            yield len(df), ex, lab

    use_labels = False
    if label_cols:
        try:
            same, n_labelled = True, 0
            for _, ex, lab in read(True):
                same, n_labelled = same and lab.row_ids == ex.row_ids, n_labelled + len(lab.row_ids)
            use_labels = same and n_labelled > 0
            if warn_unlabelled and not same and n_labelled:
                log.warning("some rows have missing or unknown labels: predictions only, no metrics")
        except DataError:
            use_labels = False  # no label columns
    return rows, use_labels, read
