"""A ``--data`` value that may be a DICOMweb source, as a local folder for the readers.

A folder is used as it is. A ``dicomweb+https://...`` source is pulled (de-identified in memory
with the deid key, as ``medmm pull`` does) into a temporary folder that is removed when the
command ends; the in-memory pull result (pseudonym -> source UID map) stays available for
``predict --push``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmm.data.sources import parse_source
from medmm.errors import MedmmError

__all__ = ["LocalData", "local_data"]


@dataclass
class LocalData:
    """The folder to read, the labels CSV to use (rewritten for a pull) and the pull, if any."""

    path: Path
    labels: Path | None = None
    pulled: Any = None  # medmm.pacs.pull.PullResult


@contextlib.contextmanager
def local_data(spec: str | Path, *, labels: str | Path | None = None, need_labels: bool = False,
               echo: Callable[[str], None] = print, progress: bool = True, workers: int = 4,
               layout: str = "uid") -> Iterator[LocalData]:
    """Yield ``spec`` as a local folder (see the module docstring); ``layout="label"`` puts each
    instance under its label's folder (for readers that take labels from sub-folder names)."""
    source = parse_source(spec)
    if not source.is_remote:
        yield LocalData(Path(source.path), Path(labels) if labels else None)
        return
    if need_labels and not labels:
        raise MedmmError("a DICOMweb --data source has no sub-folders to take labels from: give a labels CSV "
                         "keyed by StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID or AccessionNumber "
                         "(--set data.labels=labels.csv), or `medmm pull --label-attribute` first")
    from medmm.deid.pseudonyms import Pseudonymizer, load_key
    from medmm.pacs.pull import REPORT_NAME, SKIPPED_NAME, pull

    key, key_path, created = load_key(None)
    if created:
        echo(f"created a new de-identification key: {key_path} (mode 0600; keep it)")
    server = source.server(connections=workers)
    tmp = Path(tempfile.mkdtemp(prefix="medmm-dicomweb-"))
    try:
        res = pull(server, source.url.filter_dict(), tmp / "data", pseudo=Pseudonymizer(key),
                   labels=Path(labels) if labels else None, workers=workers, progress=progress, echo=echo,
                   layout=layout)
        echo(f"{res.fetched} instance(s) pulled and de-identified from {server.url.where}; "
             f"{len(res.skipped)} skipped")
        if not res.fetched:
            raise MedmmError(f"no instance could be pulled from {server.url.where}"
                             + (f" ({res.skipped[0][1]})" if res.skipped else " (the search matched nothing)"))
        labels_out = None
        if res.labels_out is not None:  # beside the folder, so that the readers see DICOM files only
            labels_out = tmp / res.labels_out.name
            res.labels_out.replace(labels_out)
        for name in (REPORT_NAME, SKIPPED_NAME):
            (tmp / "data" / name).unlink(missing_ok=True)
        yield LocalData(tmp / "data", labels_out, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
