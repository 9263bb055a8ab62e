"""``medmm deid`` on notes: typed placeholders per identifier type, keyed date shifts, verification."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest

from medmm.deid import deidentify
from medmm.deid.notes import NotesScrubber
from medmm.deid.options import DeidOptions
from medmm.deid.pseudonyms import Pseudonymizer, new_key_file
from medmm.deid.text import NameMatcher, scrub
from medmm.errors import MedmmError
from tests.deid_notes import as_rows, make_notes

KEY = bytes(range(32))


@pytest.mark.parametrize(("text", "expected"), [
    ("Seen 2021-03-04 and 03/14/2019, then March 3rd, 2022, 4 May 2021 and 20081201.",
     "Seen [DATE] and [DATE], then [DATE], [DATE] and [DATE]."),
    ("Call (617) 555-0199 ext 23, 617.555.0100, fax +44 20 7946 0958 or pager: 555-0123.",
     "Call [PHONE], [PHONE], fax [PHONE] or pager: [PHONE]."),
    ("Mail jane.doe@example.org or https://portal.example.com/p?id=7.", "Mail [EMAIL] or [URL]."),
    ("MRN: 00123456, Acct # A99812, SSN 123-45-6789, filed under 887766554.",
     "MRN: [ID], Acct # [ID], SSN [ID], filed under [ID]."),
    ("A 92-year-old man; his wife is 67 years old; mother aged 101.",
     "A [AGE]-year-old man; his wife is 67 years old; mother aged [AGE]."),
    ("Lives at 12 Oak Street, Apt 4B, Springfield, IL 62704; P.O. Box 77, ZIP 02139.",
     "Lives at [ADDRESS], [ADDRESS] [ZIP]; [ADDRESS], ZIP [ZIP]."),
    ("Seen by Dr. Alice Wong; signed by Mary Jones, MD.", "Seen by Dr. [NAME]; signed by [NAME], MD."),
])
def test_each_type_gets_its_placeholder(text: str, expected: str) -> None:
    assert scrub(text)[0] == expected


def test_look_alikes_are_kept() -> None:
    text = ("BP 120/80, HR 72, Hb 13.5 g/dL; take 1/2 tablet of 500 mg; L4-L5 disc; T2-weighted; "
            "a 67-year-old; in 2019; Gleason 3+4=7; CT chest with 2.5 mm slices; "
            "the patient may need therapy.")
    assert scrub(text) == (text, [])


def test_names_from_the_list_in_any_written_form_but_lower_case() -> None:
    names = NameMatcher(["Smith^John", "Hope Brown"])
    out, _ = scrub("SMITH, JOHN seen; John agrees; Ms. Brown and Hope came; no hope of brown fluid.", names)
    assert out == "[NAME] seen; [NAME] agrees; Ms. [NAME] and [NAME] came; no hope of brown fluid."


def test_date_shift_matches_dicom_and_keeps_format() -> None:
    pseudo = Pseudonymizer(KEY)
    shift = pseudo.date_shift_days("PAT-0042")
    out, _ = scrub("Seen 2020-03-15 and March 15, 2020 (3/15/2020); DOB: 01/02/1940.", shift=shift)
    d = dt.date(2020, 3, 15) + dt.timedelta(days=shift)
    assert out == (f"Seen {d:%Y-%m-%d} and {d:%B} {d.day}, {d.year} ({d.month}/{d.day}/{d.year}); "
                   "DOB: [DATE].")  # birth dates are never shifted, always removed

    import pydicom.dataset

    from medmm.deid.dicom import deidentify_dataset, load_profile

    ds = pydicom.dataset.Dataset()
    ds.PatientID, ds.StudyDate = "PAT-0042", "20200315"
    deidentify_dataset(ds, pseudo, load_profile(), DeidOptions(retain_dates=True))
    assert ds.StudyDate == f"{d:%Y%m%d}"  # same key, same patient: the same shift in images and notes


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_notes_csv_end_to_end(tmp_path: Path) -> None:
    rows = [
        {"patient_id": "PAT-0042", "first_name": "Jane", "last_name": "Doe", "label": "1",
         "report": "Jane Doe, MRN: 4455667, seen 2020-03-15. Call 617-555-0100."},
        {"patient_id": "PAT-0043", "first_name": "Raj", "last_name": "Iyer", "label": "0",
         "report": "Mr. Iyer doing well. Old chart 4455667 mentions DOE. PAT-0042 is his neighbour."},
    ]
    src = _csv(tmp_path / "notes.csv", rows)
    key = new_key_file(tmp_path / "deid.key")
    out = tmp_path / "notes_deid.csv"
    res = deidentify(src, out, key_file=key, text_column="report", id_column="patient_id",
                     name_columns=["first_name", "last_name"], retain_dates=True, echo=lambda m: None)
    got = list(csv.DictReader(open(out)))
    pseudo = Pseudonymizer(bytes.fromhex(key.read_text().strip()))
    assert list(got[0]) == ["patient_id", "label", "report"]  # name columns used, then dropped
    assert [g["patient_id"] for g in got] == [pseudo.patient_id("PAT-0042"), pseudo.patient_id("PAT-0043")]
    d = dt.date(2020, 3, 15) + dt.timedelta(days=pseudo.date_shift_days("PAT-0042"))
    assert got[0]["report"] == f"[NAME], MRN: [ID], seen {d:%Y-%m-%d}. Call [PHONE]."
    # pass 2: the MRN found after "MRN:" in one note is removed where it stands alone in another
    assert got[1]["report"] == "Mr. [NAME] doing well. Old chart [ID] mentions [NAME]. [ID] is his neighbour."
    assert res.remaining == 0
    report = json.loads((tmp_path / "notes_deid.csv.deid.json").read_text())
    assert report["verification"]["remaining"] == 0 and "PAT-0042" not in json.dumps(report)
    with pytest.raises(MedmmError, match="exists"):
        deidentify(src, out, key_file=key, text_column="report", echo=lambda m: None)


def test_identifier_left_in_a_copied_column_fails_loudly(tmp_path: Path) -> None:
    rows = [{"patient_id": "PAT-7", "name": "Jane Doe", "comment": "called Doe back",
             "report": "Doe is stable."}]
    src = _csv(tmp_path / "notes.csv", rows)
    with pytest.raises(MedmmError, match=r"verification FAILED.*name.*column comment"):
        deidentify(src, tmp_path / "o.csv", key_file=new_key_file(tmp_path / "k"), text_column="report",
                   id_column="patient_id", name_columns=["name"], echo=lambda m: None)
    assert not (tmp_path / "o.csv").exists()


def test_bad_notes_input(tmp_path: Path) -> None:
    src = _csv(tmp_path / "notes.csv", [{"id": "1", "report": "x"}])
    key = new_key_file(tmp_path / "k")
    with pytest.raises(MedmmError, match="needs --text-column"):
        deidentify(src, tmp_path / "o.csv", key_file=key, echo=lambda m: None)
    with pytest.raises(MedmmError, match="no column"):
        deidentify(src, tmp_path / "o.csv", key_file=key, text_column="text", echo=lambda m: None)


def test_synthetic_notes_recall_and_precision_floor() -> None:
    """The bench's generator, small: every rule-covered type is caught; a floor, not the bench."""
    notes = make_notes(40, seed=3)
    rows = as_rows(notes)
    scrubber = NotesScrubber(rows, Pseudonymizer(KEY), DeidOptions(), "report", "patient_id",
                             ("first_name", "last_name"))
    planted = caught = detected = hits = 0
    for note, row in zip(notes, rows):
        _, spans = scrubber.scrub(row)
        covered = {i for s in spans for i in range(s.start, s.end)}
        detected += len(spans)
        hits += sum(any(s.start < e and s.end > b for b, e, _ in note.spans) for s in spans)
        for b, e, kind in note.spans:
            if kind != "NAME_BARE":  # uncued names outside the list are not caught (README)
                planted += 1
                caught += all(i in covered for i in range(b, e) if note.text[i].isalnum())
    assert caught / planted > 0.9 and hits / detected > 0.95


