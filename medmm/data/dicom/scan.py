"""Header-only scan of a DICOM folder into :class:`DicomRecord` rows.

Every regular file found under the root ends up either as a record (a DICOM instance
with pixel data) or as a :class:`Skipped` entry with a short reason, so that
``len(records) + len(skipped) == files found`` always holds. Hidden directories and
directories tagged with ``CACHEDIR.TAG`` are not descended into; hidden *files* are
counted and skipped.

Patient IDs are kept in memory only (for patient-level splits); nothing in this module
prints, logs or writes them.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from medmm.data.dicom.records import CACHEDIR_TAG, DicomRecord, Skipped

__all__ = [
    "BARE_STARTS",
    "CACHEDIR_TAG",
    "LEVELS",
    "DicomRecord",
    "ImageItem",
    "Skipped",
    "decode_workers",
    "expand_frames",
    "group_key",
    "image_items",
    "list_files",
    "process_pool",
    "public_skipped",
    "quiet_pydicom",
    "real_paths",
    "scan_file",
    "scan_folder",
    "short_reason",
    "write_skipped_csv",
]

LEVELS = ("instance", "series", "study", "patient")
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel / Float / Double
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_POOL_MIN_FILES = 512  # below this a process pool costs more than it saves
_NO_PREAMBLE = "no DICM preamble"
# First element group of a DICOM stream without the 128-byte preamble: file meta (0002) or data
# set (0008), little or big endian. Anything else is not tried as DICOM at all.
BARE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
ENCODING_SYNTAX = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
              (False, False): "1.2.840.10008.1.2.2"}  # (implicit VR, little endian) -> transfer syntax


@dataclass(frozen=True)
class ImageItem:
    """One image to decode: a record and, for ``frames="all"``, the frame index."""

    record: DicomRecord
    frame: int | None = None

    @property
    def key(self) -> str:
        """Stable identifier for outputs: the public relative path (identifier components keyed),
        plus ``#<frame>`` for expanded frames."""
        path = self.record.public_path
        return path if self.frame is None else f"{path}#{self.frame}"


class _NotImage(Exception):
    """Internal: a readable DICOM file that cannot be ingested as an image."""


def list_files(root: Path) -> list[str]:
    """All regular files under ``root`` as sorted posix paths relative to it.

    Hidden directories and directories containing ``CACHEDIR.TAG`` are pruned;
    directory symlinks are not followed.
    """
    found: list[str] = []
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not os.path.exists(os.path.join(dirpath, d, CACHEDIR_TAG))
        )
        rel_dir = dirpath[len(top):].strip(os.sep).replace(os.sep, "/")  # strings: no Path per file
        prefix = f"{rel_dir}/" if rel_dir else ""
        for name in filenames:
            if os.path.isfile(os.path.join(dirpath, name)):
                found.append(prefix + name)
    return sorted(found)


def scan_folder(root: Path, workers: int = 0, *, index_dir: Path | None = None,
                stats: dict[str, int] | None = None) -> tuple[list[DicomRecord], list[Skipped]]:
    """Read every file's header under ``root`` (recursively, sorted, deterministic).

    Non-DICOM files, files without pixel data, truncated pixel data and unreadable headers
    become :class:`Skipped`. A file without the 128-byte preamble (``force=True`` in pydicom
    terms) is read when it parses and has pixel data; otherwise its reason says "no DICM
    preamble". ``workers > 0`` reads headers
    in that many processes once the folder holds at least a few hundred files.
    ``index_dir`` (e.g. ``data.cache_dir``): reuse the results of an earlier scan for every file
    whose size and mtime are unchanged (:mod:`medmm.data.dicom.header_index`). ``stats``, when
    given, receives ``files``, ``headers_read`` and ``reused`` (counts of work).
    """
    from medmm.errors import DataError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"DICOM folder not found: {root}")
    files = list_files(root)
    index = None
    known: dict[str, DicomRecord | Skipped] = {}
    if index_dir is not None:
        from medmm.data.dicom.header_index import HeaderIndex, stat_key

        index = HeaderIndex(Path(index_dir), root)
        top = os.fspath(root)
        stat = {rel: stat_key(os.path.join(top, rel)) for rel in files}
        for rel in files:
            hit = index.get(rel, stat[rel])
            if hit is not None:
                known[rel] = hit
    todo = [rel for rel in files if rel not in known]
    if workers > 0 and len(todo) >= _POOL_MIN_FILES:
        chunks = [todo[i : i + 256] for i in range(0, len(todo), 256)]
        with process_pool(workers) as pool:
            fresh = [r for part in pool.map(_scan_many, [str(root)] * len(chunks), chunks) for r in part]
    else:
        fresh = _scan_many(str(root), todo)
    known.update(zip(todo, fresh))
    if index is not None:
        for rel, result in zip(todo, fresh):
            index.put(rel, stat[rel], result)
        index.keep_only(set(files))
        index.save()
    if stats is not None:
        stats.update(files=len(files), headers_read=len(todo), reused=len(files) - len(todo))
    results = [known[rel] for rel in files]
    records = [r for r in results if isinstance(r, DicomRecord)]
    skipped = public_skipped([r for r in results if isinstance(r, Skipped)], records)
    return records, skipped


