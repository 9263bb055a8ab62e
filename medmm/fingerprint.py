"""Data fingerprints: a resumed run must see the data it started with.

At the start of a run the data is fingerprinted into ``RUN_DIR/data_fingerprint.json``; ``--resume``
fingerprints the data it is given and refuses to continue when they differ, naming what changed.

- a table (CSV, TSV, JSONL, Parquet; read by the one table reader every task uses): the row count
  and a hash of each column's values;
- a folder (e.g. DICOM): every file's size and modification time (ns), by relative path: no file
  is read, so fingerprinting a 10-year image extract costs a directory walk, not a read of every
  byte (#30). A file rewritten in place gets a new mtime and is reported as changed; a copy of the
  folder that does not keep mtimes (``cp`` without ``-p``; ``rsync -a`` keeps them) is reported as
  changed too. Runs made before this fingerprinted folders by content (SHA-256): resuming one of
  those hashes the folder again to compare like with like;
- any other file: its content hash.

Hashes only: no cell value and no file content is written to the run directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from medmm.errors import DataError, MedmmError

FORMAT = "medmm-data-fingerprint/1"
FILE = "data_fingerprint.json"
DISPLAY = "display"  # a folder fingerprint's token -> path map: for messages to the user, never written


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _column_digest(series: Any) -> str:
    import pandas as pd

    try:
        hashed = pd.util.hash_pandas_object(series, index=False).to_numpy()
    except TypeError:  # unhashable cells (lists in JSONL): hash their text
        hashed = pd.util.hash_pandas_object(series.astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:32]


#: Rows per block the fingerprint digests a CSV / TSV or Parquet table in (a CSV block's parse holds about 1 KB
#: per row at 35 columns).
BLOCK_ROWS = 20_000


def _row_hashes(series: Any) -> Any:
    """The 64-bit hash of each cell (one cell's hash never depends on the others: a column's digest is that of
    its blocks' hashes in order)."""
    import pandas as pd

    return pd.util.hash_pandas_object(series, index=False).to_numpy()


def _table_in_blocks(path: Path) -> dict[str, Any] | None:
    """:func:`_table`'s fingerprint, holding one block of the table at a time (#30), or ``None`` where the table is
    read whole (:func:`medmm.data.readers.raw_blocks`; blocks a one-pass read settles; unhashable cells).

    Each column's digest is the SHA-256 of its cells' hashes in row order, fed block by block; an integer block
    is also hashed as floats (the column is floats when another block is), and a text column that
    :func:`medmm.data.readers.parse_number_columns` turns into numbers is hashed again as those numbers in a
    second pass over that column only."""
    import numpy as np
    import pandas as pd

    from medmm.data.readers import NumberText, joined_dtype, raw_blocks

    blocks = raw_blocks(path, rows=BLOCK_ROWS)
    if blocks is None:
        return None
    rows, names = 0, None
    digest: dict[str, Any] = {}  # column -> its cells' hashes as read
    as_float: dict[str, Any] = {}  # column -> the same, integer blocks as floats
    as_text: dict[str, Any] = {}  # column -> the same, blocks of only missing floats as text (object) cells
    floats_missing: dict[str, bool] = {}
    types: dict[str, list[Any]] = {}
    largest: dict[str, int] = {}
    text: dict[str, NumberText] = {}
    try:
        for block in blocks:
            if names is None:
                names = [str(c) for c in block.columns]
                if len(set(names)) != len(names):
                    return None
                digest = {c: hashlib.sha256() for c in names}
                as_float = {c: hashlib.sha256() for c in names}
                as_text, floats_missing = {c: hashlib.sha256() for c in names}, dict.fromkeys(names, True)
                types, largest = {c: [] for c in names}, dict.fromkeys(names, 0)
            elif [str(c) for c in block.columns] != names:
                return None
            rows += len(block)
            for c, col in zip(names, block.columns):
                values = block[col]
                types[c].append(values.dtype)
                hashed = _row_hashes(values).tobytes()
                digest[c].update(hashed)
                if values.dtype.kind in "iu":
                    if len(values):
                        largest[c] = max(largest[c], int(values.max()), -int(values.min()))
                    as_float[c].update(_row_hashes(values.astype(np.float64)).tobytes())
                else:
                    as_float[c].update(hashed)
                if values.dtype == object:
                    text.setdefault(c, NumberText()).add(values)
                    as_text[c].update(hashed)
                elif floats_missing[c] and values.dtype == np.float64 and values.isna().all():
                    as_text[c].update(_row_hashes(values.astype(object)).tobytes())
                else:
                    floats_missing[c] = False
            del block
    except (TypeError, ValueError, OSError):  # unhashable cells (lists): the whole read hashes their text; a file
        return None  # the whole read says what is wrong with
    if names is None or rows == 0:
        return None
    out: dict[str, str] = {}
    again = []
    for c in names:
        dtype = joined_dtype(types[c], largest[c], floats_missing[c])
        if dtype is None:
            return None
        if c in text and text[c].converts:
            again.append(c)
        elif isinstance(dtype, pd.CategoricalDtype) or all(t == dtype for t in types[c]):  # a cell's hash is
            # that of its value, whatever the categories beside it
            out[c] = digest[c].hexdigest()[:32]
        elif dtype == np.float64:
            out[c] = as_float[c].hexdigest()[:32]
        elif dtype == object:
            out[c] = as_text[c].hexdigest()[:32]
        else:
            return None
    if again:  # numbers written with thousands separators: their floats, block by block
        redo = {c: hashlib.sha256() for c in again}
        for block in raw_blocks(path, columns=again, rows=BLOCK_ROWS) or ():
            for c, col in zip([str(x) for x in block.columns], block.columns):
                redo[c].update(_row_hashes(text[c].numbers(block[col])).tobytes())
        out.update({c: h.hexdigest()[:32] for c, h in redo.items()})
    return {"kind": "table", "rows": rows, "columns": {c: out[c] for c in names}}


def _table(path: Path) -> dict[str, Any]:
    import logging

    from medmm.data.readers import read_table_blocks
    from medmm.io import release_free_memory

    quiet = logging.getLogger("medmm.data.readers")  # the task's own read says it (once)
    was, quiet.disabled = quiet.disabled, True
    try:
        streamed = _table_in_blocks(path)
        if streamed is not None:
            return streamed
        df = read_table_blocks(path)  # a large CSV is not joined: each column is gathered for its digest (#30)
    finally:
        quiet.disabled = was
    out = {"kind": "table", "rows": len(df), "columns": {str(c): _column_digest(df[c]) for c in df.columns}}
    del df
    release_free_memory()  # the table's pages, before the task reads it again
    return out


def _table_shape(path: Path) -> dict[str, Any] | None:
    """A table's rows and column names, read one block of one column at a time (no digests: a table of
    another shape differs whatever its values); ``None`` when ``path`` is not a table medmm reads."""
    import logging

    from medmm.data.readers import read_table_chunks, streams, table_rows

    if not streams(path):  # plugin formats, compressed Parquet are read whole anyway
        return None
    quiet = logging.getLogger("medmm.data.readers")  # the task's own read says it (once)
    was, quiet.disabled = quiet.disabled, True
    try:
        columns = [str(c) for c in next(read_table_chunks(path, 1)).columns]
        rows = table_rows(path)  # Parquet's metadata, JSON Lines' key pass: no parse
        if rows is None:
            rows = sum(len(block) for block in read_table_chunks(path, 100_000, columns=columns[:1]))
    except (DataError, StopIteration):
        return None
    finally:
        quiet.disabled = was
    return {"kind": "table", "rows": rows, "columns": dict.fromkeys(columns, "")}


def _folder(path: Path, exclude: Path | None, *, content: bool = False, keyed: bool = True) -> dict[str, Any]:
    """``keyed``: files are named by a keyed token of their relative path (a path can hold a patient id
    or a date: ``medmm.data.dicom.paths``); runs made before this named them by the path itself."""
    from medmm.data.dicom.paths import token

    files: dict[str, str] = {}
    shown: dict[str, str] = {}  # token -> relative path, in memory only (never saved)
    skip = exclude.resolve() if exclude is not None else None
    top = os.fspath(path)
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if skip is None or Path(root, d).resolve() != skip)
        rel_dir = root[len(top):].strip(os.sep).replace(os.sep, "/")  # strings and one stat per file
        for name in sorted(names):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:  # a broken link: not a file
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            key = token(rel) if keyed else rel
            shown[key] = rel
            files[key] = _file_digest(Path(full)) if content else f"{st.st_size}:{st.st_mtime_ns}"
    total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    out = {"kind": "folder", "files": len(files), "sha256": total, "per_file": files,
           **({"names": "keyed tokens", DISPLAY: shown} if keyed else {})}
    return out if content else {**out, "method": "size+mtime"}


