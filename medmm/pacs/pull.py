"""``medmm pull``: DICOMweb instances into a folder, de-identified in memory on the way.

Each instance is retrieved (WADO-RS) into memory and de-identified with :mod:`medmm.deid`'s own
functions: the PS3.15 Basic profile table, the deid key, the same keyed pseudonyms and UIDs as
``medmm deid``, and its pixel pass (OCR, blank, read again) for modalities that often carry
burned-in text. It is then serialised and verified on the serialised bytes: they read back with
pydicom, no source identifier value of that instance remains in the text or the second OCR pass,
the second pass holds no date or ID-number pattern (``medmm.deid.verify.pattern_kinds``, as in
``medmm deid``), and the pixel data are the ones checked. Only then are the bytes written, atomically, under
``<study>/<series>/<instance>.dcm`` (keyed UIDs; ``layout="label"`` adds a ``<label>/`` folder).
Identified bytes live only in memory; an instance that fails anything is not written and is named
in ``skipped.csv`` (keyed instance UID, reason).

Retrieval runs on a bounded pool (``workers`` connections on threads or processes, at most
``2 x workers`` requests in flight, each holding one instance at a time: a study larger than memory
streams instance by instance). The instances of a series with ``SERIES_MIN`` or more to fetch come in
one streamed series request (fewer round trips; what the stream did not bring is retrieved alone).
Every written file is fingerprinted (SHA-256) in ``.medmm-pull/manifest.jsonl`` as it is written,
so a second pull into the same folder (after a kill, or to pick up new studies) fetches only what is
missing or changed; ``.medmm-pull/state.json`` (key id, de-id mode) is written before the first instance.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medmm.data.sources.dicomweb import DicomwebError, InstanceRef
from medmm.errors import DataError, MedmmError
from medmm.io import read_csv_rows

__all__ = ["PULL_DIR", "PullResult", "pull"]

PULL_DIR = ".medmm-pull"
MANIFEST = "manifest.jsonl"
STATE = "state.json"  # written before the first instance: the key id and whether files are de-identified
REPORT_NAME = "pull.json"
SKIPPED_NAME = "skipped.csv"
LABELS_NAME = "labels.csv"
PROCESS_MIN = 64  # instances to fetch from which ``parallel="auto"`` uses processes
# Threads: the pixel pass (decode, OCR, blank, re-encode, OCR again) runs in one worker process holding the
# engine, so that its Python pre- and post-processing does not hold the header work's GIL.
OCR_PROCESS = True
SERIES_MIN = 2  # instances of one series to fetch from which the series is retrieved in one streamed request
# Study-level attributes a report pushed back to the PACS must carry (kept in memory only).
STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "AccessionNumber", "StudyID", "ReferringPhysicianName")
_U = TypeVar("_U")
_R = TypeVar("_R")
_LABEL_KEYS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "AccessionNumber")


@dataclass
class PullResult:
    """What a pull did. Counts are safe to print; ``uid_map`` / ``studies`` hold source identifiers
    and live in memory only (they let ``--push`` reference the study the PACS knows)."""

    out: Path
    found: int = 0
    fetched: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    identifiers_checked: int = 0
    pixels_scanned: int = 0
    deidentified: bool = True
    labels_out: Path | None = None
    labels_rows: int = 0
    labels_dropped: int = 0
    seconds: float = 0.0
    uid_map: dict[str, str] = field(default_factory=dict, repr=False)
    studies: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.skipped


@dataclass(frozen=True)
class _Plan:
    """How each instance is handled (picklable: worker processes get a copy)."""

    label_attribute: str | None = None
    pixels: str = "blank"
    layout: str = "uid"  # uid: <study>/<series>/<instance>.dcm; label: <label>/<study>/...
    label_by_sop: dict[str, str] = field(default_factory=dict, repr=False)  # source SOP UID -> label (memory)
    # identifiers of every instance found (QIDO answer, memory only): a label folder holding one is keyed
    label_ids: frozenset[str] = field(default=frozenset(), repr=False)
    label_forms: frozenset[str] = field(default=frozenset(), repr=False)
    manifest: str = ""  # .medmm-pull/manifest.jsonl: a line per written file, appended as soon as it is in place


@dataclass
class _Done:
    key: str
    rel: str
    sha256: str
    size: int
    study: str
    label: str | None
    identifiers: int
    ocr: bool = False
    label_keyed: bool = False  # the label folder name held an identifier: written as a keyed token


class _Deid:
    """The in-memory de-identification of one dataset with medmm.deid's public functions: the header
    (PS3.15 table, keyed pseudonyms) and, unless ``pixels`` is ``keep``, burned-in pixel text (OCR,
    blank, read again: :mod:`medmm.deid.pixels`)."""

    def __init__(self, pseudo: Any, options: Any, pixels: str = "blank", ocr_process: bool = False) -> None:
        import threading

        from medmm.deid.dicom import load_profile
        from medmm.deid.pixels import POLICIES

        if pixels not in POLICIES:
            raise MedmmError(f"--pixels must be one of {', '.join(POLICIES)}, got {pixels!r}")
        self.pseudo, self.options, self.profile, self.pixels = pseudo, options, load_profile(), pixels
        self.ocr_process = ocr_process and OCR_PROCESS
        self._reader: Any = None
        self._pool: Any = None  # ocr_process: one worker process holding the engine
        self._lock = threading.Lock()  # one OCR engine, one image at a time
        self._loading = threading.Lock()  # loaded once, by a worker or by :meth:`preload`

    def _ocr(self) -> Any:
        from medmm.deid.pixels import TextReader

        with self._loading:
            if self._reader is None:
                self._reader = TextReader(threads=1)  # loaded on the first image in scope, or by preload
        return self._reader

    def in_scope(self, ref: InstanceRef) -> bool:
        """Whether the search says that ``ref`` gets the pixel pass (modality or SOP class; ``scan-all``:
        any). The instance itself decides (e.g. ``BurnedInAnnotation=YES``); this only plans."""
        from medmm.deid.pixels import in_scope

        return self.pixels != "keep" and in_scope({"Modality": ref.modality, "SOPClassUID": ref.sop_class},
                                                  scan_all=self.pixels == "scan-all")

    def preload(self, refs: list[InstanceRef]) -> Any:
        """Start loading the OCR engine when the search says that one of ``refs`` will get the pixel pass
        (modality or SOP class; ``scan-all``: any), so that the load overlaps retrieval instead of holding
        up the first such instance: in the OCR worker process (returns the load's future) or on a
        background thread (returns the thread); ``None`` when nothing is in scope."""
        if not any(self.in_scope(r) for r in refs):
            return None
        pool = self._ocr_pool()
        if pool is not None:  # the engine loads in its process; a missing package is reported per instance
            return pool.submit(_ocr_job, None, self.pixels)

        def load() -> None:
            with contextlib.suppress(Exception):  # a missing OCR package is reported by the instance needing it
                self._ocr()

        thread = threading.Thread(target=load, name="medmm-pull-ocr", daemon=True)
        thread.start()
        return thread

    def _ocr_pool(self) -> Any:
        """The OCR worker process (started once), or ``None``: OCR in this process. It is forked, and
        only while this process runs one thread (no lock can be held by another thread then;
        :meth:`preload` runs before the pull's threads start). Never spawned: a spawned process
        runs the caller's ``__main__`` again, which a script without a main guard does not survive."""
        import multiprocessing

        with self._loading:
            if self._pool is None and self.ocr_process:
                if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
                    self._pool = ProcessPoolExecutor(max_workers=1, initializer=_ocr_worker_init,
                                                     mp_context=multiprocessing.get_context("fork"))
                else:
                    self.ocr_process = False
        return self._pool

    def _clean(self, ds: Any) -> tuple[Any, Any]:
        """The pixel pass on ``ds``: the dataset as it will be written, and the :class:`PixelOutcome`."""
        from medmm.deid.pixels import clean_pixels

        pool = self._ocr_pool()
        if pool is not None:  # decode, OCR, blank, re-encode and OCR again off this process's GIL
            result: tuple[Any, Any] = pool.submit(_ocr_job, ds, self.pixels).result()
            return result
        with self._lock:
            return ds, clean_pixels(ds, self._ocr(), self.pixels)

    def close(self) -> None:
        """Stop the OCR worker process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def skip_reason(self, ds: Any) -> str | None:
        from medmm.deid.dicom import skip_reason

        return skip_reason(ds, pixel_pass=self.pixels != "keep")

    def __call__(self, ds: Any) -> tuple[bytes, int, bool]:
        """De-identified Part 10 bytes of ``ds``, the number of identifier values checked and whether
        the pixels went through OCR; raises :class:`ValueError` naming kinds (never values) when the
        pixel pass or the verification fails."""
        import pydicom

        from medmm.deid.dicom import deidentify_dataset, source_identifiers
        from medmm.deid.pixels import in_scope, mark_clean
        from medmm.deid.verify import IdentifierScan, pattern_kinds

        found, vocab = source_identifiers(ds, self.profile, self.options)
        scanned = self.pixels != "keep" and in_scope(ds, scan_all=self.pixels == "scan-all")
        deidentify_dataset(ds, self.pseudo, self.profile, self.options, found)
        texts: list[str] = []
        if scanned:
            ds, outcome = self._clean(ds)
            if outcome.skip:
                raise ValueError(outcome.skip)
            texts = outcome.texts_after
            if "PixelData" in ds:
                mark_clean(ds)
        before = _pixel_values(ds)  # what was (or, out of scope, was not) checked free of text
        data = _encode(ds)
        scan = IdentifierScan(found)
        ambiguous = scan.matched_values("\n".join(sorted(vocab)))
        if ambiguous:  # a value that is also a kept code word is not looked for (built again without it)
            scan = IdentifierScan({v: k for v, k in found.items() if v.casefold() not in ambiguous})
        try:
            back = pydicom.dcmread(io.BytesIO(data))
            text = _written_text(back)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"verification failed: the de-identified instance does not read back "
                             f"({type(exc).__name__})") from None
        if _pixel_values(back) != before:  # byte for byte
            raise ValueError("verification failed: pixel data changed")
        joined = "\n".join(texts)  # the second OCR pass: empty unless text was left
        if scan.scan(text, "instance") + scan.scan(joined, "pixels"):
            kinds = ", ".join(sorted(scan.result.found))
            raise ValueError(f"verification failed: source identifier(s) remain ({kinds})")
        patterns = pattern_kinds(joined)  # medmm deid's date / ID-number check of the OCR text
        if patterns:
            raise ValueError(f"verification failed: identifier patterns in the pixels ({', '.join(patterns)})")
        return data, scan.result.checked, scanned


_OCR_READER: Any = None  # the engine of the OCR worker process


def _ocr_worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _ocr_job(ds: Any, policy: str) -> tuple[Any, Any] | None:
    """In the OCR worker process: load the engine once (``ds`` ``None``: only that), then the pixel
    pass on ``ds``; returns the dataset and its outcome (texts go back to the caller, never shown)."""
    from medmm.deid.pixels import TextReader, clean_pixels

    global _OCR_READER
    if _OCR_READER is None:
        _OCR_READER = TextReader(threads=1)
    if ds is None:
        return None
    outcome = clean_pixels(ds, _OCR_READER, policy)
    return ds, outcome


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _pixel_values(ds: Any) -> tuple[bytes, ...]:
    """The raw pixel data values (native or encapsulated; empty without pixel data), for comparing the
    written pixels with the checked ones byte for byte (cheaper than hashing both: no copy, no digest)."""
    values = []
    for tag in sorted(_PIXEL_TAGS):
        if tag in ds:
            value = ds[tag].value or b""
            values.append(value if isinstance(value, bytes) else bytes(value))
    return tuple(values)
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


def _written_text(ds: Any, encodings: list[str] | None = None) -> str:
    """Every textual value of a dataset just read from bytes (file meta, nested sequences; UN / OB as
    latin-1; pixels excluded): :func:`medmm.deid.dicom.scan_text`'s coverage, read from each element's
    raw bytes (decoded with the character set) instead of converting every value: about half the cost."""
    from pydicom.charset import convert_encodings, decode_bytes
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement

    from medmm.data.dicom.scan import quiet_pydicom

    chunks: list[str] = []

    def visit(dataset: Any, encodings: list[str]) -> None:
        if 0x00080005 in dataset:  # an item may name its own character set
            encodings = convert_encodings(dataset.SpecificCharacterSet)
        for tag in list(dataset.keys()):
            if int(tag) in _PIXEL_TAGS:
                continue
            elem = dataset.get_item(tag)
            if not isinstance(elem, RawDataElement):  # already a value (file meta, a sequence)
                elem = dataset[tag]
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        visit(item, encodings)
                elif elem.VR in _TEXT_VRS:
                    values = elem.value if elem.VM > 1 else [elem.value]
                    chunks.append("\n".join(str(v) for v in values if v is not None))
                elif elem.VR in ("UN", "OB") and isinstance(elem.value, (bytes, bytearray)):
                    chunks.append(bytes(elem.value).decode("latin-1"))
                continue
            vr = elem.VR
            if vr is None:
                try:
                    vr = dictionary_VR(elem.tag)
                except KeyError:
                    vr = "UN"
            if vr == "SQ" or elem.length == 0xFFFFFFFF and vr not in _TEXT_VRS:
                sequence = dataset[tag]
                if sequence.VR == "SQ":
                    for item in sequence.value or []:
                        visit(item, encodings)
                elif isinstance(sequence.value, (bytes, bytearray)):
                    chunks.append(bytes(sequence.value).decode("latin-1"))
                continue
            raw = elem.value or b""
            if vr in _TEXT_VRS:
                chunks.append(decode_bytes(raw, encodings, {0x5C, 0x5E, 0x3D}) if vr in _CHARSET_VRS
                              else raw.decode("latin-1"))
            elif vr in ("UN", "OB"):
                chunks.append(bytes(raw).decode("latin-1"))

    with quiet_pydicom():
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            visit(meta, ["iso8859"])
        visit(ds, encodings or convert_encodings(ds.get("SpecificCharacterSet", None) or None))
    return "\n".join(chunks)


_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def _encode(ds: Any) -> bytes:
    """``ds`` as Part 10 bytes, the bytes ``ds.save_as(buffer, enforce_file_format=False)`` writes. For
    a standard, not deflated transfer syntax they are written with pydicom's own ``write_file_meta_info``
    and ``write_dataset``, as ``dcmwrite`` does, without its defensive deep copy of the file meta (a
    quarter of the writing time of a small instance): ``ds`` is dropped after this, and the only change
    to it is the group length that ``dcmwrite`` would write. Anything else goes through ``save_as``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from medmm.data.dicom.scan import quiet_pydicom

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    preamble = getattr(ds, "preamble", None)
    with quiet_pydicom():
        if (syntax is None or not syntax.is_transfer_syntax or syntax == DeflatedExplicitVRLittleEndian
                or (preamble and len(preamble) != 128)
                or any(int(t) >> 16 in (0, 2) for t in ds.keys())):  # noqa: SIM118 - `in ds` converts elements
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)  # raises what dcmwrite raises
            return buf.getvalue()
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
        if preamble:
            fp.write(preamble)
            fp.write(b"DICM")
        if meta:
            write_file_meta_info(fp, meta, enforce_standard=False)
        if "PixelData" in ds:
            ds["PixelData"].is_undefined_length = syntax.is_compressed
        write_dataset(fp, ds)
        return bytes(fp.getvalue())


def _check_out(out: Path) -> dict[str, Any] | None:
    """``out`` must be new, empty, or an earlier pull (returns its state then: key id, de-id)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise MedmmError(f"--out {out} exists and is not a folder")
    state = out / PULL_DIR / STATE
    if state.is_file():
        try:
            return dict(json.loads(state.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            raise MedmmError(f"--out {out}: {PULL_DIR}/{STATE} is damaged; pull into a new folder") from None
    if any(out.iterdir()):
        raise MedmmError(f"--out {out} is not empty and holds no earlier pull; pull into a new or empty folder "
                         "(files are never overwritten)")
    return None


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            done[str(row["key"])] = row
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill: that instance is fetched again
    return done


def _sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def _short(exc: BaseException) -> str:
    if isinstance(exc, DicomwebError):
        text = str(exc).removeprefix("DICOMweb ")
        return text.split(": ", 1)[-1] if text.startswith("retrieve") else text
    return f"{type(exc).__name__}: {str(exc)[:120]}" if not isinstance(exc, ValueError) else str(exc)[:160]


def pull(server: Any, filters: dict[str, str] | None, out: Path, *, pseudo: Any | None, options: Any = None,
         labels: Path | None = None, label_attribute: str | None = None, id_column: str | None = None,
         workers: int = 4, progress: bool = True, echo: Callable[[str], None] = print,
         limit: int | None = None, parallel: str = "auto", pixels: str = "blank",
         layout: str = "uid", select: Callable[[InstanceRef], bool] | None = None) -> PullResult:
    """Pull every instance ``server`` finds for ``filters`` (``None``: its URL's matching keys) into
    ``out`` (see the module docstring).

    ``pseudo`` is the keyed :class:`~medmm.deid.pseudonyms.Pseudonymizer` (``None`` writes the files
    as the server holds them: identified). ``labels`` is a CSV keyed by SOP / Series / Study Instance
    UID or AccessionNumber, rewritten to the pseudonyms; ``label_attribute`` makes one instead from a
    study attribute (e.g. ``BodyPartExamined``) read before de-identification. ``pixels``: the
    burned-in text policy of ``medmm deid`` (``blank`` / ``skip`` / ``keep`` / ``scan-all``). ``parallel``:
    ``threads`` (retrieval overlaps; de-identification holds the GIL), ``processes`` (``workers``
    processes, each with its own connection: de-identification on every core), or ``auto``
    (processes from ``PROCESS_MIN`` instances to fetch on, on a machine with 4 cores or more).
    ``select``: keep only the instances it accepts among those found (e.g. the studies a table names).
    """
    from medmm.deid.options import DeidOptions

    filters = server.url.filter_dict() if filters is None else dict(filters)
    out = Path(out)
    earlier = _check_out(out)
    key_id = pseudo.token("key-id", "key-id", 8) if pseudo is not None else None
    if earlier is not None and (earlier.get("key_id") != key_id or earlier.get("deidentified") != (pseudo is not None)):
        raise MedmmError(f"--out {out} holds a pull made with another de-identification key (or none); "
                         "resume with the same key, or pull into a new folder")
    if labels is not None and label_attribute:
        raise MedmmError("give --labels or --label-attribute, not both")
    label_rows = _read_labels(labels) if labels is not None else None
    if layout not in ("uid", "label"):
        raise MedmmError(f"layout must be uid or label, not {layout!r}")
    if layout == "label" and label_rows is None and not label_attribute:
        raise MedmmError("a layout by label needs --labels or --label-attribute")
    if layout == "label" and label_rows is not None and len(_label_columns(label_rows[0], id_column)) != 1:
        raise MedmmError(f"a layout by label needs exactly one label column in {labels} besides the key "
                         f"(columns: {', '.join(label_rows[0])})")
    if label_attribute:
        from pydicom.datadict import tag_for_keyword

        if tag_for_keyword(label_attribute) is None:
            raise MedmmError(f"--label-attribute {label_attribute!r} is not a DICOM keyword")
        if pseudo is not None and _identifying(label_attribute):
            raise MedmmError(f"--label-attribute {label_attribute} holds identifiers (a name, id, date or UID): "
                             "its values would be written into labels.csv; use a CSV of labels instead")
    if parallel not in ("auto", "threads", "processes"):
        raise MedmmError(f"parallel must be auto, threads or processes, not {parallel!r}")
    start = time.monotonic()

    def new_uid(uid: str) -> str:
        return pseudo.uid(uid) if pseudo is not None else uid

    echo(f"searching {server.url.where} ...")
    refs = list(server.instances(filters, STUDY_KEYWORDS))
    if select is not None:
        refs = [r for r in refs if select(r)]
    if limit is not None:
        refs = refs[:limit]
    result = PullResult(out=out, found=len(refs), deidentified=pseudo is not None)
    for ref in refs:  # in memory only: lets --push reference the study the PACS knows
        for uid in (ref.study, ref.series, ref.sop):
            result.uid_map[new_uid(uid)] = uid
        result.studies.setdefault(new_uid(ref.study), ref.attributes)
    (out / PULL_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    if earlier is None:
        from medmm.io import write_json_atomic

        write_json_atomic(out / PULL_DIR / STATE, {"format": "medmm-pull-state", "key_id": key_id,
                                                   "deidentified": pseudo is not None})
    manifest_path = out / PULL_DIR / MANIFEST
    done = _read_manifest(manifest_path)
    todo: list[InstanceRef] = []
    study_labels: dict[str, str] = {}
    fetched_keys: set[str] = set()
    for ref in refs:
        key = new_uid(ref.sop)
        row = done.get(key)
        if row is not None and _sha256(out / row["path"]) == row.get("sha256"):
            result.already += 1
            fetched_keys.add(key)
            if row.get("label") is not None:
                study_labels.setdefault(row["study"], row["label"])
        else:
            todo.append(ref)
    by_sop = _labels_by_sop(label_rows, refs, id_column) if layout == "label" and label_rows is not None else {}
    if layout == "label" and label_rows is not None:  # an instance the CSV gives no label is not fetched
        result.skipped += [(new_uid(r.sop), "no label for this instance") for r in todo if r.sop not in by_sop]
        todo = [r for r in todo if r.sop in by_sop]
    echo(f"{len(refs)} instance(s) found; {result.already} already here (fingerprints match), "
         f"{len(todo)} to fetch with {workers} connection(s)" + (f", {len(result.skipped)} without a label"
                                                                 if result.skipped else ""))

    ids, forms = _found_identifiers(refs) if layout == "label" and pseudo is not None else (frozenset(), frozenset())
    plan = _Plan(label_attribute, pixels, layout, by_sop, ids, forms, str(manifest_path))
    keyed_labels: set[str] = set()
    use_processes = parallel == "processes" or (parallel == "auto" and workers > 1 and len(todo) >= PROCESS_MIN
                                                and (os.cpu_count() or 1) >= 4)
    fetch = _Fetcher(server, pseudo, options or DeidOptions(), out, plan, ocr_process=not use_processes)
    if fetch.deid is not None and not use_processes:  # a process loads its own engine when it needs one
        fetch.deid.preload(todo)
    units = _units(todo, fetch.deid.in_scope if fetch.deid is not None and fetch.deid.ocr_process else None)
    bar = _bar(len(todo), progress)
    lock = threading.Lock()

    def report(sop: str, outcome: _Done | str) -> None:
        """One instance's outcome (its manifest line is already written): counts, labels, the bar."""
        with lock:
            if isinstance(outcome, str):
                result.skipped.append((new_uid(sop), outcome))
            else:
                result.fetched += 1
                result.identifiers_checked += outcome.identifiers
                result.pixels_scanned += outcome.ocr
                fetched_keys.add(outcome.key)
                if outcome.label is not None:
                    study_labels.setdefault(outcome.study, outcome.label)
                if outcome.label_keyed:
                    keyed_labels.add(outcome.rel.split("/", 1)[0])
            bar.update(1)

    try:
        with _pool(fetch, workers, use_processes) as pool:
            task: Callable[[tuple[InstanceRef, ...]], list[tuple[str, _Done | str]]] = \
                _fetch_in_worker if use_processes else functools.partial(fetch.unit, report=report)
            for unit, fut in _bounded(pool, task, units, 2 * max(1, workers)):
                try:
                    outcomes = fut.result()
                except MedmmError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one odd unit never stops the pull
                    outcomes = [(ref.sop, _short(exc)) for ref in unit]
                for sop, outcome in outcomes:  # threads: reported already, as each instance ended
                    report(sop, outcome)
    finally:
        bar.close()
        fetch.close()
    result.seconds = time.monotonic() - start
    from medmm.io import write_json_atomic, write_skipped

    skipped_path = out / SKIPPED_NAME
    if result.skipped:
        write_skipped(skipped_path, result.skipped, key="SOPInstanceUID")
    elif skipped_path.exists():
        skipped_path.unlink()  # an earlier pull's failures were all fetched now
    if label_rows is not None:
        _write_labels(result, label_rows, refs, fetched_keys, new_uid, pseudo, id_column)
    elif label_attribute:
        _write_attribute_labels(result, study_labels, label_attribute)
    reasons = Counter(r.split(" (")[0].split(":")[0] for _, r in result.skipped)
    result.report = {
        "format": "medmm-pull", "source": server.url.where,
        "matching_keys": sorted({k for k in filters}), "deidentified": result.deidentified,
        "key_id": key_id, "options": (options or DeidOptions()).describe() if pseudo is not None else None,
        "instances_found": result.found, "instances_fetched": result.fetched,
        "instances_already_here": result.already, "instances_skipped": len(result.skipped),
        "skipped_by_reason": dict(reasons), "complete": result.complete,
        "identifier_values_checked": result.identifiers_checked,
        "pixels": {"policy": pixels if pseudo is not None else None, "scanned_by_ocr": result.pixels_scanned},
        "labels_rows": result.labels_rows if result.labels_out else None,
        "labels_rows_left_out": result.labels_dropped if result.labels_out else None,
        "label_folders_keyed": len(keyed_labels) if layout == "label" else None,
        "seconds": round(result.seconds, 2),
    }
    write_json_atomic(out / REPORT_NAME, result.report)
    if keyed_labels:
        echo(f"{len(keyed_labels)} label folder name(s) held a date, a name or an ID and were written as keyed "
             "tokens (as medmm deid names such folders); labels.csv joins by keyed UID")
    shutil.rmtree(out / PULL_DIR / "tmp", ignore_errors=True)
    return result


class _Fetcher:
    """Retrieve instances (one, or a series in one streamed request), de-identify and verify each in
    memory, write it atomically and append its fingerprint to the manifest."""

    def __init__(self, server: Any, pseudo: Any | None, options: Any, out: Path, plan: _Plan,
                 ocr_process: bool = False):
        self.server, self.pseudo, self.options, self.plan = server, pseudo, options, plan
        self.out = Path(out)
        self.deid = _Deid(pseudo, options, plan.pixels, ocr_process) if pseudo is not None else None
        self._manifest_fd: int | None = None
        self._folders: set[Path] = set()  # folders made (set.add is atomic: threads share it)

    def worker_args(self) -> tuple[Any, ...]:
        """What a worker process needs to build the same fetcher (its own connection)."""
        return (self.server.spec(), self.pseudo, self.options, str(self.out), self.plan)

    def new_uid(self, uid: str) -> str:
        return self.pseudo.uid(uid) if self.pseudo is not None else uid

    def unit(self, refs: tuple[InstanceRef, ...],
             report: Callable[[str, _Done | str], None] | None = None) -> list[tuple[str, _Done | str]]:
        """Fetch ``refs``: one instance, or several of one series, which come in one streamed series
        request (an instance of the series that the search did not find is read past, not written; one
        the stream did not bring, or brought broken, is then retrieved alone). Each outcome (a written
        file, or the reason it was skipped) is given to ``report`` as soon as it is known, else returned."""
        outcomes: list[tuple[str, _Done | str]] = []

        def done(ref: InstanceRef, outcome: _Done | str) -> None:
            if report is not None:
                report(ref.sop, outcome)
            else:
                outcomes.append((ref.sop, outcome))

        left = {r.sop: r for r in refs}
        if len(refs) > 1:
            try:
                with self.server.series_stream(refs[0].study, refs[0].series) as parts:
                    for ds in parts:
                        ref = left.pop(str(ds.get("SOPInstanceUID", "")), None)
                        if ref is not None:
                            done(ref, self._outcome(ref, ds))
                        del ds
                        if not left:
                            break
            except MedmmError as exc:
                if not isinstance(exc, DicomwebError):
                    raise
            except Exception:  # noqa: BLE001, S110 - a broken stream or part: the rest is retrieved alone
                pass
        for ref in left.values():
            try:
                ds = self.server.retrieve(ref)
            except MedmmError as exc:
                if not isinstance(exc, DicomwebError):
                    raise
                done(ref, _short(exc))
            except Exception as exc:  # noqa: BLE001 - one odd instance never stops the pull
                done(ref, _short(exc))
            else:
                done(ref, self._outcome(ref, ds))
        return outcomes

    def _outcome(self, ref: InstanceRef, ds: Any) -> _Done | str:
        """The written file, or why the instance was skipped (kinds, never values); a configuration
        error (e.g. no OCR engine for the pixel pass) stops the pull."""
        try:
            return self(ref, ds)
        except MedmmError as exc:
            if not isinstance(exc, DicomwebError):
                raise
            return _short(exc)
        except Exception as exc:  # noqa: BLE001 - one odd instance never stops the pull
            return _short(exc)

    def __call__(self, ref: InstanceRef, ds: Any) -> _Done:
        reason = self.deid.skip_reason(ds) if self.deid is not None else None
        if reason:
            raise ValueError(reason)
        label = self.plan.label_by_sop.get(ref.sop)
        if self.plan.label_attribute:
            value = ds.get(self.plan.label_attribute)
            label = str(value.value if hasattr(value, "value") else value or "").strip() or None
        if self.plan.layout == "label" and label is None:
            raise ValueError("no label for this instance")
        folder, keyed = "", False
        if self.plan.layout == "label":
            folder = _folder_name(str(label))
            if self.pseudo is not None and _identifying_folder(folder, ds, self.plan):
                folder, keyed = "D" + self.pseudo.token(folder, "dir", 12), True  # medmm deid's folder token
        checked, scanned = 0, False
        if self.deid is not None:
            data, checked, scanned = self.deid(ds)
        else:
            data = _encode(ds)
        del ds
        key, study = self.new_uid(ref.sop), self.new_uid(ref.study)
        rel = f"{study}/{self.new_uid(ref.series)}/{key}.dcm"
        if self.plan.layout == "label":
            rel = f"{folder}/{rel}"
        dest = self.out / rel
        if dest.parent not in self._folders:  # one mkdir per series folder, not per instance
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(dest.parent)
        tmp = self.out / PULL_DIR / "tmp" / f"{key}.{os.getpid()}.part"
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        d = _Done(key, rel, hashlib.sha256(data).hexdigest(), len(data), study, label, checked, scanned, keyed)
        self._record(d)
        return d

    def _record(self, d: _Done) -> None:
        """Append the file's manifest line with one ``write`` on an O_APPEND descriptor (whole lines from
        every thread and worker process; a kill leaves at most a cut last line, which is ignored)."""
        if not self.plan.manifest:
            return
        if self._manifest_fd is None:
            self._manifest_fd = os.open(self.plan.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = json.dumps({"key": d.key, "path": d.rel, "sha256": d.sha256, "size": d.size, "study": d.study,
                           "label": d.label}) + "\n"
        os.write(self._manifest_fd, line.encode("utf-8"))

    def close(self) -> None:
        if self.deid is not None:
            self.deid.close()
        if self._manifest_fd is not None:
            os.close(self._manifest_fd)
            self._manifest_fd = None


def _units(todo: list[InstanceRef], spread: Callable[[InstanceRef], bool] | None = None) -> list[tuple[InstanceRef, ...]]:
    """The instances to fetch as work units: the instances of one series together (retrieved by one
    streamed series request when there are ``SERIES_MIN`` or more), else alone; the largest series
    first (a long series started last would leave the other connections idle at the end). Units with
    an instance ``spread`` accepts (the pixel pass, in its own process) are spread evenly among the
    others by instance count, the first one first: their OCR then runs beside the header work instead
    of after it, one image at a time."""
    by_series: dict[tuple[str, str], list[InstanceRef]] = {}
    for ref in todo:
        by_series.setdefault((ref.study, ref.series), []).append(ref)
    units: list[tuple[InstanceRef, ...]] = []
    for refs in by_series.values():
        if len(refs) >= SERIES_MIN:
            units.append(tuple(refs))
        else:
            units += [(r,) for r in refs]
    units.sort(key=len, reverse=True)  # stable: search order within a size
    if spread is None:
        return units
    heavy = [u for u in units if any(spread(r) for r in u)]
    light = [u for u in units if not any(spread(r) for r in u)]
    if not heavy or not light:
        return units
    total, done = sum(map(len, light)), 0
    ordered: list[tuple[InstanceRef, ...]] = []
    next_heavy = 0
    for unit in light:
        while next_heavy < len(heavy) and done >= next_heavy * total / len(heavy):
            ordered.append(heavy[next_heavy])
            next_heavy += 1
        ordered.append(unit)
        done += len(unit)
    return ordered + heavy[next_heavy:]


_WORKER: _Fetcher | None = None


def _init_worker(spec: tuple[Any, ...], pseudo: Any, options: Any, out: str, plan: _Plan) -> None:
    import signal

    from medmm.data.sources.dicomweb import DicomwebServer

    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _WORKER = _Fetcher(DicomwebServer.from_spec(spec), pseudo, options, Path(out), plan)


def _fetch_in_worker(unit: tuple[InstanceRef, ...]) -> list[tuple[str, _Done | str]]:
    assert _WORKER is not None
    return _WORKER.unit(unit)


def _pool(fetch: _Fetcher, workers: int, processes: bool) -> Any:
    if not processes:
        return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="medmm-pull")
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-import
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker, initargs=fetch.worker_args())


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="inst", desc="pull", disable=not enabled or total == 0, dynamic_ncols=True,
                smoothing=0.1)