def public_skipped(skipped: Sequence[Skipped], records: Sequence[DicomRecord]) -> list[Skipped]:
    """Skipped files named as outputs show them: under a folder that a record's header marks as an
    identifier, that folder's token; any component holding a date, a token."""
    if not skipped:
        return []
    from medmm.data.dicom.paths import date_kinds, public_path

    prefixes: dict[tuple[str, ...], int] = {}
    for rec in records:
        parts = Path(rec.path).parts
        for i in rec.id_parts:
            if i < len(parts) - 1:
                prefixes[parts[: i + 1]] = i
    out = []
    for s in skipped:
        parts = Path(s.path).parts
        hits = {i for i in range(len(parts)) if parts[: i + 1] in prefixes or date_kinds(parts[i])}
        out.append(Skipped(public_path(s.path, tuple(sorted(hits))), s.reason) if hits else s)
    return out


def decode_workers(num_workers: int | None) -> int:
    """Worker processes for scanning / decoding DICOM (the image tasks): ``engine.num_workers`` when
    set, else the CPU count; at least 1, at most 4."""
    return max(1, min(4, num_workers or (os.cpu_count() or 1)))


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers start clean but fast.

    ``forkserver`` (where available) forks workers from a server process that imported
    the DICOM stack once; unlike plain ``fork`` it never copies a parent's threads (torch
    starts several), and it avoids ``spawn``'s full interpreter start per worker.
    """
    methods = get_all_start_methods()
    if "forkserver" in methods:
        context = get_context("forkserver")
        context.set_forkserver_preload(["medmm.data.dicom.cache"])
    else:
        context = get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _scan_many(root: str, rel_paths: Sequence[str]) -> list[DicomRecord | Skipped]:
    return [scan_file(Path(root), rel) for rel in rel_paths]


def scan_file(root: Path, rel_path: str) -> DicomRecord | Skipped:
    """Header-only read of one file; never raises for bad input."""
    if Path(rel_path).name.startswith("."):
        return Skipped(rel_path, "hidden file")
    try:
        with quiet_pydicom():
            return _read_record(root / rel_path, rel_path)
    except _NotImage as exc:
        return Skipped(rel_path, str(exc))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a per-file skip
        return Skipped(rel_path, short_reason(exc))


class _QuietFilter(logging.Filter):
    """Drops pydicom's records below ERROR while any :func:`quiet_pydicom` block is open.

    A filter, not ``Logger.setLevel``: each ``setLevel`` clears the level cache of every logger
    in the process (hundreds once transformers is imported), twice per file read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.depth == 0 or record.levelno >= logging.ERROR


