"""An honest synthetic paired data set for the fusion task: CT phantoms + templated notes.

No public paired report + DICOM data set installs offline, so :func:`build_fusion_demo`
writes one. Nothing in it comes from a patient: the images are mathematical chest-CT-like
phantoms and the notes are filled-in templates.

Layout of ``out_dir``::

    README.txt                       says all of the above
    pairs.csv                        id, patient, text, image, age, sex, label (one row per study)
    latent.csv                       id, lesion, risk, label_flipped (the generator's truth)
    dicom/SYN0001/STUDY1/SERIES1/001.dcm ...

``image`` is the path of the study's **series folder** (3 axial CT instances), relative to
``pairs.csv``; it is empty when the study has no image. ``text`` is a short clinical note
(indication and history, not the radiology findings); empty when there is none.

The label needs both modalities: ``label == "malignant"`` iff the image shows a lung nodule
(``lesion``) AND the note gives a risk context (smoking or a prior malignancy: ``risk``), with
about 5% of labels flipped. The image alone or the note alone therefore carries only part of
the signal (single-modality AUROC about 0.8, fused about 0.93 with simple features). Nodule
size and density vary (some are small ground-glass ones), a few notes phrase risk in unusual
words or mention it only to negate it, and ``age`` is weakly related to risk. About 5% of rows
have no text, about 5% no image, and one row has neither (for the task to report and skip).
Rows are grouped by ``patient``: some patients have a follow-up study, so split by patient.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmm.errors import DataError

__all__ = ["COLUMNS", "LABELS", "SIZE", "SLICES", "build_fusion_demo"]

COLUMNS = ("id", "patient", "text", "image", "age", "sex", "label")
LABELS = ("no_malignancy", "malignant")
SIZE = 64  # pixels per side
SLICES = 3  # instances per series
SPACING_MM = 5.5  # in-plane pixel spacing (a 352 mm field of view)
THICKNESS_MM = 5.0
P_RISK, P_LESION, P_FOLLOW_UP, P_FLIP, P_MISSING = 0.6, 0.6, 0.2, 0.05, 0.05

_MARKER = "medmm fusion demo (SYNTHETIC)"
_README = f"""\
{_MARKER}

EVERYTHING HERE IS SYNTHETIC. No patient data were used. The DICOM files are mathematical
chest-CT-like phantoms (body ellipse, lungs, spine, noise, an optional lung nodule) written by
medmm.demos.fusion; the notes are filled-in templates; names (SYNTHETIC^0001), IDs
(SYN0001), dates and UIDs are made up. Do not use it to draw any clinical conclusion.

pairs.csv     one row per study: id, patient, text (clinical note), image (series folder,
              relative to this file), age, sex, label. label = malignant iff the image shows a
              nodule AND the note gives a risk context (smoking / prior malignancy), ~5% of
              labels flipped: the label needs BOTH modalities. Some rows lack the text or the
              image; one lacks both. Split by patient (some patients have two studies).
latent.csv    the generator's truth (lesion, risk, label_flipped) for analysis only; never
              use it as a feature.
dicom/        <patient>/<study>/<series>/<instance>.dcm, CT Image Storage, explicit VR little
              endian, 64x64, HU = stored - 1024.
