"""What ``medmm pull`` (and ``medmm deid dicomweb+...``) does, with its console lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medmm.errors import MedmmError

__all__ = ["pull_command"]


def pull_command(source: str, out: Path, *, key_file: Path | None = None, create_key: bool = False,
                 identified: bool = False, labels: Path | None = None, label_attribute: str | None = None,
                 id_column: str | None = None, config: Path | None = None, retain_dates: bool | None = None,
                 retain_device_identity: bool | None = None, clean_descriptors: bool | None = None,
                 workers: int = 4, retries: int = 4, limit: int | None = None, token_file: Path | None = None,
                 user: str | None = None, password_file: Path | None = None, ca_bundle: Path | None = None,
                 pixels: str = "blank", layout: str = "uid", quiet: bool = False,
                 echo: Callable[[str], None] = print) -> Any:
    """Pull ``source`` into ``out``: de-identified unless ``identified``; prints counts, never values."""
    from medmm.data.sources import DicomwebSource, parse_source
    from medmm.data.sources.dicomweb import Credentials
    from medmm.deid.options import load_options
    from medmm.pacs.pull import REPORT_NAME, SKIPPED_NAME, pull

    src = parse_source(source)
    if not isinstance(src, DicomwebSource):
        raise MedmmError("medmm pull reads a DICOMweb server: dicomweb+https://host/dicom-web?Keyword=value "
                         "(a local folder goes to `medmm deid`)")
    if workers < 1 or workers > 64:
        raise MedmmError(f"--workers must be between 1 and 64, got {workers}")
    if retries < 0 or retries > 20:
        raise MedmmError(f"--retries must be between 0 and 20, got {retries}")
    if labels is not None and not Path(labels).is_file():
        raise MedmmError(f"--labels file not found: {labels}")
    creds = Credentials.from_env(token_file=token_file, user=user, password_file=password_file,
                                 ca_bundle=ca_bundle)
    pseudo = options = None
    if identified:
        flags = (retain_dates, retain_device_identity, clean_descriptors)
        if key_file or create_key or config or pixels != "blank" or any(v is not None for v in flags):
            raise MedmmError("--identified writes the files as the PACS holds them: de-identification "
                             "options do not apply")
        echo("warning: --identified: the files written hold patient identifiers (PHI); keep them inside "
             "the hospital's protected storage")
    else:
        from medmm.deid.pseudonyms import Pseudonymizer, load_key

        options = load_options(config, retain_dates=retain_dates, retain_device_identity=retain_device_identity,
                               clean_descriptors=clean_descriptors)
        key, key_path, created = load_key(key_file, create=create_key)
        if created:
            echo(f"created a new de-identification key: {key_path} (mode 0600; keep it secret and keep it: "
                 "the same key gives the same pseudonyms next time)")
        pseudo = Pseudonymizer(key)
    server = src.server(creds, connections=workers, retries=retries)
    res = pull(server, src.url.filter_dict(), Path(out), pseudo=pseudo, options=options, labels=labels,
               label_attribute=label_attribute, id_column=id_column, workers=workers, progress=not quiet,
               echo=echo, limit=limit, pixels=pixels, layout=layout)
    rate = res.fetched / res.seconds if res.seconds > 0 else 0.0
    state = "de-identified" if pseudo is not None else "identified (as stored)"
    echo(f"{res.fetched} instance(s) pulled {state} into {out} ({rate:.1f}/s), {res.already} already there; "
         f"{len(res.skipped)} skipped" + (f" (see {Path(out) / SKIPPED_NAME}; the data set is PARTIAL, a "
                                           "second pull fetches what is missing)" if res.skipped else ""))
    if res.labels_out is not None:
        dropped = f" ({res.labels_dropped} row(s) matched no pulled instance, left out)" if res.labels_dropped else ""
        echo(f"labels: {res.labels_rows} row(s) keyed as the pulled files are -> {res.labels_out}{dropped}")
    if pseudo is not None:
        if pixels == "keep":
            echo("pixels: NOT scanned (--pixels keep): burned-in text in US / SC / XA ... instances was not looked for")
        else:
            echo(f"pixels ({pixels}, OCR): {res.pixels_scanned} instance(s) of modalities that often carry "
                 "burned-in text read, blanked where text was found, and read again")
        echo(f"verification: every written instance re-read, {res.identifiers_checked} source identifier "
             f"value(s) checked, 0 remain, pixel data as checked; key id {pseudo.token('key-id', 'key-id', 8)}; "
             f"report {Path(out) / REPORT_NAME}")
    return res
