"""De-identify a DICOM folder (plus an optional labels CSV), then verify the result.

Everything is written into a hidden staging folder beside ``out``; only when every output file
reads back with pydicom, every pixel hash matches and no source identifier value remains is it
renamed to ``out``. Otherwise it is deleted and the run fails naming kinds and places, not values.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medmm.deid.options import DeidOptions
from medmm.deid.pseudonyms import Pseudonymizer
from medmm.errors import DataError, MedmmError
from medmm.io import current_umask, read_csv_rows

__all__ = ["FolderResult", "check_output_dir", "deidentify_folder"]

_UID_COLUMNS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
REPORT_NAME = "deid.json"
SKIPPED_NAME = "skipped.csv"
PARTIAL_MARK = ".medmm-deid-partial"  # in every staging folder: the pid of the run that owns it


@dataclass
class FolderResult:
    """What a folder run did (counts only: safe to print)."""

    out: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    patients: int = 0
    identifiers_checked: int = 0
    remaining: int = 0
    pixels_checked: int = 0
    pixel_counts: Counter[str] = field(default_factory=Counter)  # scanned / blanked / no text / skipped
    stale_removed: int = 0
    labels_out: Path | None = None
    labels_rows: int = 0
    labels_dropped: int = 0
    report: dict[str, Any] = field(default_factory=dict)


def check_output_dir(src: Path, out: Path) -> None:
    """Refuse an output inside the input (or the input itself) and a non-empty output folder."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise MedmmError(f"--out {out} is inside the input {src}; choose a folder outside it")
    if out_r in src_r.parents:
        raise MedmmError(f"--out {out} contains the input {src}; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedmmError(f"--out {out} exists and is not empty; de-identified data go into a new or empty "
                         "folder")


