"""Per-unit attributes for the subgroup audit: table columns, or DICOM header attributes.

A task predicts *units* (a table row id, a DICOM path or series/study UID); this module
looks up, for each unit, the value of each subgroup column in the same data the task read.
DICOM folders allow only a fixed list of non-identifying header attributes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmm.errors import DataError

__all__ = ["DICOM_ATTRIBUTES", "age_in_years", "unit_attributes"]

DICOM_ATTRIBUTES = ("PatientSex", "PatientAge", "Manufacturer", "ManufacturerModelName", "Modality",
                    "BodyPartExamined")
"""Header attributes a DICOM subgroup column may name: never names, IDs or dates."""

MAX_FILES = 200_000  # bounded folder walk


def age_in_years(value: Any) -> float:
    """A DICOM Age String (``065Y``, ``018M``, ``003W``, ``010D``) in years; ``nan`` when absent or malformed."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value or ""))
    if not m:
        return math.nan
    return int(m.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0, "": 1.0}[m.group(2)]


def unit_attributes(data_path: Path, data_cfg: Mapping[str, Any], units: Sequence[str],
                    columns: Sequence[str]) -> dict[str, list[Any]]:
    """``{column: [value per unit]}``; a column absent from the data is a :class:`DataError` naming it."""
    if not columns:
        return {}
    path = Path(data_path)
    if path.is_dir():
        return _dicom_attributes(path, units, columns)
    return _table_attributes(path, data_cfg, units, columns)


def table_columns(path: Path) -> list[str]:
    """Column names of a table file (reads it through the one table reader)."""
    from medmm.data.readers import read_table

    return [str(c) for c in read_table(path).columns]


def _table_attributes(path: Path, data_cfg: Mapping[str, Any], units: Sequence[str],
                      columns: Sequence[str]) -> dict[str, list[Any]]:
    id_col = data_cfg.get("id_column")
    best: tuple[int, Any, dict[str, int]] | None = None
    for as_string in (True, False):  # tasks read ids as text (text, fusion) or as typed values (tabular)
        df = _id_and(path, id_col, columns, as_string)
        absent = [c for c in columns if c not in df.columns]
        if absent:
            raise DataError(f"subgroup column {absent[0]!r} is not in {path.name}; the table has "
                            f"{df.attrs['header'][:20]}")
        ids = df[id_col].astype(str).tolist() if id_col and id_col in df.columns else [str(i) for i in range(len(df))]
        index = {u: i for i, u in enumerate(ids)}
        hits = sum(u in index for u in units)
        if best is None or hits > best[0]:
            best = (hits, df, index)
        if hits == len(units) or not id_col:
            break
    _, df, index = best  # type: ignore[misc]
    rows = [index.get(u) for u in units]
    return {c: [None if r is None else df[c].iloc[r] for r in rows] for c in columns}


def _id_and(path: Path, id_col: str | None, columns: Sequence[str], as_string: bool) -> Any:
    """The table's id column and ``columns`` (a CSV / TSV read in blocks of those columns only, the others never
    held; other formats read whole), with every column name in ``.attrs["header"]``."""
    import pandas as pd

    from medmm.data.readers import chunk_rows, read_table, read_table_chunks, streams

    strings = [id_col] if (as_string and id_col) else []
    if not streams(path):
        df = read_table(path, string_columns=strings)
        df.attrs["header"] = [str(c) for c in df.columns]
        return df
    header = [str(c) for c in next(read_table_chunks(path, 1)).columns]
    wanted = [c for c in dict.fromkeys([*([id_col] if id_col else []), *columns]) if c in header]
    df = (pd.concat(list(read_table_chunks(path, chunk_rows(), columns=wanted, string_columns=strings)))
          if wanted else pd.DataFrame())
    df.attrs["header"] = header
    return df


def _dicom_attributes(root: Path, units: Sequence[str], columns: Sequence[str]) -> dict[str, list[Any]]:
    bad = [c for c in columns if c not in DICOM_ATTRIBUTES]
    if bad:
        raise DataError(f"subgroup column {bad[0]!r} is not an allowed DICOM header attribute for a subgroup "
                        f"audit; use one of {', '.join(DICOM_ATTRIBUTES)}")
    import pydicom

    from medmm.data.dicom.paths import identifier_parts, public_path
    from medmm.data.dicom.scan import list_files, quiet_pydicom

    # the identifiers only find the path component a unit shows as a keyed token; they are never returned
    wanted = [*columns, "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "AccessionNumber",
              "OtherPatientIDs", "PatientName"]
    by_key: dict[str, dict[str, Any]] = {}
    for rel in list_files(root)[:MAX_FILES]:
        try:
            with quiet_pydicom():  # values are decoded lazily: read them inside too (warnings may quote them)
                ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=wanted)
                values = {c: _dicom_value(ds, c) for c in columns}
                keys = [str(ds.get(uid, "") or "") for uid in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")]
                keys.append(public_path(rel, identifier_parts(rel, ds)))  # units are public paths (ids keyed)
        except Exception:  # not DICOM or unreadable: the task's scan skipped it too
            continue
        by_key.setdefault(rel, values)
        for key in keys:
            if key:
                by_key.setdefault(key, values)
    found = [by_key.get(u.split("#", 1)[0]) for u in units]
    return {c: [None if f is None else f[c] for f in found] for c in columns}


def _dicom_value(ds: Any, name: str) -> Any:
    value = ds.get(name, None)
    if value is None or str(value).strip() == "":
        return None
    return age_in_years(value) if name == "PatientAge" else str(value).strip()
