"""Build the modality-classification demo folder from DICOM files that pip installs.

Real images shipped by ``pydicom`` (``pydicom/data/test_files``, including
``dicomdirtests/``) and ``pydicom-data`` (package ``data_store``), both MIT licensed, are
copied into one sub-folder per modality. Only modalities with at least
``MIN_PER_CLASS`` decodable images are kept (CT, MR, US, CR). NM is left out on
purpose: its files are four encodings of one image of one patient, which cannot be
split without leakage. The ``dicomdirtests/`` images are 16x16 thumbnails with no
modality signal left in them (``MIN_SIDE``). Several other files are re-encodings of one image (same
SOPInstanceUID / PatientID), so split the demo by patient.

A few deliberate problems exercise the skip path: ``README.txt`` (not DICOM),
``US/.DS_Store`` (hidden junk) and ``MR/MR_truncated.dcm`` (truncated pixel data).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections import Counter
from pathlib import Path

from medmm.data.dicom.pixels import PixelConfig, PixelDecodeError, load_pixels
from medmm.data.dicom.scan import DicomRecord, list_files, scan_file

__all__ = ["CLASSES", "MIN_PER_CLASS", "MIN_SIDE", "build_demo", "source_roots"]

CLASSES = ("CR", "CT", "MR", "US")
MIN_PER_CLASS = 4
MIN_SIDE = 32  # dicomdirtests/ holds 16x16 thumbnails: no modality signal left in them
_BROKEN = {"MR_truncated.dcm": "MR"}  # real, deliberately damaged pydicom test file
_README = """\
medmm DICOM demo: modality classification (labels = sub-folder names).

Files are copied unchanged from the pydicom test files and the pydicom-data package
(both MIT licensed, https://github.com/pydicom). Several files are the same image in
different transfer syntaxes (same patient and SOP Instance UID): split by patient.

Deliberately unusable, to show the skip report: this README, US/.DS_Store, and
MR/MR_truncated.dcm (truncated pixel data).
"""


def source_roots() -> list[Path]:
    """Installed folders holding the sample DICOM files (pydicom, then pydicom-data)."""
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data distribution
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent / "data")
    return [r for r in roots if r.is_dir()]


def build_demo(out_dir: Path) -> Path:
    """Create (or refresh) the demo folder at ``out_dir`` and return it.

    Deterministic for a given set of installed packages and decoders; files already
    present with the same size are not copied again, so a pixel cache stays valid.
    """
    out_dir = Path(out_dir)
    chosen = _choose_files(out_dir)
    counts = Counter(modality for _, _, modality in chosen)
    kept = {m for m, n in counts.items() if n >= MIN_PER_CLASS}
    for source, name, modality in chosen:
        if modality in kept:
            _copy(source, out_dir / modality / name)
    pydicom_files = source_roots()[0]
    for name, modality in _BROKEN.items():
        if (pydicom_files / name).is_file() and modality in kept:
            _copy(pydicom_files / name, out_dir / modality / name)
    _write(out_dir / "README.txt", _README.encode())
    if "US" in kept:
        _write(out_dir / "US" / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(26))
    return out_dir


def _choose_files(out_dir: Path) -> list[tuple[Path, str, str]]:
    """(source path, demo file name, modality) for every decodable candidate image.

    A file already copied to ``out_dir`` was decoded when it was chosen: not again.
    """
    chosen: list[tuple[Path, str, str]] = []
    names: set[str] = set()
    probe = PixelConfig(size=16)
    for root in source_roots():
        for rel in list_files(root):
            record = scan_file(root, rel)
            if not isinstance(record, DicomRecord) or record.modality not in CLASSES:
                continue
            if min(record.rows, record.cols) < MIN_SIDE:
                continue
            name = _demo_name(rel)
            if name in names:
                continue
            copied = out_dir / record.modality / name
            if not (copied.is_file() and copied.stat().st_size == (root / rel).stat().st_size):
                try:
                    load_pixels(root / rel, probe, n_frames=record.frames)
                except PixelDecodeError:
                    continue
            names.add(name)
            chosen.append((root / rel, name, record.modality))
    return chosen


def _demo_name(rel: str) -> str:
    """Flat file name. Nested source folders are named after patient IDs (dicomdirtests/<id>/...),
    so their path is replaced by a short hash: no identifier reaches a file name."""
    if "/" not in rel:
        return rel if rel.lower().endswith(".dcm") else f"{rel}.dcm"
    digest = hashlib.sha256(rel.encode()).hexdigest()[:10]
    return f"{rel.split('/', 1)[0]}_{digest}.dcm"


def _copy(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _write(target: Path, data: bytes) -> None:
    if target.is_file() and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
