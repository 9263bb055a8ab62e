"""A reusable index of a DICOM folder's headers, keyed by (relative path, size, mtime_ns).

:func:`~medmm.data.dicom.scan.scan_folder` reads one header per file; on a 10-year extract
that is most of an image run's ingest. With an index directory (an image task's
``data.cache_dir``), a second scan of the same folder reads no header whose file kept its
size and modification time, and re-reads only the files that are new or changed (#30).
File contents are never hashed for this: as in the pixel cache, a tool that rewrites a
file changes its mtime.

The index sits under the cache directory (``CACHEDIR.TAG``), one JSON file per scanned root
(named by a hash of the root's absolute path), written atomically, readable by its owner
only. It holds what a scan yields, the PatientID included (patient-level splits need it):
it belongs with the data, under the same access rules as the pixel cache beside it.
A damaged or foreign index file is ignored (the folder is scanned again), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import astuple, fields
from pathlib import Path

from medmm.data.dicom.records import CACHEDIR_TAG, DicomRecord, Skipped

__all__ = ["FORMAT", "HeaderIndex", "stat_key"]

FORMAT = "medmm-dicom-header-index/1"
_RECORD_FIELDS = [f.name for f in fields(DicomRecord)]
_TAG_TEXT = "Signature: 8a477f597d28d172789f06886806bc55\n# DICOM header index created by medmm.\n"


def stat_key(path: str | Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


class HeaderIndex:
    """Scan results of one folder by relative path, valid while size and mtime are unchanged."""

    def __init__(self, index_dir: Path, root: Path) -> None:
        name = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:24]
        self.file = Path(index_dir) / "dicom-headers" / f"{name}.json"
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            payload = json.loads(self.file.read_text(encoding="utf-8"))
            if payload.get("format") == FORMAT and isinstance(payload.get("entries"), dict):
                self.entries = payload["entries"]
        except (OSError, ValueError, AttributeError):
            self.entries = {}

    def get(self, rel_path: str, stat: tuple[int, int] | None) -> DicomRecord | Skipped | None:
        """The stored result for ``rel_path`` if the file still has this size and mtime."""
        entry = self.entries.get(rel_path)
        if stat is None or not isinstance(entry, list) or len(entry) < 3 or tuple(entry[:2]) != stat:
            return None
        try:
            if entry[2] == "skipped":
                return Skipped(rel_path, str(entry[3]))
            values = dict(zip(_RECORD_FIELDS, entry[3]))
            values["path"], values["id_parts"] = rel_path, tuple(values["id_parts"])
            return DicomRecord(**values)
        except (IndexError, TypeError, KeyError):
            return None

    def put(self, rel_path: str, stat: tuple[int, int] | None, result: DicomRecord | Skipped) -> None:
        """Remember one scan result (files that could not be stat'ed are not remembered)."""
        if stat is None:
            return
        if isinstance(result, Skipped):
            self.entries[rel_path] = [*stat, "skipped", result.reason]
        else:
            self.entries[rel_path] = [*stat, "record", list(astuple(result))]
        self.changed = True

    def keep_only(self, rel_paths: set[str]) -> None:
        """Forget files no longer in the folder."""
        gone = [k for k in self.entries if k not in rel_paths]
        for k in gone:
            del self.entries[k]
        self.changed = self.changed or bool(gone)

    def save(self) -> None:
        """Write the index atomically (owner-only permissions) when anything changed."""
        if not self.changed:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tag = self.file.parent / CACHEDIR_TAG  # backups and folder scans skip it
        if not tag.exists():
            tag.write_text(_TAG_TEXT, encoding="utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "entries": self.entries}, f, separators=(",", ":"))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.changed = False
