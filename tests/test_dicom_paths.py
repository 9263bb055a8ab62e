"""Path components that identify a patient become keyed tokens in everything a command writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from medmm.data.dicom.paths import date_kinds, institution_forms, name_forms, part_matches, public_path, token
from medmm.data.dicom.scan import ImageItem, group_key, scan_folder
from medmm.demos.dicom import source_roots

ROOT = source_roots()[0]
KEY = bytes(range(32))


def test_date_kinds_common_formats_and_not_numbers() -> None:
    for text in ("20040119", "2004-01-19_CT", "visit 2004-01-19", "19.01.2004", "01_19_2004", "19Jan2004",
                 "Jan 19, 2004", "19-january-2004"):
        assert date_kinds(text), text
    for text in ("CT2", "17106", "20041399", "1.2.840.10008", "series_001", "99999999", "2004"):
        assert not date_kinds(text), text


def test_name_and_institution_forms() -> None:
    forms = name_forms("Smith^John")
    assert {"jsmith", "smithj", "johnsmith", "smithjohn", "smith"} <= forms
    assert part_matches("J_Smith-CT", forms) and part_matches("smithj", forms)
    assert not part_matches("jones", forms) and not part_matches("CT2", forms)
    inst = institution_forms("St Elsewhere Hospital")
    assert part_matches("St Elsewhere", inst) and part_matches("stelsewhere_exports", inst)
    assert "baptist" in institution_forms("BAPTIST MED CTR")
    assert "general" not in institution_forms("General Hospital")


def test_patient_folder_and_date_folder_become_tokens(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "dicomdirtests" / "77654033", src / "77654033")  # PatientID folder (real files)
    ds = pydicom.dcmread(ROOT / "CT_small.dcm")  # PatientID 1CT1, StudyDate 20040119
    study = src / "1CT1" / "2004-01-19_CT"
    study.mkdir(parents=True)
    shutil.copy(ROOT / "CT_small.dcm", study / "x.dcm")
    (study / "notes.txt").write_text("not dicom")
    records, skipped = scan_folder(src)
    keys = [ImageItem(r).key for r in records]
    assert len(keys) == 8
    text = "\n".join(keys + [s.path for s in skipped] + [group_key(r, "instance") for r in records])
    for value in ("77654033", "1CT1", "2004-01-19", str(ds.StudyDate)):
        assert value not in text
    # same folder, same token: a study stays one group in outputs; sub-folders that hold nothing are kept
    assert len({k.split("/")[0] for k in keys if k.count("/") == 2 and "CR" in k}) == 1
    assert any(k.endswith("/CT2/17106") for k in keys)
    # the skipped file lies under the tokenised folders too
    assert skipped[0].path.endswith("/notes.txt") and skipped[0].path.count("T") >= 2


def test_public_path_is_keyed_and_keeps_suffix() -> None:
    a = public_path("77654033/CT2/17106.dcm", (0, 2), KEY)
    assert a.split("/")[1] == "CT2" and a.endswith(".dcm") and "77654033" not in a
    assert a.split("/")[0] == token("77654033", KEY) != token("77654033", bytes(32))


def test_uploaded_file_names_holding_ids_or_dates_become_tokens() -> None:
    from medmm.data.dicom.paths import public_name

    raw = (ROOT / "CT_small.dcm").read_bytes()  # PatientID 1CT1, StudyDate 20040119
    assert public_name("1CT1.dcm", raw).startswith("T") and public_name("1CT1.dcm", raw).endswith(".dcm")
    assert public_name("scan_20040119.dcm", raw).startswith("T")
    assert public_name("CT_small.dcm", raw) == "CT_small.dcm"
    assert public_name("x.dcm", b"not dicom") == "x.dcm"
