"""``predict --push dicomweb+https://...``: the DICOM SR reports back to the PACS over STOW-RS.

A report must reference the study the PACS knows. When the predicted data were pulled from
DICOMweb in this process, the reports were built from de-identified files; each is re-identified
in memory only (keyed UIDs mapped back to the source UIDs, the study's patient / study attributes
from the QIDO-RS answer) just before it is sent, so the files on disk stay de-identified. Without
that mapping (a local folder), every study a report references must already be on the target,
else nothing is sent: a report on pseudonymous UIDs would be an orphan in the PACS. After the
store, a QIDO-RS search checks that each report is found. ``gradcam_captures`` turns ``medmm explain``'s
Grad-CAM overlays into secondary captures filed in each source study, pushed with the reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medmm.data.sources import DicomwebSource, parse_source
from medmm.errors import MedmmError

__all__ = ["check_target", "gradcam_captures", "push_reports", "reidentify"]

_REMOVE = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
           "LongitudinalTemporalInformationModified")


def reidentify(ds: Any, uid_map: dict[str, str], study_attributes: dict[str, str]) -> int:
    """Map keyed UIDs in ``ds`` (every level) back to the source UIDs and set the study's patient /
    study attributes; in place, in memory. Returns how many UID values were mapped."""
    mapped = 0

    def visit(dataset: Any, elem: Any) -> None:
        nonlocal mapped
        if elem.VR != "UI" or elem.value in (None, ""):
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        new = [uid_map.get(str(v), str(v)) for v in values]
        mapped += sum(a != str(b) for a, b in zip(new, values))
        elem.value = new if elem.VM > 1 else new[0]

    ds.walk(visit)
    for keyword, value in study_attributes.items():
        setattr(ds, keyword, value or "")
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    return mapped


def _referenced_studies(ds: Any) -> set[str]:
    studies = {str(ds.get("StudyInstanceUID", "") or "")}
    for item in ds.get("CurrentRequestedProcedureEvidenceSequence", None) or []:
        studies.add(str(item.get("StudyInstanceUID", "") or ""))
    return {s for s in studies if s}


def check_target(target: str, data: Path, *, pulled: Any = None, sample: int = 20) -> None:
    """Before predicting: ``target`` is a reachable DICOMweb server and, without a pull's mapping,
    the first ``sample`` DICOM files of ``data`` are identified and their studies are on it."""
    import pydicom

    from medmm.data.dicom.scan import list_files, quiet_pydicom

    source = parse_source(target)
    if not isinstance(source, DicomwebSource) or source.url.filters:
        raise MedmmError("--push takes a DICOMweb server without a query: dicomweb+https://host/dicom-web")
    server = source.server()
    server.has_study("1.2.3")  # reachable, and the credentials are accepted
    if pulled is not None or not Path(data).is_dir():
        return
    studies: set[str] = set()
    for rel in list_files(Path(data))[: 10 * sample]:
        try:
            with quiet_pydicom():
                ds = pydicom.dcmread(Path(data) / rel, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - not DICOM: the reader reports it
            continue
        if str(ds.get("PatientIdentityRemoved", "") or "").upper() == "YES":
            raise MedmmError("--push: the files of --data are de-identified (PatientIdentityRemoved=YES): a report "
                             "on them would reference keyed UIDs the PACS does not know; predict with --data "
                             "dicomweb+... so that medmm maps them back in memory. Nothing was sent")
        studies.add(str(ds.get("StudyInstanceUID", "") or ""))
        if len(studies) >= sample:
            break
    missing = [s for s in studies if s and not server.has_study(s)]
    if missing:
        raise MedmmError(f"--push: {server.url.where} does not hold {len(missing)} of the studies of --data; "
                         "nothing was sent")


_STUDY_MODULE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
                 "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                 "StudyID", "ReferringPhysicianName", "StudyDescription")


def gradcam_captures(explain_dir: Path, data: Path, out_dir: Path, *, model_name: str = "medmm") -> list[Path]:
    """One Secondary Capture per Grad-CAM overlay of ``explain_dir`` (``medmm explain`` output whose units
    are files under ``data``), filed in the source file's study (a new series per study, the patient
    and study attributes copied from it) and referencing the source image; written into ``out_dir``.
    The overlay is the model's input under the heat map with its colour scale (RGB, 8 bits)."""
    import csv

    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from medmm.data.dicom.scan import quiet_pydicom

    rows_path = Path(explain_dir) / "overlays.csv"
    if not rows_path.is_file():
        raise MedmmError("--push-gradcam: medmm explain wrote no Grad-CAM overlay (is this an image task?)")
    with rows_path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("input") and r.get("png")]
    out_dir.mkdir(parents=True, exist_ok=True)
    series: dict[str, str] = {}
    written: list[Path] = []
    for n, row in enumerate(rows, 1):
        source = Path(data) / row["unit"]
        if not source.is_file():
            continue  # a unit that is not one file (a study pooled from several): no single source image
        with quiet_pydicom():
            src = pydicom.dcmread(source, stop_before_pixels=True)
        pixels = np.asarray(Image.open(Path(explain_dir) / row["png"]).convert("RGB"), dtype=np.uint8)
        ds = Dataset()
        for keyword in _STUDY_MODULE:
            if keyword in src:
                setattr(ds, keyword, src.data_element(keyword).value)
        study = str(src.StudyInstanceUID)
        ds.SeriesInstanceUID = series.setdefault(study, generate_uid())
        ds.SOPInstanceUID, ds.SOPClassUID = generate_uid(), SecondaryCaptureImageStorage
        ds.Modality, ds.ConversionType, ds.SeriesNumber, ds.InstanceNumber = "OT", "WSD", 991, n
        ds.SeriesDescription = f"medmm {model_name} Grad-CAM"[:64]
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = "Grad-CAM heat map of a model's prediction over the model's input image"
        ds.ImageComments = "medmm explain: where the model looked; not for diagnosis"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        ds.SourceImageSequence = [ref]
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.BurnedInAnnotation = "NO"  # the scale's "max" / "0" only
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"gradcam-{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def push_reports(files: Sequence[Path], target: str, *, pulled: Any = None,
                 echo: Callable[[str], None] = print) -> int:
    """Store the SR ``files`` on ``target`` (a ``dicomweb+...`` URL); returns how many a QIDO-RS
    search finds afterwards. ``pulled`` is the in-memory pull of the predicted data, if any."""
    import pydicom

    source = parse_source(target)
    if not isinstance(source, DicomwebSource):
        raise MedmmError("--push takes a DICOMweb server: dicomweb+https://host/dicom-web")
    if source.url.filters:
        raise MedmmError("--push: the target URL takes no query (matching keys are for --data)")
    if not files:
        raise MedmmError("--push: no DICOM SR report was written, nothing to send")
    server = source.server()
    reports = []
    for path in files:
        ds = pydicom.dcmread(path)
        if pulled is not None:
            pseudo_study = str(ds.StudyInstanceUID)
            reidentify(ds, pulled.uid_map, dict(pulled.studies.get(pseudo_study) or {}))
        reports.append(ds)
    for ds in reports:
        missing = [s for s in _referenced_studies(ds) if not server.has_study(s)]
        if missing:
            hint = (" (the predicted files were de-identified: their UIDs are keyed pseudonyms; predict with "
                    "--data dicomweb+... so that medmm maps them back in memory)") if pulled is None else ""
            raise MedmmError(f"--push: {server.url.where} does not hold the study a report references{hint}; "
                             "nothing was sent")
    server.store(reports)
    found = sum(server.find(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)) for ds in reports)
    captures = sum(str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.7" for ds in reports)
    what = f"{len(reports) - captures} DICOM SR report(s)" + (f" and {captures} Grad-CAM secondary capture(s)"
                                                              if captures else "")
    echo(f"  {what} stored on {server.url.where} (STOW-RS); {found} found again by QIDO-RS")
    if found != len(reports):
        raise MedmmError(f"--push: only {found} of {len(reports)} stored report(s) are found by a QIDO-RS search")
    return found
