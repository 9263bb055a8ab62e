"""A ``--data`` value that may be a DICOMweb source, as a local folder for the readers.

A folder is used as it is. A ``dicomweb+https://...`` source is pulled (de-identified in memory
with the deid key, as ``medmm pull`` does) into a temporary folder that is removed when the
command ends; the in-memory pull result (pseudonym -> source UID map) stays available for
``predict --push``. ``local_table`` does the same for a table whose image column names studies,
series or instances of a DICOMweb source (``run fusion`` with ``data.image_source``);
``local_run_data`` picks between them for a command on a trained run (evaluate, explain).
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

__all__ = ["LocalData", "local_data", "local_run_data", "local_table", "run_image_source"]


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
    from medmm.pacs.pull import REPORT_NAME, SKIPPED_NAME

    tmp = Path(tempfile.mkdtemp(prefix="medmm-dicomweb-"))
    try:
        res, _ = _pull(source, tmp / "data", labels=Path(labels) if labels else None, echo=echo,
                       progress=progress, workers=workers, layout=layout)
        labels_out = None
        if res.labels_out is not None:  # beside the folder, so that the readers see DICOM files only
            labels_out = tmp / res.labels_out.name
            res.labels_out.replace(labels_out)
        for name in (REPORT_NAME, SKIPPED_NAME):
            (tmp / "data" / name).unlink(missing_ok=True)
        yield LocalData(tmp / "data", labels_out, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pull(source: Any, dest: Path, *, echo: Callable[[str], None], progress: bool, workers: int,
          labels: Path | None = None, layout: str = "uid",
          select: Callable[[Any], bool] | None = None) -> tuple[Any, Any]:
    """Pull ``source`` into ``dest`` with the deid key (a one-line error when nothing came);
    returns the pull result and the pseudonymizer."""
    from medmm.deid.pseudonyms import Pseudonymizer, load_key
    from medmm.pacs.pull import pull

    key, key_path, created = load_key(None)
    if created:
        echo(f"created a new de-identification key: {key_path} (mode 0600; keep it)")
    pseudo = Pseudonymizer(key)
    server = source.server(connections=workers)
    res = pull(server, source.url.filter_dict(), dest, pseudo=pseudo, labels=labels, workers=workers,
               progress=progress, echo=echo, layout=layout, select=select)
    echo(f"{res.fetched} instance(s) pulled and de-identified from {server.url.where}; "
         f"{len(res.skipped)} skipped")
    if not res.fetched:
        raise MedmmError(f"no instance could be pulled from {server.url.where}"
                         + (f" ({res.skipped[0][1]})" if res.skipped else " (the search matched nothing)"))
    return res, pseudo


TABLE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")


@contextlib.contextmanager
def local_table(table: str | Path, column: str | None, source: str, *, echo: Callable[[str], None] = print,
                progress: bool = True, workers: int = 4) -> Iterator[LocalData]:
    """Yield a copy of ``table`` (CSV / TSV) whose ``column`` cells, StudyInstanceUID /
    SeriesInstanceUID / SOPInstanceUID / AccessionNumber values of ``source`` (``dicomweb+...``), point
    at those images pulled de-identified, as ``local_data`` does, into a temporary folder beside it:
    a study or series folder, or one file, named by keyed UIDs. Only the instances the table names
    are retrieved (the source's matching keys narrow the search); a cell that matches nothing is
    emptied (that row has no image) and counted."""
    import csv

    table = Path(table)
    if not column:
        raise MedmmError("data.image_source needs data.image_column (the column of UIDs to pull)")
    src = parse_source(source)
    if not src.is_remote:
        raise MedmmError(f"data.image_source must be a DICOMweb source (dicomweb+https://host/dicom-web), "
                         f"got {src.describe()}")
    if not table.is_file() or table.suffix.lower() not in (".csv", ".tsv"):
        raise MedmmError(f"data.image_source needs --data to be a CSV or TSV table, got {table.name}")
    text = table.read_text(encoding="utf-8-sig")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ";" if ";" in first and "," not in first else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if not rows or column not in rows[0]:
        raise MedmmError(f"{table.name}: no image column {column!r} (data.image_column) to resolve against "
                         "data.image_source")
    col = rows[0].index(column)
    wanted = {r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()}
    if not wanted:
        raise MedmmError(f"{table.name}: the image column {column!r} is empty; it holds the "
                         f"{' / '.join(TABLE_KEYS)} values to pull")
    tmp = Path(tempfile.mkdtemp(prefix="medmm-dicomweb-"))
    try:
        res, pseudo = _pull(src, tmp / "images", echo=echo, progress=progress, workers=workers,
                            select=lambda r: bool({r.study, r.series, r.sop, r.accession} & wanted))
        where = _pulled_paths(tmp / "images", res.studies)
        missed = 0
        for r in rows[1:]:
            if len(r) > col and r[col].strip():
                value = r[col].strip()
                rel = where.get(pseudo.uid(value)) or where.get(f"accession:{value}")
                missed += rel is None
                r[col] = f"images/{rel}" if rel else ""
        if missed:
            echo(f"{missed} image cell(s) of {table.name} matched no pulled instance (by "
                 f"{' / '.join(TABLE_KEYS)}): those rows have no image")
        out = tmp / table.name
        with out.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter=delimiter).writerows(rows)
        yield LocalData(out, None, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pulled_paths(folder: Path, studies: dict[str, dict[str, str]]) -> dict[str, str]:
    """Keyed study / series / instance UID (and ``accession:<number>``) -> its path under ``folder``."""
    import json

    from medmm.pacs.pull import MANIFEST, PULL_DIR

    where: dict[str, str] = {}
    manifest = folder / PULL_DIR / MANIFEST
    for line in manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []:
        rel = str(json.loads(line)["path"])
        study, series, name = rel.split("/")[-3:]
        where.setdefault(study, study)
        where.setdefault(series, f"{study}/{series}")
        where[name.removesuffix(".dcm")] = rel
    for study, attrs in studies.items():
        if attrs.get("AccessionNumber") and study in where:
            where[f"accession:{attrs['AccessionNumber']}"] = study
    return where


def run_image_source(run_dir: Path) -> tuple[str, str | None] | None:
    """``(data.image_source, data.image_column)`` of a trained run's ``config.yaml``, or ``None``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    data = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}
    source = data.get("image_source") if isinstance(data, dict) else None
    return (str(source), data.get("image_column")) if source else None


@contextlib.contextmanager
def local_run_data(run_dir: Path, spec: str | Path, *, echo: Callable[[str], None] = print, progress: bool = True,
                   **kwargs: Any) -> Iterator[LocalData]:
    """``--data`` of a command on a trained ``run_dir`` as local data: a table for a run trained with
    ``data.image_source`` gets its image cells pulled as :func:`local_table` does (the run's source and
    image column); anything else goes through :func:`local_data` (``kwargs``: its options)."""
    source = parse_source(spec)
    trained = run_image_source(run_dir)
    if trained is not None and source.is_remote:
        raise MedmmError("this run was trained with data.image_source: give --data the table (CSV / TSV) whose "
                         f"{trained[1] or 'image'} column names the studies; they are pulled from the run's source")
    trained = trained if Path(spec).is_file() else None
    if trained is not None:
        with local_table(spec, trained[1], trained[0], echo=echo, progress=progress) as local:
            yield local
        return
    with local_data(spec, echo=echo, progress=progress, **kwargs) as local:
        yield local
