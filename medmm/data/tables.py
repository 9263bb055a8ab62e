"""Read a table file (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame.

The one table reader of medmm: text, tabular and fusion tasks all load their input here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLE_SUFFIXES", "is_missing", "read_table", "table_format"]

#: Recognised table suffixes (optionally followed by a compression suffix such as ``.gz``).
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".zip", ".xz", ".zst"}


def is_missing(value: Any) -> bool:
    """A table cell with no value: None, NaN / NA / NaT, or a string of whitespace only."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def table_format(path: str | Path) -> str:
    """The format name (``csv``, ``tsv``, ``jsonl``, ``parquet``) from the file suffix.

    A compression suffix (``.gz``, ``.bz2``, ``.zip``, ``.xz``, ``.zst``) is looked through.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = TABLE_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        known = ", ".join(sorted(TABLE_SUFFIXES))
        raise DataError(f"cannot read {Path(path).name!r}: unknown table format (expected one of {known})")
    return fmt


def read_table(path: str | Path, *, string_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read ``path``; the format comes from its suffix (``.gz`` etc. allowed).

    Text files must be UTF-8 (a byte-order mark is accepted); empty cells and the usual
    missing markers (``NA``, ``n/a``, ``null``) become missing values. ``string_columns`` are
    read as strings so identifiers such as ``"007"`` keep their leading zeros (CSV / TSV;
    other formats store types). Every failure is a :class:`DataError` that names the file and
    never quotes cell contents.
    """
    import pandas as pd

    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError(f"table not found (no such file): {path}" if not path.exists() else f"not a file: {path}")
    dtype = {c: str for c in string_columns} or None
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=dtype,
                             encoding="utf-8-sig", low_memory=False)
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False)
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not valid UTF-8 (first bad byte at offset {exc.start}); "
                        "re-save the file as UTF-8") from None
    except ImportError as exc:  # no parquet engine
        raise DataError(f"cannot read {path}: reading Parquet needs pyarrow (pip install 'medmm[parquet]'): {exc}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"cannot read {path}: the file is empty") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        # Parser messages name line numbers and sizes, never cell contents.
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {fmt.upper()}: {msg}") from None
    if df.shape[0] == 0:
        raise DataError(f"cannot read {path}: the table has no rows")
    return df
