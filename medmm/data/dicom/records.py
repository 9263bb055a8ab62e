"""The rows a DICOM folder scan yields: :class:`DicomRecord` (an instance with pixel data) and
:class:`Skipped` (a file that was not ingested, and why). Kept apart from the scan itself so the
header index and the path rules can use them without importing the scan."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

__all__ = ["CACHEDIR_TAG", "DicomRecord", "Skipped"]

SHARED_FIELDS = ("patient_id", "study_uid", "series_uid", "modality", "transfer_syntax", "photometric")
CACHEDIR_TAG = "CACHEDIR.TAG"
"""Directories holding this file (https://bford.info/cachedir/) are not scanned."""


@dataclass(frozen=True)
class DicomRecord:
    """One DICOM instance with pixel data; ``path`` is relative to the scanned root.

    ``patient_id`` is for patient-level splits only: it is left out of ``repr`` so that
    logging or printing a record never shows it.
    """

    path: str
    patient_id: str = field(repr=False)
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    rows: int
    cols: int
    frames: int
    transfer_syntax: str
    photometric: str
    id_parts: tuple[int, ...] = field(default=(), repr=False)  # path components holding an identifier

    def __post_init__(self) -> None:
        # values that many records share (a study's and series' UIDs, the patient, modality, syntax) are one
        # string object each, not one per file (#30: about 400 of 755 bytes a record at 20 files per study)
        for name in SHARED_FIELDS:
            value = getattr(self, name)
            if type(value) is str:
                object.__setattr__(self, name, sys.intern(value))

    @property
    def public_path(self) -> str:
        """``path`` with identifier components as keyed tokens: what every output shows
        (:mod:`medmm.data.dicom.paths`)."""
        from medmm.data.dicom.paths import public_path

        return public_path(self.path, self.id_parts)


@dataclass(frozen=True)
class Skipped:
    """A file (or frame) that was not ingested, and why."""

    path: str
    reason: str