_QUIET = _QuietFilter()


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and warning logs, which may quote element values (PHI)."""
    logger = logging.getLogger("pydicom")
    with _QUIET.lock:
        _QUIET.depth += 1
        logger.addFilter(_QUIET)  # once: a logger keeps one copy of a filter
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with _QUIET.lock:
            _QUIET.depth -= 1


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A one-line, bounded description of ``exc`` for skip reports."""
    from pydicom.errors import InvalidDicomError

    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no DICM preamble / file meta)"
    message = " ".join(str(exc).split())  # decoder plugins report on several lines
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_record(path: Path, rel_path: str) -> DicomRecord:
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    found: dict[str, int] = {}

    def at_pixels(tag: int, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            found["tag"], found["length"] = int(tag), length
            found["header"] = 12 if vr in ("OB", "OW", "OF", "OD", "UN") else 8
            return True
        return False

    with open(path, "rb") as fp:
        try:
            ds = read_partial(fp, stop_when=at_pixels, force=False)
        except InvalidDicomError:
            ds = _read_bare(fp, at_pixels, found)  # no preamble: a bare data set, when it is one
            try:
                return _record(ds, path, rel_path, fp.tell(), found, bare=True)
            except _NotImage as exc:
                raise _NotImage(f"not a DICOM file ({_NO_PREAMBLE}; {exc})") from None
        return _record(ds, path, rel_path, fp.tell(), found, bare=False)


def _read_bare(fp, stop_when, found: dict[str, int]):
    """Parse a stream without preamble (``force=True``) if it starts like DICOM; else ``_NotImage``."""
    from pydicom.filereader import read_partial

    fp.seek(0)
    if fp.read(2) not in BARE_STARTS:
        raise _NotImage(f"not a DICOM file ({_NO_PREAMBLE} / file meta)")
    fp.seek(0)
    found.clear()
    try:
        return read_partial(fp, stop_when=stop_when, force=True)
    except Exception as exc:  # noqa: BLE001 - not parseable without the preamble either
        raise _NotImage(f"not a DICOM file ({_NO_PREAMBLE}; {short_reason(exc, 100)})") from None


def _record(ds, path: Path, rel_path: str, offset: int, found: dict[str, int], *, bare: bool) -> DicomRecord:
    from medmm.data.dicom.paths import identifier_parts

    if not found:
        raise _NotImage("no pixel data")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if not syntax and bare:  # a bare data set: its encoding names the (native) transfer syntax
        syntax = ENCODING_SYNTAX.get(tuple(getattr(ds, "original_encoding", ()) or ()), "")
    if not syntax:
        raise _NotImage("no transfer syntax in file meta")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows < 1 or cols < 1:
        raise _NotImage("missing or zero Rows/Columns")
    frames = max(1, _int(ds, "NumberOfFrames", default=1))
    _check_length(ds, path, syntax, offset, found)
    return DicomRecord(
        path=rel_path,
        patient_id=_str(ds, "PatientID"),
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        sop_uid=_str(ds, "SOPInstanceUID"),
        modality=_str(ds, "Modality").upper(),
        rows=rows,
        cols=cols,
        frames=frames,
        transfer_syntax=syntax,
        photometric=_str(ds, "PhotometricInterpretation").upper(),
        id_parts=identifier_parts(rel_path, ds),
    )


def _check_length(ds, path: Path, syntax: str, offset: int, found: dict[str, int]) -> None:
    """Reject pixel data that is cut off, using only the element header and file size."""
    length = found["length"]
    if length == _UNDEFINED_LENGTH or syntax == _DEFLATED:
        return  # encapsulated or deflated: the decoder finds out
    available = path.stat().st_size - offset - found["header"]
    if length > available:
        raise _NotImage(f"truncated pixel data ({max(available, 0)} of {length} bytes)")
    if syntax in _NATIVE and found["tag"] == 0x7FE00010:
        try:
            from pydicom.pixels.utils import get_expected_length

            expected = get_expected_length(ds)
        except Exception:  # noqa: BLE001 - incomplete image module; decoding will tell
            return
        if length < expected:
            raise _NotImage(f"pixel data shorter than expected ({length} of {expected} bytes)")


def _str(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int(ds, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _NotImage(f"invalid {keyword}") from None


def write_skipped_csv(skipped: Iterable[Skipped], path: Path) -> Path | None:
    """``path,reason`` rows (relative paths only, no header values) through the one skipped.csv
    writer, :func:`medmm.io.write_skipped` (tasks: :meth:`medmm.task.Task.write_skipped`)."""
    from medmm.io import write_skipped

    return write_skipped(path, ((s.path, s.reason) for s in skipped), key="path")


def expand_frames(records: Iterable[DicomRecord]) -> list[ImageItem]:
    """One :class:`ImageItem` per frame of every record (``frames="all"``)."""
    return [ImageItem(rec, i) for rec in records for i in range(rec.frames)]


def image_items(records: Iterable[DicomRecord], frames: str = "middle") -> list[ImageItem]:
    """Items to decode for a ``PixelConfig.frames`` mode: expanded for ``"all"``."""
    records = list(records)
    return expand_frames(records) if frames == "all" else [ImageItem(r) for r in records]


def group_key(record: DicomRecord | ImageItem, level: str) -> str:
    """Key that groups images for aggregation (``instance|series|study``) or splits (``patient``).

    Missing identifiers fall back to the next finer level (patient -> study -> series ->
    path), so files without IDs are never merged into one large group. Frames of one
    instance share the instance key. The ``patient`` key is the raw PatientID: keep it
    in memory, never write it out.
    """
    rec = record.record if isinstance(record, ImageItem) else record
    if level not in LEVELS:
        from medmm.errors import DataError

        raise DataError(f"unknown grouping level {level!r}; expected one of {', '.join(LEVELS)}")
    ids = {"patient": rec.patient_id, "study": rec.study_uid, "series": rec.series_uid}
    coarse_to_fine = ("patient", "study", "series")
    chain = coarse_to_fine[coarse_to_fine.index(level):] if level in ids else ()
    return next((f"{name}:{ids[name]}" for name in chain if ids[name]), f"path:{rec.public_path}")


def real_paths(root: Path, public: Iterable[str]) -> dict[str, str]:
    """``public path -> relative path`` under ``root`` for the given public paths (what outputs show
    back to the files; headers of every file under ``root`` are read once)."""
    wanted = set(public)
    records, _ = scan_folder(root)
    return {rec.public_path: rec.path for rec in records if rec.public_path in wanted}
