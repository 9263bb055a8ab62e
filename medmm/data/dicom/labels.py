"""Labels for scanned DICOM records: from sub-folder names or from a CSV.

Nothing is dropped silently: every :class:`LabelTable` lists the records that got no
label (``unlabelled``) and the CSV keys that matched no record (``unmatched``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medmm.data.dicom.scan import DicomRecord
from medmm.errors import DataError

__all__ = ["KEY_COLUMNS", "Label", "LabelTable", "labels_from_csv", "labels_from_folders"]

# Most specific first: when a CSV has several, the first one present is the key.
KEY_COLUMNS = ("path", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_RECORD_FIELD = {"path": "path", "SOPInstanceUID": "sop_uid", "SeriesInstanceUID": "series_uid",
                 "StudyInstanceUID": "study_uid"}
_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}

Label = str | tuple[int, ...]
"""A class name (single-label) or a 0/1 tuple aligned with ``classes`` (multi-label)."""


@dataclass(eq=False)
class LabelTable(Mapping[str, Label]):
    """Record path -> label, plus what could not be matched. Behaves as a read-only dict."""

    labels: dict[str, Label]
    classes: list[str]
    multi_label: bool = False
    unlabelled: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    key: str = "folder"

    def __getitem__(self, path: str) -> Label:
        return self.labels[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def target(self, path: str) -> int | list[float]:
        """Training target: class index (single-label) or a float 0/1 vector (multi-label)."""
        label = self.labels[path]
        if self.multi_label:
            return [float(v) for v in label]
        return self.classes.index(label)  # type: ignore[arg-type]

    def summary(self) -> str:
        """One line of counts (no identifiers), for logs and reports."""
        return (f"{len(self.labels)} labelled, {len(self.unlabelled)} unlabelled, "
                f"{len(self.unmatched)} unmatched CSV key(s); {len(self.classes)} classes")


def labels_from_folders(records: Iterable[DicomRecord]) -> LabelTable:
    """Label = first sub-folder under the root; files directly in the root are unlabelled."""
    labels: dict[str, Label] = {}
    unlabelled: list[str] = []
    for rec in records:
        folder, sep, _ = rec.path.partition("/")  # a scan's relative posix path (no Path per record)
        if sep:
            labels[rec.path] = folder
        else:
            unlabelled.append(rec.public_path)
    return LabelTable(labels, sorted(set(labels.values())), unlabelled=unlabelled, key="folder")


def labels_from_csv(
    records: Iterable[DicomRecord],
    csv_path: Path,
    label_columns: Sequence[str] | None = None,
    root: Path | None = None,
) -> LabelTable:
    """Labels from a CSV keyed by ``path`` (relative to the scanned root), ``SOPInstanceUID``,
    ``SeriesInstanceUID`` or ``StudyInstanceUID`` (series / study labels apply to every
    instance in them).

    ``label_columns`` defaults to every non-key column: one column gives single-label
    string classes; several columns must hold 0/1 and give a multi-label table. Absolute
    paths in a ``path`` column are made relative to ``root`` when it is given.
    """
    records = list(records)
    header, rows = _read_csv(Path(csv_path))
    key_col = _key_column(header, csv_path)
    columns = _label_columns(header, label_columns, csv_path)
    field_name = _RECORD_FIELD[_canonical(key_col)]
    multi = len(columns) > 1
    by_key = _rows_by_key(rows, key_col, columns, multi, csv_path, root)

    labels: dict[str, Label] = {}
    matched: set[str] = set()
    for rec in records:
        value = getattr(rec, field_name)
        if value in by_key:
            labels[rec.path] = by_key[value]
            matched.add(value)
    unlabelled = [r.public_path for r in records if r.path not in labels]
    unmatched = sorted(k for k in by_key if k not in matched)
    classes = list(columns) if multi else sorted(set(labels.values()))  # type: ignore[arg-type]
    return LabelTable(labels, classes, multi, unlabelled, unmatched, key=_canonical(key_col))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except FileNotFoundError:
        raise DataError(f"label CSV not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"label CSV {path} is not a readable UTF-8 CSV: {exc}") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, rows


def _canonical(column: str) -> str:
    return next((k for k in KEY_COLUMNS if k.lower() == column.lower()), column)


def _key_column(header: list[str], csv_path: Path) -> str:
    for wanted in KEY_COLUMNS:
        for column in header:
            if column.lower() == wanted.lower():
                return column
    raise DataError(f"label CSV {csv_path} needs a key column: one of {', '.join(KEY_COLUMNS)}; "
                    f"found {', '.join(header) or 'no header'}")


def _label_columns(header: list[str], wanted: Sequence[str] | None, csv_path: Path) -> list[str]:
    keys = {k.lower() for k in KEY_COLUMNS}
    if wanted is None:
        columns = [c for c in header if c.lower() not in keys]
    else:
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"label column(s) {', '.join(missing)} not in {csv_path}; "
                            f"columns: {', '.join(header)}")
        columns = list(wanted)
    if not columns:
        raise DataError(f"label CSV {csv_path} has no label column besides its key column")
    return columns


def _rows_by_key(rows, key_col, columns, multi, csv_path, root) -> dict[str, Label]:
    """Key value -> label. Conflicting duplicates are an error; rows with a blank label
    are left out, so their records show up as unlabelled."""
    by_key: dict[str, Label] = {}
    for line, row in enumerate(rows, start=2):
        key = row.get(key_col, "")
        if _canonical(key_col) == "path":
            key = _relative_path(key, root)
        if not key:
            raise DataError(f"{csv_path}, line {line}: empty {key_col}")
        label = _parse_label(row, columns, multi, csv_path, line)
        if label is not None and by_key.setdefault(key, label) != label:
            raise DataError(f"{csv_path}, line {line}: {key_col} {key!r} has conflicting labels")
    return by_key


def _parse_label(row, columns, multi, csv_path, line) -> Label | None:
    values = [row.get(c, "") for c in columns]
    if not multi:
        return values[0] or None
    if not any(values):
        return None
    try:
        return tuple(_BINARY[v.lower()] for v in values)
    except KeyError:
        bad = next(c for c, v in zip(columns, values) if v.lower() not in _BINARY)
        raise DataError(f"{csv_path}, line {line}: multi-label column {bad!r} must be 0 or 1") from None


def _relative_path(value: str, root: Path | None) -> str:
    value = value.replace("\\", "/")
    path = PurePosixPath(value)
    if path.is_absolute() and root is not None:
        try:
            return Path(value).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return value
    return str(path) if value else ""
