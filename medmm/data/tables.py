"""Read a table file (CSV, TSV, JSON Lines, Parquet) into a pandas DataFrame.

The one table reader of medmm: text, tabular and fusion tasks all load their input here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DECIMALS", "TABLE_SUFFIXES", "is_missing", "parse_number_columns", "read_table", "table_format"]

log = logging.getLogger(__name__)

#: Recognised table suffixes (optionally followed by a compression suffix such as ``.gz``).
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = {".gz", ".bz2", ".zip", ".xz", ".zst"}

#: Decimal marks ``read_table`` accepts (``data.decimal``); the other usual mark groups thousands.
DECIMALS = (".", ",")
_EXP = r"(?:[eE][+-]?\d+)?"
# Per decimal mark: plain numbers, and numbers whose thousands are grouped in threes.
_PLAIN = {".": re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)" + _EXP), ",": re.compile(r"[+-]?(?:\d+,?\d*|,\d+)" + _EXP)}
_GROUPED = {".": re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?"),
            ",": re.compile(r"[+-]?\d{1,3}(?:[. \u00a0\u202f]\d{3})+(?:,\d*)?")}
_SEPARATORS = {".": ",", ",": ". \u00a0\u202f"}


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


def read_table(path: str | Path, *, string_columns: Iterable[str] = (), decimal: str = ".") -> pd.DataFrame:
    """Read ``path``; the format comes from its suffix (``.gz`` etc. allowed).

    Text files must be UTF-8 (a byte-order mark is accepted); empty cells and the usual
    missing markers (``NA``, ``n/a``, ``null``) become missing values. ``string_columns`` are
    read as strings so identifiers such as ``"007"`` keep their leading zeros (CSV / TSV;
    other formats store types). A ``.csv`` whose header line holds ``;`` but no ``,`` is read
    with ``;`` as the separator (the spreadsheet export of decimal-comma locales).

    Numbers stored as text are parsed by :func:`parse_number_columns`: thousands separators
    (``"395,000"``) with a warning naming the column, and decimal commas (``"1,5"``) when
    ``decimal=","``. Every failure is a :class:`DataError` that names the file and never
    quotes cell contents.
    """
    import pandas as pd

    if decimal not in DECIMALS:
        raise ConfigError(f"data.decimal must be one of {list(DECIMALS)}, got {decimal!r}")
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError(f"table not found (no such file): {path}" if not path.exists() else f"not a file: {path}")
    dtype = {c: str for c in string_columns} or None
    try:
        if fmt in ("csv", "tsv"):
            sep = _csv_separator(path) if fmt == "csv" else "\t"
            df = pd.read_csv(path, sep=sep, dtype=dtype, encoding="utf-8-sig", low_memory=False, decimal=decimal)
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
    try:
        st = path.stat()
        source: tuple[Any, ...] | None = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        source = None
    return parse_number_columns(df, decimal=decimal, skip=string_columns, source=source)


def _csv_separator(path: Path) -> str:
    """``;`` when the header line has semicolons and no comma, else ``,``."""
    import pandas as pd

    try:
        with pd.io.common.get_handle(path, "r", encoding="utf-8-sig", compression="infer") as handle:
            header = handle.handle.readline(1 << 16)
    except (OSError, UnicodeDecodeError, EOFError, ValueError):
        return ","  # pandas reports the problem with its own message
    return ";" if ";" in header and "," not in header else ","


def parse_number_columns(df: pd.DataFrame, *, decimal: str = ".", skip: Iterable[str] = (),
                         source: tuple[Any, ...] | None = None) -> pd.DataFrame:
    """Turn text columns that hold only numbers written for people into float columns.

    A column is converted when every non-blank value is a number in the ``decimal`` convention
    and at least one is not plain Python syntax: thousands grouped in threes (``"395,000"``,
    ``"1,234.5"``; with ``decimal=","``: ``"395.000"``, ``"395 000"``) or, with ``decimal=","``,
    a decimal comma (``"1,5"``). Thousands separators are logged as a warning naming the
    column (they are easy to misread: with decimal commas, set ``data.decimal=","``). With the
    default ``decimal="."``, a column that holds decimal commas stays text, with a warning
    saying how to read it. ``skip`` names columns kept as they are (identifiers). ``source``
    identifies the file: one file read twice in a process warns once.
    """
    import pandas as pd

    skip = set(skip)
    grouped_cols, comma_cols, hint_cols = [], [], []
    out = df
    for col in df.columns:
        if col in skip or not (df[col].dtype == object or isinstance(df[col].dtype, pd.StringDtype)):
            continue
        parsed, grouped = _parse_numbers(df[col], decimal)
        if parsed is None:
            if decimal == "." and _parse_numbers(df[col], ",")[0] is not None:
                hint_cols.append(col)
            continue
        if out is df:
            out = df.copy()
        out[col] = parsed
        (grouped_cols if grouped else comma_cols).append(col)
    for col in grouped_cols:
        if _warned(source, col, decimal):
            continue
        sep = "','" if decimal == "." else "'.' or a space"
        log.warning("column %r holds numbers written with thousands separators (%s); read as numbers%s", col, sep,
                    " (if ',' is a decimal comma there, set data.decimal=',')" if decimal == "." else "")
    if comma_cols:
        log.info("columns read as numbers with decimal commas: %s", comma_cols)
    for col in hint_cols:
        if _warned(source, col, decimal):
            continue
        log.warning("column %r looks like numbers written with decimal commas; it is read as text "
                    "(set data.decimal=',' to read it as numbers)", col)
    return out


_WARNED: dict[tuple[Any, ...], None] = {}


def _warned(source: tuple[Any, ...] | None, column: str, decimal: str) -> bool:
    """True when this file's column was already warned about (then nothing is logged again)."""
    if source is None:
        return False
    key = (*source, column, decimal)
    if key in _WARNED:
        return True
    if len(_WARNED) > 1024:
        _WARNED.clear()
    _WARNED[key] = None
    return False


def _parse_numbers(series: pd.Series, decimal: str) -> tuple[pd.Series | None, bool]:
    """``(floats, has thousands separators)`` when every value parses, else ``(None, False)``."""
    import pandas as pd

    present = series[series.notna()]
    if present.empty or not all(isinstance(v, str) for v in present):
        return None, False
    text = present.str.strip()
    text = text[text != ""]
    if text.empty:
        return None, False
    grouped = text.str.fullmatch(_GROUPED[decimal])
    plain = text.str.fullmatch(_PLAIN[decimal])
    if not (grouped | plain).all():
        return None, False
    if decimal == "." and not grouped.any():
        return None, False  # plain numbers among other text: the reader's own typing stands
    if decimal == "," and not grouped.any() and not text.str.contains(",", regex=False).any():
        return None, False
    clean = text.str.replace(f"[{_SEPARATORS[decimal]}]", "", regex=True)
    if decimal == ",":
        clean = clean.str.replace(",", ".", regex=False)
    values = pd.Series(float("nan"), index=series.index, dtype="float64")
    values[clean.index] = clean.astype("float64")
    return values, bool(grouped.any())