def remove_stale_partials(*folders: Path) -> int:
    """Remove staging folders (``.NAME.partial-*`` holding :data:`PARTIAL_MARK`) that an interrupted
    ``medmm deid`` left in ``folders``; a folder whose owning process still runs is kept."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for stale in folder.glob(".*.partial-*"):
            mark = stale / PARTIAL_MARK
            if not stale.is_dir() or not mark.is_file():
                continue  # not medmm's
            try:
                pid = int(mark.read_text(encoding="ascii").strip())
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and pid != os.getpid() and _alive(pid):
                continue
            shutil.rmtree(stale, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _out_relpath(rel: str, pseudo: Pseudonymizer, scan: Any, patient_ids: dict[str, str],
                 forms: set[str], uids: set[str]) -> str:
    """Same folders, keyed file name; a folder named after a patient id becomes its pseudonym, one
    named after a source UID (``PATIENTID/STUDYUID/``) the keyed UID its files now carry, and any
    other folder name holding an identifier, a date or a name / institution form a keyed token."""
    from medmm.data.dicom.paths import date_kinds, part_matches

    p = PurePosixPath(rel)
    parts = []
    for part in p.parent.parts:
        if part in patient_ids:
            parts.append(patient_ids[part])
        elif part in uids:
            parts.append(pseudo.uid(part))
        elif scan.matched_values(part) or date_kinds(part) or part_matches(part, forms):
            parts.append("D" + pseudo.token(part, "dir", 12))
        else:
            parts.append(part)
    return PurePosixPath(*parts, f"{pseudo.token(rel, 'file', 20)}.dcm").as_posix()


def path_problems(rel_out: str, forms: dict[str, set[str]]) -> list[str]:
    """Kinds of identifier found in the components of an output path: ``date``, ``name form``,
    ``institution`` (``forms``: kind -> lower-case forms)."""
    from medmm.data.dicom.paths import date_kinds, part_matches

    kinds: list[str] = []
    for part in PurePosixPath(rel_out).parts:
        if date_kinds(part):
            kinds.append("date")
        kinds.extend(kind for kind, f in forms.items() if part_matches(part, f))
    return sorted(set(kinds))


def _read_labels(path: Path, id_column: str) -> tuple[list[str], list[dict[str, str]]]:
    header, rows = read_csv_rows(path, "labels CSV")
    if id_column not in header:
        raise DataError(f"labels CSV {path} has no column {id_column!r} (columns: {', '.join(header)})")
    return header, rows


def deidentify_folder(src: Path, out: Path, pseudo: Pseudonymizer, options: DeidOptions,
                      labels: Path | None = None, id_column: str = "patient_id",
                      progress: Callable[[str], None] | None = None, pixels: str = "blank",
                      skipped_report: Path | None = None, stale_removed: int = 0) -> FolderResult:
    """De-identify every DICOM file under ``src`` into ``out`` (see the module docstring).

    ``pixels``: ``blank`` (default) / ``skip`` / ``keep`` / ``scan-all`` (:mod:`medmm.deid.pixels`);
    ``skipped_report``: a path outside ``out`` for the skipped files under their real names;
    ``stale_removed``: staging folders of killed runs the caller already removed (for the report)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medmm.data.dicom.paths import institution_forms, name_forms
    from medmm.data.dicom.scan import list_files, quiet_pydicom, short_reason
    from medmm.deid.dicom import (
        deidentify_dataset,
        load_profile,
        pixel_hash,
        scan_text,
        skip_reason,
        source_identifiers,
    )
    from medmm.deid.pixels import POLICIES, TextReader, clean_pixels, in_scope, mark_clean
    from medmm.deid.verify import IdentifierScan, pattern_kinds

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"DICOM folder not found: {src}")
    if pixels not in POLICIES:
        raise MedmmError(f"--pixels must be one of {', '.join(POLICIES)}, got {pixels!r}")
    stale = stale_removed + remove_stale_partials(out.parent, out)
    check_output_dir(src, out)
    if skipped_report is not None:
        rep = Path(skipped_report).resolve()
        if rep == out.resolve() or out.resolve() in rep.parents:
            raise MedmmError("--skipped-report must lie outside --out (it names source files)")
        if rep.exists():
            raise MedmmError(f"--skipped-report {skipped_report} exists; it is never overwritten")
    reader = TextReader() if pixels != "keep" else None
    header: list[str] = []
    label_rows: list[dict[str, str]] = []
    if labels is not None:
        if labels.resolve().parent == out.resolve() or out.resolve() in labels.resolve().parents:
            raise MedmmError(f"--labels {labels} is inside --out {out}")
        header, label_rows = _read_labels(labels, id_column)
    profile = load_profile()
    say = progress or (lambda _msg: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (stage / PARTIAL_MARK).write_text(str(os.getpid()), encoding="ascii")
    try:
        result = FolderResult(out=out, stale_removed=stale)
        pixel_texts: dict[str, list[str]] = {}  # source path -> text the second OCR pass read
        forms: dict[str, set[str]] = {"name form": set(), "institution": set()}
        identifiers: dict[str, str] = {}
        hashes: dict[str, str | None] = {}
        path_map: dict[str, str] = {}
        patients: set[str] = set()
        vocab: set[str] = set()
        files = list_files(src)
        say(f"{len(files)} file(s) under {src}")
        for i, rel in enumerate(files, 1):
            if i % 1000 == 0:
                say(f"  {i}/{len(files)} file(s) read")
            if PurePosixPath(rel).name.startswith("."):
                result.skipped.append((rel, "hidden file"))
                continue
            try:
                with quiet_pydicom(), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ds = pydicom.dcmread(src / rel)
                if any("End of file" in str(w.message) for w in caught):
                    result.skipped.append((rel, "truncated (the file ends inside an element)"))
                    continue
            except InvalidDicomError:
                ds = _read_bare(src / rel)  # no preamble: a bare data set, as the training scan accepts
                if ds is None:
                    result.skipped.append((rel, "not a DICOM file (no DICM preamble / file meta)"))
                    continue
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
                result.skipped.append((rel, f"unreadable: {short_reason(exc)}"))
                continue
            reason = skip_reason(ds, pixel_pass=reader is not None)
            if reason:
                result.skipped.append((rel, reason))
                continue
            try:
                found, kept_vocab = source_identifiers(ds, profile, options)
                forms["name form"] |= name_forms(str(ds.get("PatientName", "") or ""))
                forms["institution"] |= institution_forms(str(ds.get("InstitutionName", "") or ""))
                scanned = reader is not None and in_scope(ds, scan_all=pixels == "scan-all")
                patient = str(ds.get("PatientID", "") or "").strip()
                deidentify_dataset(ds, pseudo, profile, options, found)
                tmp_rel = f".staging/{pseudo.token(rel, 'file', 20)}.dcm"
                encoding: dict[str, bool] = {}
                texts_after: list[str] | None = None
                if scanned:
                    outcome = clean_pixels(ds, reader, pixels)
                    result.pixel_counts["scanned"] += 1
                    if outcome.skip:
                        result.pixel_counts["skipped"] += 1
                        result.skipped.append((rel, outcome.skip))
                        continue
                    result.pixel_counts["blanked" if outcome.blanked else "no text"] += 1
                    if outcome.reencoded and outcome.reencoded != "same":
                        result.pixel_counts[f"re-encoded {outcome.reencoded}"] += 1
                    if outcome.reencoded:  # written in the (possibly new) transfer syntax's encoding
                        syntax = ds.file_meta.TransferSyntaxUID
                        encoding = {"implicit_vr": syntax.is_implicit_VR,
                                    "little_endian": syntax.is_little_endian}
                    texts_after = outcome.texts_after
                    if result.pixel_counts["scanned"] % 10 == 0:
                        say(f"  pixels: {result.pixel_counts['scanned']} file(s) read by OCR")
                    if "PixelData" in ds:
                        mark_clean(ds)
                elif reader is None and in_scope(ds):
                    result.pixel_counts["not scanned (--pixels keep)"] += 1
                before = pixel_hash(ds)  # what was (or, unscanned, was not) verified free of text
                patients.add(patient)
                (stage / tmp_rel).parent.mkdir(parents=True, exist_ok=True)
                with quiet_pydicom():
                    if encoding:  # new pixel data: write in its transfer syntax's encoding (big endian too)
                        pydicom.dcmwrite(stage / tmp_rel, ds, enforce_file_format=False, **encoding)
                    else:
                        ds.save_as(stage / tmp_rel, enforce_file_format=False)
            except Exception as exc:  # noqa: BLE001
                result.skipped.append((rel, f"could not be de-identified: {short_reason(exc)}"))
                continue
            if texts_after is not None:  # written: its second pass is part of the verification
                pixel_texts[rel] = texts_after
            identifiers.update(found)
            vocab.update(kept_vocab)
            hashes[rel] = before
            path_map[rel] = tmp_rel
            result.written += 1
        result.patients = len(patients)
        # final places: folders kept unless their names hold identifiers, file names keyed
        folder_scan = IdentifierScan({v: k for v, k in identifiers.items() if k != "uid"})
        patient_ids = {p: pseudo.patient_id(p) for p in patients if p}
        uid_values = {v for v, k in identifiers.items() if k == "uid"}
        for rel in list(path_map):
            dest_rel = _out_relpath(rel, pseudo, folder_scan, patient_ids,
                                    forms["name form"] | forms["institution"], uid_values)
            (stage / dest_rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / path_map[rel], stage / dest_rel)
            hashes[dest_rel] = hashes.pop(rel)
            path_map[rel] = dest_rel
        shutil.rmtree(stage / ".staging", ignore_errors=True)

        if labels is not None:
            result.labels_out = stage / labels.name
            result.labels_rows = _write_labels(result.labels_out, header, label_rows, id_column, pseudo,
                                               path_map, src)
            result.labels_dropped = len(label_rows) - result.labels_rows
            for row in label_rows:
                value = str(row.get(id_column) or "").strip()
                if len(value) >= 3:
                    identifiers.setdefault(value, "id")
        from medmm.io import write_skipped

        # inside the output, skipped files are named by keyed token (their names may identify)
        write_skipped(stage / SKIPPED_NAME, [(pseudo.token(r, "file", 20), why) for r, why in result.skipped],
                      key="file_token")

        # ---- verification: re-read everything that was written
        ambiguous = IdentifierScan(identifiers).matched_values("\n".join(sorted(vocab)))
        ambiguous_kinds = Counter(k for v, k in identifiers.items() if v.casefold() in ambiguous)
        identifiers = {v: k for v, k in identifiers.items() if v.casefold() not in ambiguous}
        say(f"verifying {result.written} file(s) against {len(identifiers)} source identifier value(s)")
        scan = IdentifierScan(identifiers)
        unreadable: list[str] = []
        pixel_mismatch: list[str] = []
        for dest_rel, before in hashes.items():
            try:
                with quiet_pydicom():
                    back = pydicom.dcmread(stage / dest_rel)
                    text = scan_text(back)
            except Exception:  # noqa: BLE001
                unreadable.append(dest_rel)
                continue
            if pixel_hash(back) != before:
                pixel_mismatch.append(dest_rel)
            result.pixels_checked += before is not None
            scan.scan(text, dest_rel)
        pattern_hits: Counter[str] = Counter()
        for rel, texts in pixel_texts.items():  # the second OCR pass: empty unless text was left
            place = f"{path_map[rel]} (pixels)"
            joined = "\n".join(texts)
            scan.scan(joined, place)
            pattern_hits.update(f"{k} in pixels" for k in pattern_kinds(joined))
        for path in sorted(stage.rglob("*")):
            rel_out = path.relative_to(stage).as_posix()
            if rel_out == PARTIAL_MARK:
                continue
            scan.scan(rel_out, f"path {rel_out}")
            pattern_hits.update(f"{k} in a path" for k in path_problems(rel_out, forms))
            if path.is_file() and path.suffix == ".csv":
                scan.scan(path.read_text(encoding="utf-8"), rel_out)
        residual = scan.result
        result.identifiers_checked = residual.checked
        result.remaining = residual.remaining
        problems = []
        if residual.remaining:
            places = ", ".join(f"{p} ({k})" for p, k in residual.where[:5])
            problems.append(f"{residual.remaining} source identifier occurrence(s) remain "
                            f"({dict(residual.found)}), e.g. in {places}")
        if pattern_hits:
            found = ", ".join(f"{n} {k}" for k, n in sorted(pattern_hits.items()))
            problems.append(f"identifier patterns found: {found}")
        if unreadable:
            problems.append(f"{len(unreadable)} output file(s) do not read back with pydicom")
        if pixel_mismatch:
            problems.append(f"{len(pixel_mismatch)} output file(s) hold pixel data other than what was "
                            "checked")
        if problems:
            raise MedmmError("de-identification verification FAILED, nothing written: " + "; ".join(problems))

        reasons = Counter(r.split(":")[0].split(" (")[0] for _, r in result.skipped)
        result.report = {
            "format": "medmm-deid", "input": "dicom-folder",
            "profile": f"PS3.15 E.1-1 Basic ({profile.version})",
            "options": options.describe(), "key_id": pseudo.token("key-id", "key-id", 8),
            "files_written": result.written, "files_skipped": len(result.skipped),
            "skipped_by_reason": dict(reasons), "patients": result.patients,
            "pixel_hashes_equal": result.pixels_checked, "verification": residual.summary(),
            "pixels": {"policy": pixels, "engine": "rapidocr-onnxruntime" if reader else None,
                       "scanned": result.pixel_counts["scanned"], "blanked": result.pixel_counts["blanked"],
                       "no_text": result.pixel_counts["no text"], "skipped": result.pixel_counts["skipped"],
                       "counts": dict(sorted(result.pixel_counts.items()))},
            "stale_partial_folders_removed": result.stale_removed,
            "ambiguous_values_not_scanned": dict(sorted(ambiguous_kinds.items())),
            "labels_rows": result.labels_rows if labels is not None else None,
            "labels_rows_left_out": result.labels_dropped if labels is not None else None,
        }
        from medmm.io import write_json_atomic

        write_json_atomic(stage / REPORT_NAME, result.report)
        (stage / PARTIAL_MARK).unlink()
        if skipped_report is not None and result.skipped:
            write_skipped(skipped_report, [(r, why) for r, why in result.skipped], key="path")
        _publish(stage, out)
        if result.labels_out is not None:
            result.labels_out = out / labels.name  # type: ignore[union-attr]
        return result
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _read_bare(path: Path) -> Any:
    """A file without preamble that parses as a data set with a SOP class (as
    ``medmm.data.dicom.scan`` reads it), given Part 10 file meta so that the output is a regular
    DICOM file; else ``None``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from medmm.data.dicom.scan import BARE_STARTS, ENCODING_SYNTAX, quiet_pydicom

    with open(path, "rb") as f:
        if f.read(2) not in BARE_STARTS:
            return None
    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path, force=True)
            syntax = ENCODING_SYNTAX.get(tuple(getattr(ds, "original_encoding", ()) or ()), "")
            if "SOPClassUID" not in ds or not syntax:
                return None
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = str(ds.get("SOPInstanceUID", "") or "")
            meta.TransferSyntaxUID = syntax
            ds.file_meta = meta
            ds.preamble = b"\0" * 128
    except Exception:  # noqa: BLE001 - not a data set after all
        return None
    return ds


def _relative_key(value: str, src: Path) -> str:
    """A labels ``path`` cell as a posix path relative to the input folder (absolute paths too)."""
    p = Path(value)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(src.resolve()).as_posix()
        except ValueError:
            return value
    return PurePosixPath(value.replace("\\", "/")).as_posix()


def _write_labels(path: Path, header: list[str], rows: list[dict[str, str]], id_column: str,
                  pseudo: Pseudonymizer, path_map: dict[str, str], src: Path) -> int:
    """The labels CSV with ids as pseudonyms, ``path`` keys as output paths and UIDs remapped.

    Rows keyed by a ``path`` whose file was skipped are left out; returns the rows written."""
    from medmm.io import atomic_write

    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        written = 0
        for row in rows:
            row = dict(row)
            row[id_column] = pseudo.patient_id(row.get(id_column) or "")
            if "path" in header:
                key = _relative_key(str(row.get("path") or ""), src)
                if key not in path_map:
                    continue  # its file was skipped (or never existed): no image to join
                row["path"] = path_map[key]
            for col in _UID_COLUMNS:
                if row.get(col):
                    row[col] = pseudo.uid(str(row[col]))
            writer.writerow(row)
            written += 1
    return written


def _publish(stage: Path, out: Path) -> None:
    """Move the verified staging folder to ``out`` (which is absent or an empty folder)."""
    if out.exists():
        out.rmdir()  # empty: checked before anything was written
    os.replace(stage, out)
    os.chmod(out, 0o777 & ~current_umask())