"""

_REASONS = (
    "Persistent cough for {weeks} weeks.",
    "Shortness of breath on exertion.",
    "Chest pain, rule out intrathoracic pathology.",
    "Pre-operative assessment.",
    "Weight loss and fatigue.",
    "Recurrent chest infections.",
)
_FOLLOW_UP = ("Follow-up CT as planned.", "Interval follow-up imaging.")
_RISK = {
    "smoking": (
        "History of smoking, {packs} pack-years.",
        "Current smoker, {packs} pack-years.",
        "Former smoker, quit {years} years ago ({packs} pack-years).",
    ),
    "malignancy": (
        "Prior malignancy: {cancer} cancer, treated {years} years ago.",
        "History of {cancer} cancer, in remission.",
    ),
}
_RISK_UNUSUAL = (  # risk said in words a simple keyword list misses
    "Ex-tobacco user, about {packs} pack-years.",
    "Remote lymphoma treated with chemotherapy.",
)
_NO_RISK = (
    "No significant past medical history.",
    "Never smoker.",
    "Unremarkable history.",
    "Lifelong non-smoker, no prior cancer.",
)
_NO_RISK_TRAP = (  # mentions a risk only to negate it
    "No history of smoking or malignancy.",
    "Denies smoking; no prior malignancy.",
)
_CANCERS = ("breast", "colon", "prostate", "kidney")
_SEX_WORD = {"F": "woman", "M": "man"}


@dataclass(frozen=True)
class _Study:
    index: int  # 1-based study number within its patient
    patient: int
    sex: str
    age: int
    risk: bool
    lesion: bool
    flipped: bool
    text: str

    @property
    def patient_id(self) -> str:
        return f"SYN{self.patient:04d}"

    @property
    def id(self) -> str:
        return f"{self.patient_id}-S{self.index}"

    @property
    def label(self) -> str:
        return LABELS[int((self.lesion and self.risk) != self.flipped)]


def build_fusion_demo(out_dir: Path, n_patients: int = 240, seed: int = 0) -> Path:
    """Write the synthetic fusion demo into ``out_dir`` and return the path of ``pairs.csv``.

    Deterministic: the same ``n_patients`` and ``seed`` give byte-identical CSV and DICOM
    files. An existing folder is rebuilt only if an earlier call created it; any other
    non-empty folder raises :class:`DataError` rather than being overwritten.
    """
    if n_patients < 10:
        raise DataError(f"the fusion demo needs at least 10 patients, got {n_patients}")
    out_dir = Path(out_dir)
    _prepare(out_dir)
    rng = np.random.default_rng([seed, 0x6D656D])
    studies = _studies(rng, n_patients)
    no_text, no_image = _missing(rng, len(studies))

    rows, latent = [], []
    for k, study in enumerate(studies):
        image = ""
        if k not in no_image:
            series = out_dir / "dicom" / study.patient_id / f"STUDY{study.index}" / "SERIES1"
            _write_series(series, study, rng, seed)
            image = series.relative_to(out_dir).as_posix()
        text = "" if k in no_text else study.text
        rows.append((study.id, study.patient_id, text, image, study.age, study.sex, study.label))
        latent.append((study.id, int(study.lesion), int(study.risk), int(study.flipped)))

    (out_dir / "README.txt").write_text(_README, encoding="utf-8")
    _write_csv(out_dir / "latent.csv", ("id", "lesion", "risk", "label_flipped"), latent)
    pairs = out_dir / "pairs.csv"
    _write_csv(pairs, COLUMNS, rows)
    return pairs


def _prepare(out_dir: Path) -> None:
    readme = out_dir / "README.txt"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(_MARKER)):
            raise DataError(f"{out_dir} is not empty and was not made by the fusion demo; choose another folder")
        shutil.rmtree(out_dir / "dicom", ignore_errors=True)
    elif out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)


def _studies(rng: np.random.Generator, n_patients: int) -> list[_Study]:
    studies = []
    for patient in range(1, n_patients + 1):
        sex = "F" if rng.random() < 0.5 else "M"
        risk = bool(rng.random() < P_RISK)
        age = int(np.clip(rng.normal(63 if risk else 57, 10), 30, 90))
        history = _history(rng, risk)
        for index in range(1, 2 + int(rng.random() < P_FOLLOW_UP)):
            reason = _REASONS[rng.integers(len(_REASONS))] if index == 1 else _FOLLOW_UP[rng.integers(2)]
            note = (f"Clinical note (synthetic). {age}-year-old {_SEX_WORD[sex]}. "
                    f"{reason.format(weeks=rng.integers(3, 13))} {history} Request: CT chest.")
            studies.append(_Study(index, patient, sex, age, risk, bool(rng.random() < P_LESION),
                                  bool(rng.random() < P_FLIP), note))
    return studies


def _history(rng: np.random.Generator, risk: bool) -> str:
    values = {"packs": rng.integers(10, 60), "years": rng.integers(2, 25), "cancer": _CANCERS[rng.integers(4)]}
    if risk:
        if rng.random() < 0.08:
            pool = _RISK_UNUSUAL
        else:
            pool = _RISK["smoking"] if rng.random() < 0.65 else _RISK["malignancy"]
    else:
        pool = _NO_RISK_TRAP if rng.random() < 0.08 else _NO_RISK
    return pool[rng.integers(len(pool))].format(**values)


def _missing(rng: np.random.Generator, n: int) -> tuple[set[int], set[int]]:
    """Row indices without text and without image; exactly one row is in both."""
    k = max(1, round(P_MISSING * n))
    order = [int(i) for i in rng.permutation(n)]
    neither, text_only_missing, image_only_missing = order[:1], order[1 : 1 + k], order[1 + k : 1 + 2 * k]
    return set(neither + text_only_missing), set(neither + image_only_missing)


def _phantom(rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """``[SLICES, SIZE, SIZE]`` Hounsfield units of one chest-CT-like phantom."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cy, cx = 33 + rng.uniform(-1.5, 1.5), 32 + rng.uniform(-1.5, 1.5)
    a, b = 28 + rng.uniform(-1.5, 1), 21 + rng.uniform(-1.5, 1)
    body = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
    base = np.full((SIZE, SIZE), -1000.0)
    base[body <= 1] = -100.0  # subcutaneous fat
    base[body <= 0.8] = 40 + rng.uniform(-10, 10) + 8 * (yy[body <= 0.8] - cy) / b  # soft tissue
    lungs = []
    lung_hu = -850 + rng.uniform(-30, 30)
    for side in (-1, 1):
        ly, lx = cy - 2 + rng.uniform(-1, 1), cx + side * (12.5 + rng.uniform(-0.5, 0.5))
        la, lb = 8 + rng.uniform(-0.5, 0.5), 12.5 + rng.uniform(-1, 1)
        inside = ((xx - lx) / la) ** 2 + ((yy - ly) / lb) ** 2 <= 1
        base[inside] = lung_hu + 25 * (yy[inside] - ly) / lb  # dependent lung is denser
        for _ in range(int(rng.integers(4, 9))):  # vessels: small, faint, distract a naive detector
            vy, vx = np.argwhere(inside)[rng.integers(inside.sum())]
            base[vy, vx] = rng.uniform(-700, -450)
        lungs.append((ly, lx, la, lb))
    base[(yy - (cy + 13)) ** 2 + (xx - cx) ** 2 <= 3.5**2] = 500 + rng.uniform(-60, 60)  # vertebra

    volume = np.repeat(base[None], SLICES, axis=0)
    if lesion:
        ly, lx, la, lb = lungs[rng.integers(2)]
        radius = rng.uniform(1.2, 3.5)
        density = rng.uniform(-450, 60)  # ground-glass to solid
        margin = radius + 2.5
        angle, rho = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
        ny = ly + rho * max(lb - margin, 0.5) * np.sin(angle)
        nx = lx + rho * max(la - margin, 0.5) * np.cos(angle)
        nz = (SLICES - 1) / 2 + rng.uniform(-0.5, 0.5)
        dz = THICKNESS_MM / SPACING_MM  # slice distance in pixels
        for z in range(SLICES):
            r2 = radius**2 - ((z - nz) * dz) ** 2
            if r2 <= 0:
                continue
            dist = np.sqrt((yy - ny) ** 2 + (xx - nx) ** 2)
            cover = np.clip(np.sqrt(r2) - dist + 0.5, 0, 1)  # partial-volume edge
            volume[z] = volume[z] + cover * (density - volume[z])
    volume += rng.normal(0, 15, volume.shape)
    return volume