def test_value_index_matches_whole_values_only() -> None:
    from medmm.deid.matching import ValueIndex

    index = ValueIndex(["12345", "1.2.840.99", "TOSHIBA", "(617) 555-0100", "Jane Doe"])
    text = ("id 12345; 2.25.123456; uid 1.2.840.99.7; TOSHIBA_MEC; toshiba; call (617) 555-0100 now; "
            "JANE DOE; 1.2.840.99.")
    found = [text[s:e] for s, e, _ in index.finditer(text)]
    assert found == ["12345", "toshiba", "(617) 555-0100", "JANE DOE", "1.2.840.99"]
    assert [v for _, _, v in ValueIndex(["Doe"], ignore_case=False).finditer("DOE Doe doe")] == ["Doe"]
    many = ValueIndex(f"MRN{i:07d}" for i in range(20_000))  # many ids: still one lookup per token
    assert [v for _, _, v in many.finditer("old chart MRN0012345 and MRN9999999")] == ["MRN0012345"]


def test_short_numeric_value_is_not_matched_inside_a_longer_number() -> None:
    """#26: an accession "0010" matched inside a file name refused a whole run."""
    from medmm.deid.matching import ValueIndex

    index = ValueIndex(["0010"])
    assert [v for *_, v in index.finditer("ID 0010, file 0010.dcm, a/0010/b")] == ["0010"] * 3
    for text in ("1.2.0010", "20-0010", "7_0010", "0010-2", "100105", "2004/0010"):
        assert not list(index.finditer(text)), text
