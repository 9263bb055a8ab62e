"""De-identification of DICOM folders and clinical text, with keyed (HMAC) pseudonyms.

``deidentify(path, out, ...)`` is what ``medmm deid`` calls: a folder is read as DICOM
(:mod:`medmm.deid.folder`), a CSV as notes (:mod:`medmm.deid.notes`). Keyed pseudonyms live in
:mod:`medmm.deid.pseudonyms` (standard library only; reusable anywhere in medmm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medmm.errors import MedmmError

__all__ = ["deidentify"]


def deidentify(path: Path, out: Path, *, key_file: Path | None = None, create_key: bool = False,
               config: Path | None = None, retain_dates: bool | None = None,
               retain_device_identity: bool | None = None, clean_descriptors: bool | None = None,
               labels: Path | None = None, id_column: str | None = None, text_column: str | None = None,
               name_columns: Sequence[str] = (), names_file: Path | None = None,
               drop_columns: Sequence[str] = (), echo: Callable[[str], None] = print, pixels: str = "blank",
               skipped_report: Path | None = None) -> Any:
    """De-identify a DICOM folder or a notes CSV into ``out``; returns the module's result object.

    ``pixels`` (DICOM): ``blank`` / ``skip`` / ``keep`` / ``scan-all``, the burned-in text policy
    (:mod:`medmm.deid.pixels`); ``skipped_report``: where to list skipped files by their real names
    (outside ``out``; inside it they are keyed tokens)."""
    from medmm.deid.options import load_options
    from medmm.deid.pseudonyms import Pseudonymizer, load_key

    path, out = Path(path), Path(out)
    if not path.exists():
        raise MedmmError(f"input does not exist: {path}")
    options = load_options(config, retain_dates=retain_dates, retain_device_identity=retain_device_identity,
                           clean_descriptors=clean_descriptors)
    if path.is_dir():
        if text_column or name_columns or names_file or drop_columns:
            raise MedmmError("--text-column / --name-columns / --names-file / --drop-columns are for a "
                             "notes CSV, not a DICOM folder")
        if labels is not None and not labels.is_file():
            raise MedmmError(f"--labels file not found: {labels}")
        from medmm.deid.folder import check_output_dir, remove_stale_partials

        stale = remove_stale_partials(out.parent, out)  # a killed run's staging folder, even inside --out
        check_output_dir(path, out)  # before a key is created
    else:
        if not text_column:
            raise MedmmError(f"{path} is a file: de-identifying notes needs --text-column "
                             "(a DICOM input must be a folder)")
        if labels is not None:
            raise MedmmError("--labels goes with a DICOM folder; for notes, --id-column is the patient id")
        if out.exists():
            raise MedmmError(f"--out {out} exists; de-identified notes go to a new file (never overwritten)")
    key, key_path, created = load_key(key_file, create=create_key)
    if created:
        echo(f"created a new de-identification key: {key_path} (mode 0600; keep it secret and keep it: "
             "the same key gives the same pseudonyms next time)")
    pseudo = Pseudonymizer(key)
    if path.is_dir():
        from medmm.deid.folder import SKIPPED_NAME, deidentify_folder

        res = deidentify_folder(path, out, pseudo, options, labels=labels,
                                id_column=id_column or "patient_id", progress=echo, pixels=pixels,
                                skipped_report=skipped_report, stale_removed=stale)
        if res.stale_removed:
            echo(f"removed {res.stale_removed} unfinished staging folder(s) left by an interrupted run")
        real = f"; real names in {skipped_report})" if skipped_report else ")"
        where = f" (see {out / SKIPPED_NAME}, by keyed token{real}" if res.skipped else ""
        echo(f"{res.written} DICOM file(s) de-identified into {out} ({res.patients} patient(s)); "
             f"{len(res.skipped)} skipped{where}")
        c = res.pixel_counts
        if pixels == "keep":
            n = c["not scanned (--pixels keep)"]
            echo(f"pixels: NOT scanned (--pixels keep): {n} file(s) of modalities that often carry burned-in "
                 "text were copied with their pixels unchanged")
        else:
            extra = "".join(f"; {n} {k}" for k, n in sorted(c.items()) if k.startswith("re-encoded"))
            echo(f"pixels ({pixels}, OCR): {c['scanned']} file(s) scanned, {c['blanked']} blanked, "
                 f"{c['no text']} without text, {c['skipped']} skipped{extra}")
        if res.labels_out is not None:
            n = res.labels_dropped
            dropped = f" ({n} row(s) of skipped files left out)" if n else ""
            echo(f"labels: {res.labels_rows} row(s) with pseudonymised ids -> {res.labels_out}{dropped}")
    else:
        from medmm.deid.notes import deidentify_notes, read_names

        names = read_names(names_file) if names_file else []
        res = deidentify_notes(path, out, pseudo, options, text_column, id_column, name_columns, names,
                               drop_columns)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(res.spans_by_kind.items())) or "none"
        echo(f"{res.rows} note(s) de-identified into {out}; replaced: {kinds}")
    n = getattr(res, "pixels_checked", None)
    checked = f"; pixel data as checked in {n} file(s); paths checked for dates and name forms" \
        if n is not None else ""
    echo(f"verification: {res.remaining} of {res.identifiers_checked} source identifier value(s) remain"
         f"{checked}; key id {pseudo.token('key-id', 'key-id', 8)}")
    return res
