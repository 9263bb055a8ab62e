"""Text tables: turn the rows of a table (:func:`medmm.data.readers.read_table`) into labelled examples.

Bad rows never stop a run: a row with no text, a missing or unknown label, a missing id or
split value is left out and recorded in :attr:`TextExamples.skipped` as ``(row_id, reason)``
(a row without a group value is kept: it is its own group when split). Reasons are fixed
phrases that never quote cell contents, so they can be counted and written into run reports
without leaking protected health information.

Documents longer than ``max_chars`` characters are **truncated**, not skipped: the tokenizer
only reads the first ``max_length`` tokens anyway (or, in chunk mode, a bounded number of
windows), and dropping a whole note because it is long would bias the data set against the
sickest patients. Truncated rows are listed in :attr:`TextExamples.truncated`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medmm.data.readers import is_missing
from medmm.errors import ConfigError, DataError
from medmm.task import read_split_column

__all__ = ["TextExamples", "load_text_examples"]

logger = logging.getLogger(__name__)


@dataclass
class TextExamples:
    """Labelled (or unlabelled) documents ready to tokenize.

    ``labels`` holds class indices into ``label_names`` (int64 ``[N]``) for single-label data,
    a float32 0/1 matrix ``[N, K]`` for multi-label data, and is ``None`` when the table was
    read without label columns (prediction on new data).
    """

    texts: list[str]
    labels: np.ndarray | None
    label_names: list[str]
    multilabel: bool
    row_ids: list[str]
    groups: list[str] | None = None
    splits: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def skip_summary(self) -> dict[str, int]:
        """Count of skipped rows per reason (safe to log: no cell contents)."""
        return dict(Counter(reason for _, reason in self.skipped))

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextExamples:
        """The examples at ``indices`` (``skipped`` / ``truncated`` are carried over unchanged)."""
        idx = [int(i) for i in indices]
        return TextExamples(
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            label_names=list(self.label_names),
            multilabel=self.multilabel,
            row_ids=[self.row_ids[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            splits=None if self.splits is None else [self.splits[i] for i in idx],
            skipped=list(self.skipped),
            truncated=list(self.truncated),
        )


def _as_key(value: Any) -> str:
    """Canonical string form of a label / id cell: ``1``, ``1.0`` and ``"1"`` all give ``"1"``."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_names(names: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every name is an integer (so 2 < 10)."""
    names = set(names)
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


_TRUE = {"1", "true", "yes", "y", "t", "pos", "positive"}
_FALSE = {"0", "false", "no", "n", "f", "neg", "negative"}


def _binary(value: Any) -> float | None:
    key = _as_key(value).lower()
    if key in _TRUE:
        return 1.0
    if key in _FALSE:
        return 0.0
    return None


