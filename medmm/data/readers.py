"""Read a table file (CSV, TSV, JSON Lines, Parquet, or a format a plugin adds) into a pandas DataFrame.

The one table reader of medmm: text, tabular and fusion tasks all load their input here.

Plugins add formats with the ``register_readers`` hook: a :class:`medmm.registry.Component`
whose ``factory`` reads a path into a DataFrame and whose ``extra`` says which inputs it takes,
by ``"suffixes"`` (e.g. ``[".psv"]``; matched case-insensitively with or without a compression
suffix such as ``.gz``) and/or by a ``"predicate"`` (a callable or ``"module:attr"`` taking the
path, for inputs without a telling suffix)::

    register(Component("psv", "my_plugin.readers:read_psv", "tabular", "pipe-separated values",
                       {"suffixes": [".psv"]}))

The factory is called as ``factory(path, string_columns=[...], decimal=".")`` with only the
keyword arguments its signature accepts. A plugin suffix wins over a built-in one (a plugin may
take over ``.txt``); a predicate is asked only when no suffix matched. What a plugin reader
returns goes through the same checks and number parsing as the built-in formats.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmm.errors import ConfigError, DataError
from medmm.io import release_free_memory
from medmm.registry import Component, resolve_object

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["BlockTable", "CHUNK_ROWS", "DECIMALS", "NumberText", "TABLE_SUFFIXES", "chunk_rows", "is_missing",
           "joined_dtype", "known_formats", "parse_number_columns", "plugin_readers", "raw_blocks", "read_table",
           "read_table_blocks", "read_table_chunks", "streams", "table_format", "table_rows"]

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


def plugin_readers() -> list[Component]:
    """The table readers plugins registered (``register_readers`` components with ``suffixes`` or a
    ``predicate``; readers of other inputs, such as DICOM folders, are not table readers)."""
    from medmm.plugins import get_registry

    return [c for _, c in get_registry().items("reader") if c.extra.get("suffixes") or c.extra.get("predicate")]


def _suffix_reader(path: Path, readers: list[Component]) -> Component | None:
    """The plugin reader whose suffix ``path`` has (case-insensitive, also before ``.gz`` etc.)."""
    name = path.name.lower()
    stem = name.rsplit(".", 1)[0] if Path(name).suffix in _COMPRESSION else name
    for comp in readers:
        if any(name.endswith(s.lower()) or stem.endswith(s.lower()) for s in comp.extra.get("suffixes", ())):
            return comp
    return None


def _predicate_reader(path: Path, readers: list[Component]) -> Component | None:
    """The first plugin reader (by name) whose predicate accepts the existing ``path``."""
    if not path.exists():
        return None
    for comp in readers:
        predicate = comp.extra.get("predicate")
        if predicate is None:
            continue
        try:
            if resolve_object(predicate)(path):
                return comp
        except Exception as exc:  # a broken plugin: one line naming it
            raise DataError(f"reader {comp.name!r} failed to check {path.name!r}: {type(exc).__name__}: {exc}") from None
    return None


def known_formats() -> str:
    """The table formats this process reads, in words (built-in suffixes, then plugin readers)."""
    known = sorted(TABLE_SUFFIXES)
    for comp in plugin_readers():
        known += [f"{s} ({comp.name})" for s in comp.extra.get("suffixes", ())]
        if comp.extra.get("predicate"):
            known.append(f"what reader {comp.name!r} recognises")
    return ", ".join(known)


def table_format(path: str | Path) -> str:
    """The format name (``csv``, ``tsv``, ``jsonl``, ``parquet``, or a plugin reader's name) of ``path``.

    A compression suffix (``.gz``, ``.bz2``, ``.zip``, ``.xz``, ``.zst``) is looked through. An unknown
    format is a one-line :class:`DataError` listing the known ones, plugin readers included.
    """
    return _resolve(Path(path))[0]


def _resolve(path: Path) -> tuple[str, Component | None]:
    """``(format name, plugin reader or None)`` of ``path``: plugin suffixes, built-in suffixes, then
    plugin predicates."""
    readers = plugin_readers()
    plugin = _suffix_reader(path, readers) if readers else None
    if plugin is not None:
        return plugin.name, plugin
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = TABLE_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None and readers:
        plugin = _predicate_reader(path, readers)
        if plugin is not None:
            return plugin.name, plugin
    if fmt is None:
        raise DataError(f"cannot read {path.name!r}: unknown table format (expected one of {known_formats()})")
    return fmt, None


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
    frames, source = _read_frames(Path(path), string_columns, decimal)
    df = frames[0] if len(frames) == 1 else _join(frames)
    return parse_number_columns(df, decimal=decimal, skip=string_columns, source=source)


def read_table_blocks(path: str | Path, *, string_columns: Iterable[str] = (), decimal: str = ".") -> BlockTable:
    """:func:`read_table`'s table held as the row blocks a large CSV / TSV is parsed in, never joined (#30):
    a :class:`BlockTable` whose every column is exactly that of :func:`read_table` (dtype and values), so a
    caller can encode it block by block and free each block. Other formats and small files: one block."""
    frames, source = _read_frames(Path(path), string_columns, decimal)
    if len(frames) == 1:
        return BlockTable([parse_number_columns(frames[0], decimal=decimal, skip=string_columns, source=source)])
    table = BlockTable(frames)
    text = [c for c in table.columns if table.dtypes[c] == object]
    if text:  # the joined frame's number parsing (and its warnings), on its text columns only
        import pandas as pd

        joined = pd.DataFrame({c: table[c] for c in text}, copy=False)
        parsed = parse_number_columns(joined, decimal=decimal, skip=string_columns, source=source)
        for c in text:
            if parsed is not joined and parsed[c].dtype != object:
                table.replace(c, parsed[c].to_numpy())
    return table


class BlockTable:
    """A table held as consecutive row blocks (the frames it was parsed in), never joined (#30).

    ``table[column]`` is that whole column as one Series (the dtype of the joined frame: integers in some
    blocks and floats in others are floats); ``table[mask]`` / :meth:`take` select rows without copying;
    ``table.iloc[positions]`` is a DataFrame of those rows; :meth:`row_blocks` walks selected rows block by
    block, optionally dropping each block once the caller is done with it, so a table can be encoded into
    a matrix while its blocks are freed. ``columns`` and ``len()`` are those of a DataFrame."""

    def __init__(self, blocks: list[pd.DataFrame], rows: np.ndarray | None = None, *,
                 _base: BlockTable | None = None) -> None:
        import numpy as np

        if _base is not None:
            self._blocks, self._starts, self.columns, self.dtypes = (_base._blocks, _base._starts, _base.columns,
                                                                    _base.dtypes)
        else:
            self._blocks = list(blocks)
            self._starts = np.cumsum([0, *(len(b) for b in self._blocks)])
            self.columns = self._blocks[0].columns
            self.dtypes = {c: _joined_dtype([b[c].dtype for b in self._blocks]) for c in self.columns}
        self._rows = rows  # positions in the whole table, or None: every row in order

    def __len__(self) -> int:
        return int(self._starts[-1]) if self._rows is None else len(self._rows)

    def take(self, rows: Any) -> BlockTable:
        """The rows at ``rows`` (positions, or a boolean mask, of this table's rows), sharing the blocks."""
        import numpy as np

        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)
        return BlockTable([], rows if self._rows is None else self._rows[rows], _base=self)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._column(key)
        return self.take(key)

    def _pieces(self, rows: np.ndarray | None) -> Iterator[tuple[int, np.ndarray | slice, np.ndarray | slice]]:
        """``(block, positions in the block, positions in the output)`` of ``rows`` (positions of this table's
        rows; None: all), block by block in table order."""
        import numpy as np

        whole = self._rows if rows is None or self._rows is None else self._rows[rows]
        if whole is None:
            if rows is None:
                for b in range(len(self._blocks)):
                    yield b, slice(None), slice(int(self._starts[b]), int(self._starts[b + 1]))
                return
            whole = np.asarray(rows, dtype=np.intp)
        order = np.argsort(whole, kind="stable")
        at = np.searchsorted(whole[order], self._starts)
        for b in range(len(self._blocks)):
            if at[b] < at[b + 1]:
                out = order[at[b]:at[b + 1]]
                yield b, whole[out] - self._starts[b], out

    def _column(self, col: str) -> pd.Series:
        import numpy as np
        import pandas as pd

        if col not in self.columns:
            raise KeyError(col)
        parts, where = [], []
        for b, local, out in self._pieces(None):
            parts.append(self._block(b)[col].iloc[local])
            where.append(np.arange(out.start, out.stop) if isinstance(out, slice) else out)
        if not parts:
            return pd.Series([], dtype=self.dtypes[col], name=col)
        series = parts[0].reset_index(drop=True) if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        at = np.concatenate(where)
        if not np.array_equal(at, np.arange(len(at))):
            back = np.empty(len(at), dtype=np.intp)
            back[at] = np.arange(len(at))
            series = series.iloc[back].reset_index(drop=True)  # the order of the selection
        return series if series.dtype == self.dtypes[col] else series.astype(self.dtypes[col])

    def _block(self, b: int) -> pd.DataFrame:
        block = self._blocks[b]
        if block is None:
            raise RuntimeError("this table's blocks were released (BlockTable.row_blocks(release=True))")
        return block

    @property
    def iloc(self) -> _Rows:
        """``table.iloc[positions]``: those rows as a DataFrame (the joined frame's dtypes)."""
        return _Rows(self)

    def frame(self, rows: Any = None) -> pd.DataFrame:
        """The selected rows (``rows``: positions of this table's rows, None: all) as one DataFrame, in order."""
        import numpy as np
        import pandas as pd

        rows = None if rows is None else np.asarray(rows, dtype=np.intp)
        parts, where = [], []
        for b, local, out in self._pieces(rows):
            parts.append(self._block(b).iloc[local])
            where.append(np.arange(out.start, out.stop) if isinstance(out, slice) else out)
        if not parts:
            df = next(b for b in self._blocks if b is not None).iloc[:0]
        else:
            df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
            at = np.concatenate(where)
            if not np.array_equal(at, np.arange(len(at))):
                back = np.empty(len(at), dtype=np.intp)
                back[at] = np.arange(len(at))
                df = df.iloc[back].reset_index(drop=True)  # the order asked for
        wrong = {c: t for c, t in self.dtypes.items() if df[c].dtype != t}
        return df.astype(wrong) if wrong else df

    def row_blocks(self, rows: Any = None, *, release: bool = False) -> Iterator[tuple[pd.DataFrame, Any, Any]]:
        """``(block, positions in the block, positions in the output)`` per block holding any of ``rows``
        (positions of this table's rows, in the output's order; None: all in order). ``release``: each block is
        dropped from the table (and every table sharing it) once the caller asks for the next one."""
        import numpy as np

        rows = None if rows is None else np.asarray(rows, dtype=np.intp)
        for b, local, out in self._pieces(rows):
            block = self._block(b)
            text = {c: object for c in self.columns if self.dtypes[c] == object and block[c].dtype != object}
            yield (block.astype(text, copy=False) if text else block), local, out  # a block of only missing cells
            del block  # of a text column: text, as in the joined frame
            if release:
                self._blocks[b] = None
                release_free_memory()  # its pages (on the heap, not unmapped by free) back to the system

    def replace(self, col: str, values: np.ndarray) -> None:
        """Put ``values`` (one per row of the whole table) in column ``col`` of every block."""
        for b, block in enumerate(self._blocks):
            start, stop = int(self._starts[b]), int(self._starts[b + 1])
            block[col] = values[start:stop]
        self.dtypes[col] = values.dtype


class _Rows:
    def __init__(self, table: BlockTable) -> None:
        self.table = table

    def __getitem__(self, rows: Any) -> pd.DataFrame:
        return self.table.frame(rows)


def _joined_dtype(types: list[Any]) -> Any:
    """The dtype ``pd.concat`` gives a column of blocks typed ``types`` (one type, or integers and floats)."""
    import numpy as np

    first = types[0]
    if all(t == first for t in types):
        return first
    return np.result_type(*types)


def _read_frames(path: Path, string_columns: Iterable[str], decimal: str) -> tuple[list[pd.DataFrame], tuple[Any, ...] | None]:
    """The raw frames of ``path`` (several only for a large CSV / TSV: :func:`_read_csv_blocks`) and the file's
    identity for :func:`parse_number_columns`; every failure a one-line :class:`DataError`."""
    import pandas as pd

    if decimal not in DECIMALS:
        raise ConfigError(f"data.decimal must be one of {list(DECIMALS)}, got {decimal!r}")
    fmt, plugin = _resolve(path)
    if not path.exists() or not (plugin or path.is_file()):  # a plugin may read a folder (one file per patient)
        raise DataError(f"table not found (no such file): {path}" if not path.exists() else f"not a file: {path}")
    dtype = {c: str for c in string_columns} or None
    try:
        if plugin is not None:
            frames = [_read_with_plugin(path, plugin, list(string_columns), decimal)]
        elif fmt in ("csv", "tsv"):
            sep = csv_separator(path) if fmt == "csv" else "\t"
            frames = _read_csv_blocks(path, sep=sep, dtype=dtype, decimal=decimal)
        elif fmt == "jsonl":
            frames = _jsonl_frames(path)
        else:
            frames = [pd.read_parquet(path)]
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not valid UTF-8 (first bad byte at offset {exc.start}); "
                        "re-save the file as UTF-8") from None
    except ImportError as exc:  # no parquet engine (or a package a plugin reader needs)
        if plugin is not None:
            raise DataError(f"cannot read {path}: reader {fmt!r} ({plugin.summary or 'a plugin reader'}) needs "
                            f"a package that is not installed: {exc}") from None
        raise DataError(f"cannot read {path}: reading Parquet needs pyarrow (pip install 'medmm[parquet]'): {exc}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"cannot read {path}: the file is empty") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        # Parser messages name line numbers and sizes, never cell contents.
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {fmt.upper()}: {msg}") from None
    if sum(f.shape[0] for f in frames) == 0:
        raise DataError(f"cannot read {path}: the table has no rows")
    try:
        st = path.stat()
        source: tuple[Any, ...] | None = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        source = None
    return frames, source


#: Rows per block of a streamed ``medmm predict``: about 10 MB of features at 50 columns; small against the
#: libraries' footprint. ``MEDMM_PREDICT_CHUNK_ROWS`` sets another (a smaller one for a tight memory limit).
CHUNK_ROWS = 50_000


def chunk_rows() -> int:
    """Rows per block: ``MEDMM_PREDICT_CHUNK_ROWS`` when set (a positive integer), else :data:`CHUNK_ROWS`."""
    import os

    raw = os.environ.get("MEDMM_PREDICT_CHUNK_ROWS", "").strip()
    if not raw:
        return CHUNK_ROWS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError("MEDMM_PREDICT_CHUNK_ROWS must be a positive integer (rows per block)")
    return int(raw)


#: Files above this size are parsed in blocks of :data:`READ_BLOCK_ROWS` rows and joined: pandas' one-pass
#: parser holds every cell's token at once (about 1.1 KB per row at 35 columns, 4x the frame it makes).
READ_BLOCK_BYTES = 32 * 2**20
READ_BLOCK_ROWS = 100_000


def _read_csv_blocks(path: Path, *, sep: str, dtype: Any, decimal: str) -> list[pd.DataFrame]:
    """Frames whose join is ``pd.read_csv(path, low_memory=False)``, the frame of one pass (each column's type
    decided over all its rows). A large file is parsed in blocks (:data:`READ_BLOCK_BYTES`), kept when every
    column came out with one type, or integers in some blocks and floats in others (one pass gives floats: the
    same numbers up to 2**53); any other disagreement (a column of numbers in one block and text in another)
    is read again in one pass (one frame), so the join is always the one-pass frame."""
    import pandas as pd

    kwargs = {"sep": sep, "dtype": dtype, "encoding": "utf-8-sig", "decimal": decimal}
    if path.stat().st_size <= READ_BLOCK_BYTES:
        return [pd.read_csv(path, low_memory=False, **kwargs)]
    blocks = list(_csv_parse_blocks(path, kwargs))
    if len(blocks) > 1 and not _joinable(blocks):
        del blocks
        release_free_memory()
        return [pd.read_csv(path, low_memory=False, **kwargs)]
    return blocks


def _csv_parse_blocks(path: Path, kwargs: dict[str, Any], columns: list[str] | None = None,
                      rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The blocks of :data:`READ_BLOCK_ROWS` rows (or ``rows``) :func:`_read_csv_blocks` parses a large file in
    (``columns``: only those)."""
    import pandas as pd

    usecols = None if columns is None else (lambda c: c in columns)
    with pd.read_csv(path, low_memory=False, chunksize=rows or READ_BLOCK_ROWS, usecols=usecols, **kwargs) as reader:
        yield from reader


def raw_blocks(path: str | Path, columns: Iterable[str] | None = None,
               rows: int | None = None) -> Iterator[pd.DataFrame] | None:
    """:func:`read_table`'s table (default options) one block at a time *before* its blocks are typed alike and
    its number-like text parsed, or ``None`` where :func:`read_table` reads the file in one piece anyway (a CSV /
    TSV up to :data:`READ_BLOCK_BYTES`, compressed Parquet, plugin formats, JSON Lines with a column pandas tries
    as dates). A large CSV / TSV and a Parquet file come in blocks of ``rows`` rows (default
    :data:`READ_BLOCK_ROWS`; blocks of a CSV that join give its one-pass frame at any size), JSON Lines in
    pandas' parses of :data:`JSONL_PARSE_LINES` lines. ``columns``: only those. A consumer settles each column
    with :func:`joined_dtype` and :class:`NumberText` (what :func:`read_table` does to the joined column),
    holding one block at a time (#30)."""
    path = Path(path)
    try:
        fmt, plugin = _resolve(path)
    except DataError:
        return None
    if plugin is not None or not path.is_file() or not streams(path):
        return None
    wanted = None if columns is None else list(columns)
    if fmt == "parquet":
        return _parquet_blocks(path, rows or READ_BLOCK_ROWS, None if wanted is None else set(wanted))
    if fmt == "jsonl":
        keys = _jsonl_keys(path)
        if keys is None or any(_date_like(k) for k in keys):  # pandas tries dates on the whole column: read whole
            return None
        return _jsonl_parts(path, keys, keys if wanted is None else [k for k in keys if k in wanted])
    if fmt not in ("csv", "tsv") or path.stat().st_size <= READ_BLOCK_BYTES:
        return None
    sep = csv_separator(path) if fmt == "csv" else "\t"
    return _csv_parse_blocks(path, {"sep": sep, "dtype": None, "encoding": "utf-8-sig", "decimal": "."}, wanted, rows)


def _date_like(name: str) -> bool:
    """Whether ``pandas.read_json`` tries to read column ``name`` as dates (its default rule, by name)."""
    low = name.lower()
    return low.endswith(("_at", "_time")) or low in ("modified", "date", "datetime") or low.startswith("timestamp")


def _jsonl_parts(path: Path, keys: list[str], order: list[str]) -> Iterator[pd.DataFrame]:
    """A JSON Lines file as ``pandas.read_json``'s own parses of :data:`JSONL_PARSE_LINES` lines each (a part is the
    whole read's parser on those lines, not joined with the next), with the columns ``order`` (of the file's
    ``keys``; a key no line of the part has: missing values)."""
    import pandas as pd

    with pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False, chunksize=JSONL_PARSE_LINES) as reader:
        for part in reader:
            if list(part.columns) != order:
                if any(c not in keys for c in part.columns):  # pandas named a column otherwise: never guess
                    raise ValueError("a block has a column that is not a key of the file")
                part = part.reindex(columns=order)
            yield part


def joined_dtype(types: list[Any], largest_int: int = 0, floats_missing: bool = False) -> Any:
    """The dtype :func:`read_table` gives a column whose blocks came out typed ``types`` (``largest_int``: the
    largest magnitude of its integer blocks; ``floats_missing``: its float blocks hold only missing cells), or
    ``None`` when it reads the file again in one pass to settle the column (:func:`_joinable`): one type, integers
    and floats (floats), or text and blocks of only missing cells (text). Categorical blocks of one category type
    count as one type (their categories may differ)."""
    import numpy as np
    import pandas as pd

    if floats_missing and _text_and_missing(types):
        return np.dtype(object)

    cats = {str(t.categories.dtype) for t in types if isinstance(t, pd.CategoricalDtype)}
    if cats:
        return types[0] if len(cats) == 1 and all(isinstance(t, pd.CategoricalDtype) for t in types) else None
    if all(t == types[0] for t in types):
        return types[0]
    if not all(getattr(t, "kind", "O") in "iuf" for t in types) or largest_int > 2**53:
        return None
    return _joined_dtype(types)


class NumberText:
    """Whether :func:`parse_number_columns` turns a text column into numbers, decided from its blocks one at a
    time (:meth:`add`; :attr:`converts` after the last); :meth:`numbers` is that conversion of a block's cells
    (each value converted alone, so block by block gives the joined column's numbers)."""

    def __init__(self, decimal: str = ".") -> None:
        self.decimal, self.ok, self.text, self.grouped, self.comma = decimal, True, False, False, False

    def add(self, series: pd.Series) -> None:
        """Take one block's cells of the column into account."""
        if not self.ok:
            return
        scan = _number_scan(series, self.decimal)
        if scan is None:
            self.ok = False
            return
        text, grouped, comma = scan
        self.text, self.grouped, self.comma = self.text or text, self.grouped or grouped, self.comma or comma

    @property
    def converts(self) -> bool:
        """True when the whole column would be read as numbers (after every block was added)."""
        return self.ok and self.text and (self.grouped or (self.decimal == "," and self.comma))

    def numbers(self, series: pd.Series) -> pd.Series:
        """A block's cells of a column that :attr:`converts`, as the joined column's floats."""
        import numpy as np
        import pandas as pd

        present = series[series.notna()]
        out = np.full(len(series), np.nan)
        if not present.empty:
            distinct = pd.unique(present.to_numpy(dtype=object))
            out[series.notna().to_numpy()] = _distinct_numbers(distinct, self.decimal)[
                pd.Index(distinct, dtype=object).get_indexer(present.to_numpy(dtype=object))]
        return pd.Series(out, index=series.index, dtype="float64", name=series.name)


def _jsonl_frames(path: Path) -> list[pd.DataFrame]:
    """Frames whose join is ``pd.read_json(path, lines=True, dtype=False)``, the whole read (#30: it builds a Python
    dict per line first, about 6 GB for a 1M-row file of 35 keys). The file is parsed by pandas in parts of
    :data:`JSONL_PARSE_LINES` lines, joined into blocks of about :data:`READ_BLOCK_ROWS` rows, and kept when each
    column came out one type in every part, or integers and floats (:func:`_joinable`); otherwise, and for a
    column pandas tries as dates (it decides on the whole column) or a file that is not one object a line, the
    whole read."""
    import pandas as pd

    keys = _jsonl_keys(path)
    parts: list[pd.DataFrame] = []
    if keys is not None and not any(_date_like(k) for k in keys):
        try:
            parts = list(_jsonl_parts(path, keys, keys))
        except ValueError:  # pandas named a column otherwise (number-like keys): the whole read
            parts = []
    if not parts or not _joinable(parts):
        parts.clear()
        release_free_memory()
        return [pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False)]
    per, blocks = max(1, READ_BLOCK_ROWS // JSONL_PARSE_LINES), []
    while parts:  # each part let go once joined into its block
        group = parts[:per]
        del parts[:per]
        blocks.append(pd.concat(group) if len(group) > 1 else group[0])
        del group
    return blocks


def _join(blocks: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame of the blocks (the one-pass frame); the blocks' pages are handed back."""
    import pandas as pd

    df = pd.concat(blocks, ignore_index=True)
    blocks.clear()
    release_free_memory()  # the blocks' pages, not kept resident beside the frame
    return df


def _text_and_missing(types: Iterable[Any]) -> bool:
    """Whether a column's block types are text (object) and floats: blocks of only missing cells beside text."""
    import numpy as np

    return set(types) == {np.dtype(object), np.dtype(np.float64)}


def _joinable(blocks: list[pd.DataFrame]) -> bool:
    """Whether joining ``blocks`` gives the one-pass frame (see :func:`_read_csv_blocks`)."""
    for col in range(blocks[0].shape[1]):
        types = {b.dtypes.iloc[col] for b in blocks}
        if len(types) == 1:
            continue
        if _text_and_missing(types) and all(b.iloc[:, col].dtype == object or b.iloc[:, col].isna().all() for b in blocks):
            continue  # text, and blocks of only missing cells (read as floats): one pass gives text with NaN
        if not all(t.kind in "iuf" for t in types):
            return False
        for b in blocks:  # integers beyond 2**53 would round differently from a one-pass float parse
            values = b.iloc[:, col]
            if values.dtype.kind in "iu" and len(values) and max(int(values.max()), -int(values.min())) > 2**53:
                return False
    return True


def streams(path: str | Path) -> bool:
    """Whether :func:`read_table_chunks` reads ``path`` block by block (a CSV / TSV / JSON Lines file, or an
    uncompressed Parquet file when pyarrow is installed, read by medmm itself) rather than whole and cut
    (plugin readers, folders)."""
    path = Path(path)
    try:
        fmt, plugin = _resolve(path)
    except DataError:
        return False
    if plugin is not None or not path.is_file():
        return False
    if fmt == "parquet":
        import importlib.util

        return path.suffix.lower() not in _COMPRESSION and importlib.util.find_spec("pyarrow") is not None
    return fmt in ("csv", "tsv", "jsonl")


def read_table_chunks(path: str | Path, rows: int, *, columns: Iterable[str] | None = None,
                      decimal: str = ".", string_columns: Iterable[str] = ()) -> Iterator[pd.DataFrame]:
    """``path`` as consecutive frames of at most ``rows`` rows (index = row number in the table), so a
    caller holds one chunk at a time. CSV / TSV, JSON Lines and Parquet stream (:func:`streams`; ``columns``:
    only those the table has, at least one); plugin readers are read whole by :func:`read_table` and cut. Each
    chunk gets :func:`read_table`'s checks and number parsing; a table with no rows is a
    :class:`DataError` as there. ``string_columns`` are read as strings, as by :func:`read_table`
    (a block of digits only must not turn an identifier or a note into a number; CSV / TSV: other
    formats store types). A JSON Lines block has every column of the file, in the order of a whole read
    (a first pass collects the keys: rows may leave out keys); a Parquet block is cut from its record
    batches, with the whole file's columns and types.
    """
    import pandas as pd

    if rows < 1:
        raise ConfigError(f"chunk rows must be >= 1, got {rows}")
    path, string_columns = Path(path), list(string_columns)
    fmt, stream = _resolve(path)[0], streams(path)
    keys = _jsonl_keys(path) if fmt == "jsonl" and stream else None
    if not stream or (fmt == "jsonl" and keys is None):  # plugin readers; a JSON Lines file that is not
        df = read_table(path, decimal=decimal, string_columns=string_columns)  # one object a line: a whole read
        keep = [c for c in columns if c in df.columns] if columns is not None else None
        for start in range(0, len(df), rows):
            part = df.iloc[start:start + rows]
            yield part[keep] if keep is not None else part
        return
    if decimal not in DECIMALS:
        raise ConfigError(f"data.decimal must be one of {list(DECIMALS)}, got {decimal!r}")
    st = path.stat()
    source = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    wanted = None if columns is None else set(columns)
    n = 0
    try:
        if fmt == "jsonl":
            blocks = _jsonl_blocks(path, rows, keys or [], wanted)
        elif fmt == "parquet":
            blocks = _parquet_blocks(path, rows, wanted)
        else:
            blocks = _csv_blocks(path, rows, fmt, wanted, decimal, string_columns)
        for chunk in blocks:
            n += len(chunk)
            yield parse_number_columns(chunk, decimal=decimal, skip=string_columns, source=source)
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not valid UTF-8 (first bad byte at offset {exc.start}); "
                        "re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"cannot read {path}: the file is empty") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {fmt.upper()}: {msg}") from None
    if n == 0:
        raise DataError(f"cannot read {path}: the table has no rows")


def _csv_blocks(path: Path, rows: int, fmt: str, wanted: set[str] | None, decimal: str,
                string_columns: list[str]) -> Iterator[pd.DataFrame]:
    """A CSV / TSV file in frames of ``rows`` rows (pandas' own chunked parser)."""
    import pandas as pd

    sep = csv_separator(path) if fmt == "csv" else "\t"
    with pd.read_csv(path, sep=sep, encoding="utf-8-sig", decimal=decimal, chunksize=rows,
                     dtype={c: str for c in string_columns} or None,
                     usecols=None if wanted is None else (lambda c: c in wanted)) as reader:
        yield from reader


_JSONL_KEYS: dict[tuple[Any, ...], list[str] | None] = {}


def _jsonl_keys(path: Path) -> list[str] | None:
    """Every key of a JSON Lines file in order of first appearance (the columns of a whole read), or ``None``
    when a line is not one JSON object (the whole read then says what is wrong). One pass of ``json.loads``
    (about half of pandas' parse), remembered per file (path, size, modification time)."""
    import json

    import pandas as pd

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _JSONL_KEYS:
        return _JSONL_KEYS[key]
    keys: dict[str, None] = {}
    found: list[str] | None = None
    rows = 0
    try:
        with pd.io.common.get_handle(path, "r", encoding="utf-8-sig", compression="infer") as handle:
            for line in handle.handle:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    break
                keys.update(dict.fromkeys(obj))
                rows += 1
            else:
                found = list(keys)
    except (ValueError, OSError, EOFError):
        found = None
    if len(_JSONL_KEYS) > 64:
        _JSONL_KEYS.clear()
        _JSONL_ROWS.clear()
    _JSONL_KEYS[key] = found
    _JSONL_ROWS[key] = rows
    return found


_JSONL_ROWS: dict[tuple[Any, ...], int] = {}


def table_rows(path: str | Path) -> int | None:
    """The rows of :func:`read_table`'s table without parsing it, where the file says (#30): a Parquet file's
    metadata, a JSON Lines file's objects (counted by the pass that collects its keys, remembered); ``None``
    otherwise (CSV / TSV, plugin formats, compressed Parquet, a JSON Lines file that is not one object a line)."""
    path = Path(path)
    if not streams(path):
        return None
    fmt = _resolve(path)[0]
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if fmt == "jsonl" and _jsonl_keys(path) is not None:
            st = path.stat()
            return _JSONL_ROWS.get((str(path.resolve()), st.st_size, st.st_mtime_ns))
    except (OSError, ValueError):
        return None
    return None


#: Lines per parse of a JSON Lines file: pandas builds a Python dict per line before the frame (about 4 KB a
#: line at 35 keys), so blocks are parsed in parts of this many lines and joined.
JSONL_PARSE_LINES = 5_000


def _jsonl_blocks(path: Path, rows: int, keys: list[str], wanted: set[str] | None) -> Iterator[pd.DataFrame]:
    """A JSON Lines file in frames of exactly ``rows`` rows (the last fewer): pandas' chunked ``read_json`` with the
    whole read's options, parsed :data:`JSONL_PARSE_LINES` lines at a time and joined, each part with every key
    of the file (one no row of the part has: missing values), in the whole read's order."""
    import pandas as pd

    order = keys if wanted is None else [c for c in keys if c in wanted]
    buf: list[pd.DataFrame] = []
    have = 0
    with pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False,
                      chunksize=min(rows, JSONL_PARSE_LINES)) as reader:
        for part in reader:
            if list(part.columns) != order:
                if any(c not in keys for c in part.columns):  # pandas named a column otherwise: never guess
                    raise ValueError("a block has a column that is not a key of the file")
                part = part.reindex(columns=order)
            buf.append(part)
            have += len(part)
            while have >= rows:
                joined = buf[0] if len(buf) == 1 else pd.concat(buf)
                yield joined.iloc[:rows]
                buf, have = ([joined.iloc[rows:]] if have > rows else []), have - rows
    if have:
        yield buf[0] if len(buf) == 1 else pd.concat(buf)


#: A Parquet row group up to this size (uncompressed, from the file's metadata) is decoded whole and cut into blocks;
#: a larger one is read in batches of the block's rows.
PARQUET_GROUP_BYTES = 64 * 2**20


def _parquet_blocks(path: Path, rows: int, wanted: set[str] | None) -> Iterator[pd.DataFrame]:
    """A Parquet file in frames of exactly ``rows`` rows (the last fewer), converted as ``pandas.read_parquet``
    converts the whole file (its pandas metadata: types; a stored index is replaced by the row numbers and,
    as in a whole read, is not a column)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering held each row group's column chunks once more
    # pyarrow's default pool (mimalloc) keeps what it freed: without handing it back after each block, a 1M-row
    # file's blocks left ~120 MB resident (evaluate held about twice CSV's memory above the floor)
    release = getattr(pa.default_memory_pool(), "release_unused", None)
    meta = pf.schema_arrow.pandas_metadata or {}
    index = sorted(c for c in meta.get("index_columns", []) if isinstance(c, str))
    names = [c for c in pf.schema_arrow.names if c not in index]
    cols = names if wanted is None else [c for c in names if c in wanted]
    start, buf, have = 0, [], 0

    def frame(table: Any) -> pd.DataFrame:
        df = table.to_pandas()
        df.index = pd.RangeIndex(start, start + len(df))
        return df

    def batches() -> Iterator[Any]:
        """Each row group read on its own (a reader over the whole file kept every row group's buffers: pyarrow's
        pool grew 91 -> 319 MB over a 1M-row file of 16 row groups); one of up to PARQUET_GROUP_BYTES is decoded
        whole and cut (its batch reader held 66 MB of pool for a 19 MB row group, the whole read 29 MB), a larger
        one read in batches of ``rows``."""
        for g in range(pf.num_row_groups):
            if pf.metadata.row_group(g).total_byte_size <= PARQUET_GROUP_BYTES:
                group = pf.read_row_group(g, columns=[*cols, *index], use_pandas_metadata=True)
                yield from group.to_batches()
                del group
            else:
                yield from pf.iter_batches(batch_size=rows, row_groups=[g], columns=[*cols, *index],
                                           use_pandas_metadata=True)

    for batch in batches():
        buf.append(batch)
        have += batch.num_rows
        while have >= rows:  # batches stop at row groups: blocks of exactly `rows` rows, as a CSV's
            table = pa.Table.from_batches(buf)
            block = frame(table.slice(0, rows))
            start, have = start + rows, have - rows
            buf = table.slice(rows).to_batches()
            del table
            yield block
            del block
            if release is not None:
                release()
    if have:
        yield frame(pa.Table.from_batches(buf))


def _read_with_plugin(path: Path, reader: Component, string_columns: list[str], decimal: str) -> pd.DataFrame:
    """Call a plugin reader; its failures and anything but a DataFrame are one-line :class:`DataError` s."""
    import inspect

    import pandas as pd

    from medmm.errors import MedmmError

    fn = reader.load()
    options = {"string_columns": string_columns, "decimal": decimal}
    try:
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            options = {k: v for k, v in options.items() if k in params}
    except (TypeError, ValueError):  # no signature (a builtin): the path alone
        options = {}
    try:
        df = fn(path, **options)
    except (MedmmError, UnicodeDecodeError, ImportError, pd.errors.EmptyDataError):
        raise  # worded by the reader, or by read_table
    except Exception as exc:  # the first line only: parsers name lines and sizes, not cell contents
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise DataError(f"cannot read {path} with reader {reader.name!r}: {type(exc).__name__}"
                        f"{': ' + msg if msg else ''}") from None
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"reader {reader.name!r} returned a {type(df).__name__} for {path}, not a pandas DataFrame")
    return df


def csv_separator(path: Path) -> str:
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
    if not log.isEnabledFor(logging.WARNING):
        return True  # silenced (e.g. the data fingerprint's read): say nothing, remember nothing
    if source is None:
        return False
    key = (*source, column, decimal)
    if key in _WARNED:
        return True
    if len(_WARNED) > 1024:
        _WARNED.clear()
    _WARNED[key] = None
    return False


def _number_scan(series: pd.Series, decimal: str) -> tuple[bool, bool, bool] | None:
    """``(has non-blank text, has thousands separators, has a comma)`` of a column's cells, or ``None`` when a
    present cell is not a number in the ``decimal`` convention (or not a string). Each distinct value once."""
    import pandas as pd

    present = series[series.notna()]
    if present.empty:
        return False, False, False
    try:
        distinct = pd.unique(present.to_numpy(dtype=object))
    except TypeError:  # unhashable cells (lists in JSON Lines): not numbers
        return None
    if not all(isinstance(v, str) for v in distinct):
        return None
    text = pd.Series(distinct, dtype=object).str.strip()
    text = text[text != ""]
    if text.empty:
        return False, False, False
    grouped = text.str.fullmatch(_GROUPED[decimal])
    if not (grouped | text.str.fullmatch(_PLAIN[decimal])).all():
        return None
    return True, bool(grouped.any()), bool(text.str.contains(",", regex=False).any())


def _distinct_numbers(distinct: Any, decimal: str) -> np.ndarray:
    """The floats of distinct number strings (a blank one: NaN)."""
    import numpy as np
    import pandas as pd

    stripped = pd.Series(distinct, dtype=object).str.strip()
    text = stripped[stripped != ""]
    clean = text.str.replace(f"[{_SEPARATORS[decimal]}]", "", regex=True)
    if decimal == ",":
        clean = clean.str.replace(",", ".", regex=False)
    numbers = np.full(len(distinct), np.nan)  # a blank value stays missing
    numbers[text.index.to_numpy()] = clean.astype("float64").to_numpy()
    return numbers


def _parse_numbers(series: pd.Series, decimal: str) -> tuple[pd.Series | None, bool]:
    """``(floats, has thousands separators)`` when every value parses, else ``(None, False)``. Each distinct
    value is looked at once (a column of a few codes in a million rows makes no string per row)."""
    scan = NumberText(decimal)
    scan.add(series)
    if not scan.converts:
        return None, False
    return scan.numbers(series), scan.grouped
