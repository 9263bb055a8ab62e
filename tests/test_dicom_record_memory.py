"""Header records share the strings many files have in common (#30): a 20,000-file predict holds one record
per file, so a study's UIDs, the patient, modality and syntax are one object each, not one per file."""

from __future__ import annotations

from medmm.data.dicom.records import DicomRecord


def _fresh(text: str) -> str:
    return "".join(list(text))  # a new string object with the same value (as a header parse yields)


def _record(i: int) -> DicomRecord:
    return DicomRecord(path=f"a/{i}.dcm", patient_id=_fresh("P1"), study_uid=_fresh("1.2.3"),
                       series_uid=_fresh("1.2.3.4"), sop_uid=f"1.2.3.4.{i}", modality=_fresh("CT"), rows=8, cols=8,
                       frames=1, transfer_syntax=_fresh("1.2.840.10008.1.2.1"), photometric=_fresh("MONOCHROME2"))


def test_records_share_one_string_per_repeated_value() -> None:
    a, b = _record(1), _record(2)
    assert _fresh("1.2.3") is not _fresh("1.2.3")  # the planted strings are distinct objects
    for name in ("patient_id", "study_uid", "series_uid", "modality", "transfer_syntax", "photometric"):
        assert getattr(a, name) is getattr(b, name), name
    assert a.sop_uid == "1.2.3.4.1" and a == _record(1)  # values unchanged; equality as before