def load_text_examples(
    df: pd.DataFrame,
    *,
    text_columns: Sequence[str],
    label_columns: Sequence[str],
    label_delimiter: str | None = None,
    id_column: str | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    separator: str = "\n\n",
    max_chars: int = 1_000_000,
    label_names: Sequence[str] | None = None,
    first_row: int = 0,
    seen_ids: set[str] | None = None,
    block: bool = False,
) -> TextExamples:
    """Turn table rows into :class:`TextExamples`.

    Args:
        df: the table, e.g. from :func:`medmm.data.readers.read_table`.
        text_columns: columns joined with ``separator`` (empty cells are left out).
        label_columns: one column of class names / integers (single-label); one column of
            ``label_delimiter``-separated names (multi-label); or several 0/1 columns, one per
            label (multi-label, the column names are the label names). Empty: no labels.
        label_delimiter: split the single label column on this string (multi-label).
        id_column: row identifier used to key predictions; default the 0-based row number.
        group_column: patient / study id used for leakage-free splits.
        split_column: the user's own split (``train`` / ``val`` / ``test``; ``valid``,
            ``validation`` and ``dev`` mean ``val``).
        separator: string placed between text columns.
        max_chars: longer documents are truncated to this many characters.
        label_names: the label set of a trained model (prediction time); rows with labels
            outside it are skipped. Default: the sorted labels found in ``df``.
        first_row: the table row number of ``df``'s first row (row-number ids of a block).
        seen_ids: the ids of earlier blocks (a repeat is a duplicate); updated in place.
        block: ``df`` is one block of a table read in blocks: no row usable is not an error, and
            the skipped / truncated rows are left to the caller to report once.

    Raises:
        DataError: a column is missing, or no row is usable.
        ConfigError: contradictory arguments.
    """
    text_columns, label_columns = list(text_columns), list(label_columns)
    if label_names is not None:
        label_names = [_as_key(n) for n in label_names]
    if not text_columns:
        raise ConfigError("text_columns must name at least one column")
    if max_chars < 1:
        raise ConfigError(f"max_chars must be positive, got {max_chars}")
    if label_delimiter is not None and len(label_columns) != 1:
        raise ConfigError("label_delimiter needs exactly one label column")
    wanted = text_columns + label_columns + [c for c in (id_column, group_column, split_column) if c]
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        available = ", ".join(map(str, df.columns)) or "none"
        raise DataError(f"missing column(s) {', '.join(missing)}; available columns: {available}")

    multilabel = len(label_columns) > 1 or label_delimiter is not None
    column_labels = len(label_columns) > 1  # several 0/1 columns
    if column_labels and label_names is not None and list(label_names) != label_columns:
        raise ConfigError(
            f"label_names {list(label_names)} do not match the label columns {label_columns}"
        )

    texts: list[str] = []
    raw_labels: list[Any] = []
    row_ids: list[str] = []
    groups: list[str] = []
    splits: list[str] = []
    skipped: list[tuple[str, str]] = []
    truncated: list[str] = []
    seen_ids = set() if seen_ids is None else seen_ids
    known = None if label_names is None else {n: i for i, n in enumerate(label_names)}

    records = df[list(dict.fromkeys(wanted))].to_dict("records")
    for pos, rec in enumerate(records, start=first_row):
        row_id = str(pos)
        if id_column:
            if is_missing(rec[id_column]):
                skipped.append((row_id, "missing id"))
                continue
            row_id = _as_key(rec[id_column])
            if row_id in seen_ids:
                skipped.append((row_id, "duplicate id"))
                continue
        parts = [str(rec[c]).strip() for c in text_columns if not is_missing(rec[c])]
        text = separator.join(p for p in parts if p)
        if not text:
            skipped.append((row_id, "empty text"))
            continue

        label: Any = None
        if column_labels:
            if any(is_missing(rec[c]) for c in label_columns):
                skipped.append((row_id, "missing label"))
                continue
            values = [_binary(rec[c]) for c in label_columns]
            if any(v is None for v in values):
                skipped.append((row_id, "invalid label value (expected 0/1)"))
                continue
            label = values
        elif label_columns:
            cell = rec[label_columns[0]]
            if is_missing(cell):
                skipped.append((row_id, "missing label"))
                continue
            if label_delimiter is not None:
                label = sorted({t.strip() for t in str(cell).split(label_delimiter) if t.strip()})
                if not label:
                    skipped.append((row_id, "missing label"))
                    continue
                if known is not None and any(t not in known for t in label):
                    skipped.append((row_id, "unseen label"))
                    continue
            else:
                label = _as_key(cell)
                if known is not None and label not in known:
                    skipped.append((row_id, "unseen label"))
                    continue

        group = split = None
        if group_column:  # an empty group cell: the row is its own group (the one split rule, medmm.task)
            group = "" if is_missing(rec[group_column]) else _as_key(rec[group_column])
        if split_column:
            (split,), bad = read_split_column([row_id], [rec[split_column]])  # the one split rule (medmm.task)
            if bad:
                skipped += bad
                continue

        if len(text) > max_chars:
            text = text[:max_chars]
            truncated.append(row_id)
        if id_column:
            seen_ids.add(row_id)
        texts.append(text)
        raw_labels.append(label)
        row_ids.append(row_id)
        if group is not None:
            groups.append(group)
        if split is not None:
            splits.append(split)

    if not texts and not block:
        reasons = ", ".join(f"{r}: {n}" for r, n in Counter(r for _, r in skipped).items())
        raise DataError(f"no usable rows among {len(records)} ({reasons or 'the table is empty'})")
    if skipped and not block:
        logger.warning("skipped %d of %d rows: %s", len(skipped), len(records),
                       dict(Counter(r for _, r in skipped)))
    if truncated and not block:
        logger.warning("truncated %d document(s) longer than %d characters", len(truncated),
                       max_chars)

    labels: np.ndarray | None
    if not label_columns:
        names, labels = list(label_names or []), None
    elif column_labels:
        names = list(label_columns)
        labels = np.asarray(raw_labels, dtype=np.float32).reshape(len(texts), len(names))
    elif multilabel:
        names = list(label_names) if label_names is not None else _sort_names(
            t for ts in raw_labels for t in ts)
        index = {n: i for i, n in enumerate(names)}
        labels = np.zeros((len(texts), len(names)), dtype=np.float32)
        for row, ts in enumerate(raw_labels):
            labels[row, [index[t] for t in ts]] = 1.0
    else:
        names = list(label_names) if label_names is not None else _sort_names(raw_labels)
        index = {n: i for i, n in enumerate(names)}
        labels = np.fromiter((index[v] for v in raw_labels), dtype=np.int64, count=len(raw_labels))

    return TextExamples(
        texts=texts,
        labels=labels,
        label_names=[str(n) for n in names],
        multilabel=multilabel,
        row_ids=row_ids,
        groups=groups if group_column else None,
        splits=splits if split_column else None,
        skipped=skipped,
        truncated=truncated,
    )