def _write_series(folder: Path, study: _Study, rng: np.random.Generator, seed: int) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    hu = _phantom(rng, study.lesion)
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    uid = _uid_factory(seed, study.id)
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    for i in range(SLICES):
        sop_uid = uid(f"instance{i + 1}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _header(study, study_uid, series_uid, frame_uid, sop_uid)
        ds.file_meta = meta
        ds.InstanceNumber = i + 1
        z = (i - (SLICES - 1) / 2) * THICKNESS_MM
        ds.ImagePositionPatient = [-SIZE * SPACING_MM / 2, -SIZE * SPACING_MM / 2, z]
        ds.SliceLocation = z
        ds.PixelData = stored[i].tobytes()
        ds.save_as(folder / f"{i + 1:03d}.dcm", enforce_file_format=True)


def _uid_factory(seed: int, study_id: str):  # noqa: ANN202 - a tiny closure
    from pydicom.uid import generate_uid

    return lambda what: generate_uid(prefix=None, entropy_srcs=["medmm-fusion-demo", str(seed), study_id, what])


def _header(study: _Study, study_uid: str, series_uid: str, frame_uid: str, sop_uid: str):  # noqa: ANN202
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2000{study.index:02d}01"  # made up
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "medmm synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC PHANTOM CT CHEST"
    ds.SeriesDescription = "SYNTHETIC AXIAL 5mm"
    ds.PatientName = f"SYNTHETIC^{study.patient:04d}"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom; no patient data"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = THICKNESS_MM
    ds.KVP = 120
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"S{study.index}"
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