def _bounded(pool: Any, fn: Callable[[_U], _R], items: list[_U], in_flight: int) -> Iterator[tuple[_U, Future[_R]]]:
    """Yield ``(item, future)`` as they finish, never more than ``in_flight`` submitted at once."""
    pending: dict[Future[_R], _U] = {}
    it = iter(items)
    try:
        for item in it:
            pending[pool.submit(fn, item)] = item
            if len(pending) >= in_flight:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield pending.pop(fut), fut
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield pending.pop(fut), fut
    finally:
        for fut in pending:
            fut.cancel()


def _read_labels(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    header, rows = read_csv_rows(path, "labels CSV")
    if not any(k in header for k in _LABEL_KEYS):
        raise DataError(f"labels CSV {path} has none of the key columns {', '.join(_LABEL_KEYS)} "
                        f"(columns: {', '.join(header)})")
    return header, rows


def _write_labels(result: PullResult, label_rows: tuple[list[str], list[dict[str, str]]],
                  refs: list[InstanceRef], fetched: set[str], new_uid: Callable[[str], str], pseudo: Any,
                  id_column: str | None) -> None:
    """The labels CSV with every key as the pulled files carry it (keyed UIDs; an AccessionNumber
    key becomes the study's StudyInstanceUID, as the accession number is removed from the files).
    Rows whose key matched no written instance are left out (counted). The written CSV is scanned
    for the source keys and fails closed."""
    from medmm.deid.verify import IdentifierScan
    from medmm.io import atomic_write

    header, rows = label_rows
    key = next(k for k in _LABEL_KEYS if k in header)
    written_refs = [r for r in refs if new_uid(r.sop) in fetched]
    have = {"SOPInstanceUID": {r.sop for r in written_refs}, "SeriesInstanceUID": {r.series for r in written_refs},
            "StudyInstanceUID": {r.study for r in written_refs}}
    by_accession = {r.accession: r.study for r in written_refs if r.accession}
    out_header = ["StudyInstanceUID" if h == "AccessionNumber" else h for h in header]
    if key == "AccessionNumber" and "StudyInstanceUID" in header:
        out_header = [h for h in header if h != "AccessionNumber"]
    identifiers: dict[str, str] = {}
    path = result.out / LABELS_NAME
    n = 0
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=out_header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            value = str(row.get(key) or "").strip()
            row = dict(row)
            if key == "AccessionNumber":
                study = by_accession.get(value)
                if study is None:
                    continue
                identifiers.setdefault(value, "accession") if len(value) >= 3 else None
                row.pop("AccessionNumber", None)
                row["StudyInstanceUID"] = study
            elif value not in have[key]:
                continue
            for col in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
                if row.get(col):
                    identifiers.setdefault(str(row[col]).strip(), "uid")
                    row[col] = new_uid(str(row[col]).strip())
            if id_column and id_column in row and pseudo is not None:
                identifiers.setdefault(str(row[id_column]).strip(), "id")
                row[id_column] = pseudo.patient_id(row[id_column] or "")
            writer.writerow(row)
            n += 1
    result.labels_out, result.labels_rows, result.labels_dropped = path, n, len(rows) - n
    if pseudo is not None:
        scan = IdentifierScan({v: k for v, k in identifiers.items() if len(v) >= 3})
        if scan.scan(path.read_text(encoding="utf-8"), LABELS_NAME):
            path.unlink()
            raise MedmmError(f"labels verification FAILED: {scan.result.remaining} source key(s) remain in the "
                             f"rewritten labels CSV ({dict(scan.result.found)}); it was not kept")


def _identifying(keyword: str) -> bool:
    """Whether a label attribute's values would identify (names, ids, dates, UIDs, free-text places)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from medmm.deid.dicom import ID_KEYWORDS

    vr = dictionary_VR(tag_for_keyword(keyword))
    return keyword in ID_KEYWORDS or vr in ("PN", "DA", "DT", "TM", "UI") or keyword.startswith("Patient") and \
        keyword not in ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")


def _label_columns(header: list[str], id_column: str | None) -> list[str]:
    return [h for h in header if h not in _LABEL_KEYS and h != id_column and h != "path"]


def _labels_by_sop(label_rows: tuple[list[str], list[dict[str, str]]], refs: list[InstanceRef],
                   id_column: str | None) -> dict[str, str]:
    """Source SOP Instance UID -> label, from a CSV keyed at any level (in memory only)."""
    header, rows = label_rows
    key = next(k for k in _LABEL_KEYS if k in header)
    column = _label_columns(header, id_column)[0]
    by_key = {str(r.get(key) or "").strip(): str(r.get(column) or "").strip() for r in rows}
    field_of = {"SOPInstanceUID": "sop", "SeriesInstanceUID": "series", "StudyInstanceUID": "study",
                "AccessionNumber": "accession"}[key]
    out = {}
    for ref in refs:
        label = by_key.get(getattr(ref, field_of))
        if label:
            out[ref.sop] = label
    return out


def _folder_name(label: str) -> str:
    """A label as one safe folder name (the class name the folder reader will see)."""
    name = re.sub(r"[^\w.+-]+", "_", label).strip("._") or "_"
    return name[:64]


def _found_identifiers(refs: list[InstanceRef]) -> tuple[frozenset[str], frozenset[str]]:
    """Patient IDs and accession numbers (3+ characters, lower case) and name forms (patient, referring
    physician) of every instance found, from the QIDO-RS answer: a label folder holding any of them is
    keyed for every instance it labels, not only for that patient's."""
    from medmm.data.dicom.paths import name_forms

    ids: set[str] = set()
    forms: set[str] = set()
    seen: set[int] = set()
    for ref in refs:
        if ref.accession and len(ref.accession.strip()) >= 3:
            ids.add(ref.accession.strip().casefold())
        if id(ref.attributes) in seen:  # one shared dict per study answer
            continue
        seen.add(id(ref.attributes))
        pid = str(ref.attributes.get("PatientID") or "").strip()
        if len(pid) >= 3:
            ids.add(pid.casefold())
        for keyword in ("PatientName", "ReferringPhysicianName"):
            forms |= name_forms(str(ref.attributes.get(keyword) or ""))
    return frozenset(ids), frozenset(forms)


def _identifying_folder(folder: str, ds: Any, plan: _Plan) -> bool:
    """Whether a label folder name holds a date, an identifier of this instance (the path-token check of
    :func:`medmm.data.dicom.paths.identifier_parts`, plus its institution's name forms), or a patient ID,
    accession number or name form of any instance found."""
    from medmm.data.dicom.paths import date_kinds, identifier_parts, institution_forms, part_matches

    if date_kinds(folder) or identifier_parts(folder, ds):
        return True
    words = {w.casefold() for w in re.findall(r"[^\W_]+", folder)}
    return folder.casefold() in plan.label_ids or bool(words & plan.label_ids) or \
        part_matches(folder, plan.label_forms | institution_forms(str(ds.get("InstitutionName", "") or "")))


def _write_attribute_labels(result: PullResult, study_labels: dict[str, str], attribute: str) -> None:
    from medmm.io import atomic_write

    path = result.out / LABELS_NAME
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["StudyInstanceUID", attribute])
        for study, label in sorted(study_labels.items()):
            writer.writerow([study, label])
    result.labels_out, result.labels_rows = path, len(study_labels)