def fingerprint(path: str | Path, *, exclude: Path | None = None, content: bool = False,
                keyed: bool = True) -> dict[str, Any]:
    """The fingerprint of a data file or folder (``exclude``: a sub-folder to leave out, e.g. the run;
    ``content``: hash a folder's files instead of recording their size and mtime)."""
    from medmm.data.readers import table_format

    path = Path(path)
    if path.is_dir():
        return _folder(path, exclude, content=content, keyed=keyed)
    try:
        table_format(path)
    except DataError:
        return {"kind": "file", "sha256": _file_digest(path)}
    return _table(path)


def _names(items: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, in words; empty when they match."""
    if old.get("kind") != new.get("kind"):
        return [f"the data was a {old.get('kind')}, now a {new.get('kind')}"]
    out: list[str] = []
    if old["kind"] == "table":
        if old["rows"] != new["rows"]:
            out.append(f"{old['rows']} rows, now {new['rows']}")
        a, b = old["columns"], new["columns"]
        if gone := [c for c in a if c not in b]:
            out.append(f"column(s) {_names(gone)} missing")
        if added := [c for c in b if c not in a]:
            out.append(f"new column(s) {_names(added)}")
        changed = [c for c in a if c in b and a[c] != b[c]]
        if changed and old["rows"] == new["rows"]:  # with other rows every column differs: no news
            out.append(f"column(s) {_names(changed)} changed")
    elif old["kind"] == "folder":
        a, b = old["per_file"], new["per_file"]
        shown = {**old.get(DISPLAY, {}), **new.get(DISPLAY, {})}
        if gone := sorted(set(a) - set(b)):
            out.append(f"{len(gone)} file(s) missing" + ("" if old.get("names") else f": {_names(gone)}"))
        if added := sorted(shown.get(k, k) for k in set(b) - set(a)):
            out.append(f"{len(added)} new file(s): {_names(added)}")
        if changed := sorted(shown.get(k, k) for k in set(a) & set(b) if a[k] != b[k]):
            out.append(f"{len(changed)} file(s) changed: {_names(changed)}")
    elif old.get("sha256") != new.get("sha256"):
        out.append("the file's content changed")
    return out


def save(run_dir: Path, data: Path, fp: dict[str, Any]) -> None:
    """Store the run's fingerprint (hashes only)."""
    from medmm.io import write_json_atomic

    fp = {k: v for k, v in fp.items() if k != DISPLAY}
    write_json_atomic(Path(run_dir) / FILE, {"format": FORMAT, "data": str(data), **fp})


def check_same_data(run_dir: Path, data: Path) -> bool:
    """Refuse (:class:`MedmmError`) when ``data`` differs from the run's; False if the run has no fingerprint."""
    from medmm.io import read_json

    stored = Path(run_dir) / FILE
    if not stored.exists():
        return False
    old = read_json(stored, format=FORMAT)
    content = old.get("kind") == "folder" and old.get("method") != "size+mtime"  # an older run's hashes
    keyed = old.get("kind") != "folder" or old.get("names") == "keyed tokens"  # older runs: paths as names
    new = _table_shape(data) if old.get("kind") == "table" else None
    if new is None or (new["rows"] == old.get("rows") and set(new["columns"]) == set(old.get("columns", {}))):
        new = fingerprint(data, exclude=Path(run_dir), content=content, keyed=keyed)  # same shape: hash the columns
    diffs = differences(old, new)
    if diffs:
        raise MedmmError(f"--resume {run_dir}: {data} is not the data this run started with "
                         f"({old.get('data')}): {'; '.join(diffs)}. Resume with the original data, "
                         f"or start a new run")
    return True
