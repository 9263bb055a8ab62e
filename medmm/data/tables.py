"""Read a table file (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame.

The one table reader of medmm: text, tabular and pair readers all load their input here.
"""

from __future__ import annotations

from pathlib import Path

from medmm.errors import DataError

_COMPRESSION = {".gz", ".bz2", ".zip", ".xz", ".zst"}
_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def table_format(path: str | Path) -> str:
    """Return the format name (``csv``, ``tsv``, ``jsonl``, ``parquet``) from the file suffix.

    A compression suffix (``.gz``, ``.bz2``, ``.zip``, ``.xz``, ``.zst``) is looked through.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        known = ", ".join(sorted(_FORMATS))
        raise DataError(f"{path}: unknown table format; use one of the suffixes {known}")
    return fmt


def read_table(path: str | Path):
    """Read ``path`` into a ``pandas.DataFrame``; the format comes from the file suffix.

    CSV/TSV cells that are empty or a usual missing marker (``NA``, ``n/a``, ``null``, ...)
    become missing values. Parquet needs ``pyarrow``. Raises :class:`DataError` when the file
    is missing, empty or cannot be parsed.
    """
    import pandas as pd

    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if fmt == "csv":
            df = pd.read_csv(path)
        elif fmt == "tsv":
            df = pd.read_csv(path, sep="\t")
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True)
        else:
            try:
                df = pd.read_parquet(path)
            except ImportError as exc:
                raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc
    if df.shape[0] == 0:
        raise DataError(f"{path}: the table has no rows")
    return df
