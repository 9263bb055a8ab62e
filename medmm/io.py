"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs a subprocess), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``): after a large table is
    read and dropped, its freed blocks otherwise stay resident while later large arrays take new pages
    (#30). ``False`` where there is no glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed.

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``. The file gets the
    permissions a plain ``open`` would give it (``mkstemp`` would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def json_safe(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as strict-JSON-ready Python: NaN / infinity -> ``None``, numpy scalars and arrays -> Python
    numbers and lists, tuples and sets -> lists, mapping keys -> ``str``, paths -> ``str``. Anything else goes
    through ``default`` (e.g. ``str``), or is a ``TypeError`` as in :func:`json.dumps`."""
    if isinstance(obj, dict) or (hasattr(obj, "items") and callable(obj.items)):
        return {str(k): json_safe(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v, default) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array
        return json_safe(obj.tolist(), default)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if default is not None:
        return json_safe(default(obj))
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps_json(payload: Any, indent: int | None = 1, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``payload`` (through :func:`json_safe`): never ``NaN`` or ``Infinity``."""
    return json.dumps(json_safe(payload, default), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, payload: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as indented strict JSON (UTF-8, :func:`dumps_json`) atomically: the one JSON
    writer of medmm's outputs."""
    return write_text_atomic(path, dumps_json(payload, default=default) + "\n")


def read_json(path: str | Path, *, format: str | None = None) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json_atomic`; ``format`` must match its ``"format"``.

    Anything unreadable, malformed or of another format is a :class:`~medmm.errors.DataError`
    naming the file.
    """
    from medmm.errors import DataError

    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        if format is not None and payload.get("format") != format:
            raise ValueError(f"not a {format} file")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return payload


def read_csv_rows(path: str | Path, what: str = "CSV") -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a small CSV read as text (BOM tolerated); a file that cannot be read is a
    :class:`~medmm.errors.DataError` naming the kind of failure, never the file's content."""
    from medmm.errors import DataError

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {what} {path}: {type(exc).__name__}") from None


def write_skipped(path: str | Path, rows: Iterable[tuple[str, str]], key: str = "id") -> Path | None:
    """Write a ``key,reason`` report of inputs that were not used; no rows: no file (a stale one is removed).

    Keys are row ids or relative paths and reasons are fixed phrases: never cell contents (PHI).
    """
    rows = list(rows)
    path = Path(path)
    if not rows:
        path.unlink(missing_ok=True)
        return None
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key, "reason"])
        writer.writerows(rows)
    return path
