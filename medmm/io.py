"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())
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


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (UTF-8) atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


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
