"""``medmm deid`` on DICOM: PS3.15 Basic profile, keyed pseudonyms that join, skips, verification."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medmm.demos.dicom import source_roots
from medmm.deid import deidentify
from medmm.deid.dicom import deidentify_dataset, load_profile, pixel_hash
from medmm.deid.options import DeidOptions, load_options
from medmm.deid.pseudonyms import Pseudonymizer, load_key, new_key_file
from medmm.errors import MedmmError

ROOT = source_roots()[0]
KEY = bytes(range(32))


def _src(tmp_path: Path) -> Path:
    """A small real folder: one patient's study folder (named by its PatientID), CT with private
    tags, a secondary capture, a burned-in copy, and a text file."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "dicomdirtests" / "77654033", src / "chest" / "77654033")
    shutil.copy(ROOT / "CT_small.dcm", src / "chest" / "CT_small.dcm")
    (src / "other").mkdir()
    shutil.copy(ROOT / "JPEG2000.dcm", src / "other" / "sc.dcm")
    ds = pydicom.dcmread(ROOT / "MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.save_as(src / "other" / "burned.dcm")
    (src / "other" / "notes.txt").write_text("not dicom")
    return src


def _key(tmp_path: Path) -> Path:
    return new_key_file(tmp_path / "keys" / "deid.key")


def _walk_private(ds: Dataset) -> list[int]:
    found: list[int] = []
    ds.walk(lambda d, e: found.append(int(e.tag)) if e.tag.is_private else None)
    return found


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm"))


def test_folder_profile_pseudonyms_skips_and_labels(tmp_path: Path) -> None:
    src = _src(tmp_path)
    key_file = _key(tmp_path)
    sources = {p: pydicom.dcmread(p) for p in src.rglob("*") if p.is_file() and p.suffix != ".txt"}
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "label"])
        w.writerows([["77654033", "1"], ["1CT1", "0"], ["nobody", "1"]])
    out = tmp_path / "out"
    messages: list[str] = []
    report = tmp_path / "skipped_real.csv"
    res = deidentify(src, out, key_file=key_file, labels=labels, id_column="patient_id", echo=messages.append,
                     pixels="keep", skipped_report=report)  # no OCR: files at risk of burned-in text are skipped
    pseudo = Pseudonymizer(load_key(key_file)[0])

    assert res.written == 8 and res.remaining == 0
    skipped = {r["path"]: r["reason"] for r in csv.DictReader(open(report))}
    inside = {r["file_token"]: r["reason"] for r in csv.DictReader(open(out / "skipped.csv"))}
    assert inside == {pseudo.token(p, "file", 20): why for p, why in skipped.items()}  # keyed names inside --out
    assert any("pixels: NOT scanned (--pixels keep)" in m for m in messages)
    assert "secondary capture" in skipped["other/sc.dcm"]
    assert "BurnedInAnnotation=YES" in skipped["other/burned.dcm"]
    assert "not a DICOM file" in skipped["other/notes.txt"]
    # layout kept, patient-id folder -> pseudonym, file names keyed
    folders = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()}
    assert f"chest/{pseudo.patient_id('77654033')}/CT2" in folders and "chest" in folders
    assert not any("77654033" in p.as_posix() or "CT_small" in p.name for p in out.rglob("*"))

    source_values = set()
    for ds in sources.values():
        for kw in ("PatientName", "InstitutionName", "StudyInstanceUID", "SOPInstanceUID",
                   "PatientBirthDate"):
            v = str(ds.get(kw, "") or "")
            if len(v) > 3:
                source_values.add(v.encode())
    outputs = _outputs(out)
    assert len(outputs) == 8
    studies: dict[str, set[str]] = {}
    for path in outputs:
        raw = path.read_bytes()
        assert not [v for v in source_values if v in raw]  # independent of the built-in scan
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.PatientID == ds.PatientName
        assert ds.PatientID in {pseudo.patient_id("77654033"), pseudo.patient_id("1CT1")}
        assert _walk_private(ds) == []
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID.startswith("2.25.")
        studies.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)
    # the source has 3 studies (CR 3 series, CT2 1 series, CT_small 1): the same after remapping
    src_studies: dict[str, set[str]] = {}
    for p, ds in sources.items():
        if "other" not in p.parts:
            src_studies.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)
    assert sorted(map(len, studies.values())) == sorted(map(len, src_studies.values()))
    assert {pseudo.uid(u) for u in src_studies} == set(studies)

    rows = list(csv.DictReader(open(out / "labels.csv")))
    out_ids = {pydicom.dcmread(p).PatientID for p in outputs}
    assert [r["patient_id"] for r in rows] == [pseudo.patient_id(v) for v in ("77654033", "1CT1", "nobody")]
    assert sum(r["patient_id"] in out_ids for r in rows) == 2  # joins exactly as the raw ids did
    report = (out / "deid.json").read_text()
    assert '"remaining": 0' in report and "77654033" not in report
    assert not any(load_key(key_file)[0].hex() in m for m in messages)
    assert not list(tmp_path.glob(".out.partial-*"))


def test_pixel_data_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "CT_small.dcm", src / "a.dcm")
    res = deidentify(src, tmp_path / "out", key_file=_key(tmp_path), echo=lambda m: None)
    (out_file,) = _outputs(tmp_path / "out")
    assert res.pixels_checked == 1
    before = pydicom.dcmread(src / "a.dcm")
    after = pydicom.dcmread(out_file)
    assert pixel_hash(after) == pixel_hash(before) == hashlib.sha256(before.PixelData).hexdigest()
    assert (after.pixel_array == before.pixel_array).all()


def _nested_pair() -> tuple[Dataset, Dataset]:
    """Two instances; the second references the first inside nested sequences that carry PHI."""
    def base(sop: str) -> Dataset:
        ds = Dataset()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PAT-0042", "19400101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5", sop
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.StudyDate, ds.AccessionNumber = "20200315", "ACC998877"
        ds.InstitutionName = "St Elsewhere Hospital"
        ds.StudyDescription = "CT chest for Jane Doe 2020-03-15"
        ds.DeviceSerialNumber = "SN-55512"
        ds.EvaluatorName, ds.ExpiryDate = "House^Gregory", "20200316"  # not in Table E.1-1
        return ds

    first, second = base("1.2.3.4.5.1"), base("1.2.3.4.5.2")
    first.add_new(0x60000010, "US", 4)  # an overlay: its data may be burned-in text
    first.add_new(0x60000022, "LO", "Doe annotations")
    first.add_new(0x60003000, "OW", b"\x01\x00" * 2)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    req = Dataset()
    req.AccessionNumber, req.RequestingPhysician = "ACC998877", "House^Gregory"
    req.add_new(0x00291010, "LO", "private PAT-0042")
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = first.SOPInstanceUID
    inner.add_new(0x00431001, "LO", "Doe^Jane")
    req.ReferencedStudySequence = Sequence([inner])
    second.RequestAttributesSequence = Sequence([req])  # X in Table E.1-1: removed whole
    region = Dataset()  # a sequence the profile keeps: cleaned item by item, at any depth
    region.CodeValue, region.CodeMeaning = "T-D3000", "Chest"
    region.AccessionNumber, region.PerformingPhysicianName = "ACC998877", "House^Gregory"
    region.add_new(0x00291010, "LO", "private PAT-0042")
    region.ReferencedStudySequence = Sequence([inner])
    second.AnatomicRegionSequence = Sequence([region])
    second.add_new(0x00091001, "LO", "Doe")
    return first, second


def test_nested_sequences_private_tags_and_references() -> None:
    pseudo, profile = Pseudonymizer(KEY), load_profile()
    first, second = _nested_pair()
    for ds in (first, second):
        deidentify_dataset(ds, pseudo, profile, DeidOptions())
    assert "RequestAttributesSequence" not in second
    req = second.AnatomicRegionSequence[0]
    assert req.CodeMeaning == "Chest" and not req.AccessionNumber and "PerformingPhysicianName" not in req
    assert _walk_private(second) == []
    # references still resolve to the remapped instance, at every depth
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert req.ReferencedStudySequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # kept
    assert first.SOPInstanceUID == pseudo.uid("1.2.3.4.5.1")
    assert first.StudyInstanceUID == second.StudyInstanceUID
    text = repr(second) + repr(first)
    for value in ("Doe", "Jane", "PAT-0042", "19400101", "ACC998877", "Elsewhere", "SN-55512", "20200315",
                  "House", "20200316"):
        assert value not in text
    assert first.LongitudinalTemporalInformationModified == "REMOVED"
    assert not [e for e in first if e.tag.group == 0x6000]  # the whole overlay group, not just its data


def test_options_date_shift_device_identity_clean_descriptors() -> None:
    pseudo, profile = Pseudonymizer(KEY), load_profile()
    first, _ = _nested_pair()
    opts = DeidOptions(retain_dates=True, retain_device_identity=True, clean_descriptors=True)
    from medmm.deid.dicom import source_identifiers

    found, _ = source_identifiers(first, profile, opts)
    deidentify_dataset(first, pseudo, profile, opts, found)
    shift = pseudo.date_shift_days("PAT-0042")
    import datetime as dt

    assert first.StudyDate == (dt.date(2020, 3, 15) + dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert shift < 0 and shift % 7 == 0
    assert not first.get("PatientBirthDate")  # never retained
    assert first.DeviceSerialNumber == "SN-55512"
    assert first.StudyDescription.startswith("CT chest for [NAME]") and "Jane" not in first.StudyDescription
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [c.CodeValue for c in first.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113109"]


def test_options_file(tmp_path: Path) -> None:
    cfg = tmp_path / "deid.yaml"
    cfg.write_text("retain_dates: true\nclean_descriptors: false\n")
    assert load_options(cfg, clean_descriptors=True) == DeidOptions(retain_dates=True, clean_descriptors=True)
    cfg.write_text("retain_date: true\n")
    with pytest.raises(MedmmError, match="unknown deid option 'retain_date'"):
        load_options(cfg)


def test_output_inside_input_or_not_empty_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "MR_small.dcm", src / "a.dcm")
    key = _key(tmp_path)
    with pytest.raises(MedmmError, match="inside the input"):
        deidentify(src, src / "deid", key_file=key, echo=lambda m: None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(MedmmError, match="not empty"):
        deidentify(src, tmp_path / "full", key_file=key, echo=lambda m: None)
    assert (tmp_path / "full" / "x").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    deidentify(src, tmp_path / "empty", key_file=key, echo=lambda m: None)  # an empty folder is fine
    assert len(_outputs(tmp_path / "empty")) == 1


def test_key_file_missing_is_an_error_created_0600_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "MR_small.dcm", src / "a.dcm")
    missing = tmp_path / "k" / "new.key"
    with pytest.raises(MedmmError, match="does not exist; pass --create-key"):
        deidentify(src, tmp_path / "out", key_file=missing, echo=lambda m: None)
    assert not missing.exists() and not (tmp_path / "out").exists()
    deidentify(src, tmp_path / "out", key_file=missing, create_key=True, echo=lambda m: None)
    assert stat.S_IMODE(missing.stat().st_mode) == 0o600
    key_hex = missing.read_text().strip()
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and all(key_hex not in p.read_bytes().decode("latin-1") for p in written)
    os.chmod(missing, 0o644)
    with pytest.raises(MedmmError, match="readable by others"):
        load_key(missing)


def test_residual_identifier_fails_loudly_and_writes_nothing(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import medmm.deid.dicom as dicom

    real = dicom.deidentify_dataset

    def leaky(ds, *args, **kwargs):  # a profile bug: the institution survives in a kept attribute
        name = str(ds.get("InstitutionName", ""))
        real(ds, *args, **kwargs)
        ds.ImageComments = f"scanned at {name}"

    monkeypatch.setattr(dicom, "deidentify_dataset", leaky)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "CT_small.dcm", src / "a.dcm")
    with pytest.raises(MedmmError, match=r"verification FAILED.*institution"):
        deidentify(src, tmp_path / "out", key_file=_key(tmp_path), echo=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_cli_deid_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medmm.cli import main

    src = tmp_path / "src"
    src.mkdir()
    args = ["deid", str(src), "--out", str(tmp_path / "o"), "--key-file", str(tmp_path / "nope.key")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medmm: error: key file") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the deliberately odd test files
def test_pydicom_test_files_and_pydicom_data_end_to_end(tmp_path: Path) -> None:
    """Every bundled file: 0 identifiers remain, every output reads, every label row still joins.

    (Training image-cls on the output was checked by hand: README, "De-identify before you train".)"""
    from medmm.data.dicom.scan import list_files

    src = tmp_path / "src"
    for i, root in enumerate(source_roots()):
        shutil.copytree(root, src / f"set{i}")
    rows = []
    for rel in list_files(src):
        try:
            ds = pydicom.dcmread(src / rel, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - non-DICOM files have no label row
            continue
        rows.append({"path": rel, "patient_id": str(ds.get("PatientID", "") or ""),
                     "label": str(ds.get("Modality", ""))})
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "patient_id", "label"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "out"
    res = deidentify(src, out, key_file=_key(tmp_path), labels=labels, id_column="patient_id",
                     echo=lambda m: None, pixels="keep", skipped_report=tmp_path / "skipped_real.csv")
    assert res.remaining == 0 and res.written > 150 and res.identifiers_checked > 300
    outputs = _outputs(out)
    assert len(outputs) == res.written
    written_ids = set()
    for p in outputs:
        written_ids.add(pydicom.dcmread(p).PatientID)
    out_rows = list(csv.DictReader(open(out / "labels.csv")))
    written_src = {r["path"] for r in rows} - {r["path"] for r in csv.DictReader(open(tmp_path / "skipped_real.csv"))}
    assert len(out_rows) == len(written_src)
    assert all(r["patient_id"] in written_ids for r in out_rows)  # every label row still joins


def test_labels_keyed_by_path_and_uid_still_match_after_renaming(tmp_path: Path) -> None:
    from medmm.data.dicom.labels import labels_from_csv
    from medmm.data.dicom.scan import scan_folder

    src = tmp_path / "src"
    (src / "ct").mkdir(parents=True)
    shutil.copy(ROOT / "CT_small.dcm", src / "ct" / "a.dcm")
    shutil.copy(ROOT / "MR_small.dcm", src / "mr.dcm")
    by_path = tmp_path / "by_path.csv"
    by_path.write_text(f"path,patient_id,label\nct/a.dcm,1CT1,ct\n{src / 'mr.dcm'},4MR1,mr\ngone.dcm,x,ct\n")
    res = deidentify(src, tmp_path / "out", key_file=_key(tmp_path), labels=by_path, id_column="patient_id",
                     echo=lambda m: None)
    assert res.labels_rows == 2 and res.labels_dropped == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "by_path.csv")))
    records, _ = scan_folder(tmp_path / "out")
    labels = labels_from_csv(records, _two_columns(rows, "path", tmp_path / "l.csv"))
    assert sorted(labels.values()) == ["ct", "mr"] and not labels.unmatched

    uid_key = tmp_path / "by_uid.csv"
    sop = pydicom.dcmread(src / "mr.dcm").SOPInstanceUID
    uid_key.write_text(f"SOPInstanceUID,patient_id,label\n{sop},4MR1,mr\n")
    deidentify(src, tmp_path / "out2", key_file=tmp_path / "keys" / "deid.key", labels=uid_key,
               id_column="patient_id", echo=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "out2" / "by_uid.csv")))
    records, _ = scan_folder(tmp_path / "out2")
    labels = labels_from_csv(records, _two_columns(rows, "SOPInstanceUID", tmp_path / "u.csv"))
    assert list(labels.values()) == ["mr"] and not labels.unmatched


def _two_columns(rows: list[dict[str, str]], key: str, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key, "label"])
        w.writerows([r[key], r["label"]] for r in rows)
    return path


def test_bare_data_set_without_preamble_becomes_a_part10_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "ExplVR_LitEndNoMeta.dcm", src / "bare.dcm")
    (src / "junk.dcm").write_bytes(b"\x08\x00 not really a data set")
    res = deidentify(src, tmp_path / "out", key_file=_key(tmp_path), echo=lambda m: None)
    assert res.written == 1 and [r for r, _ in res.skipped] == ["junk.dcm"]
    (out_file,) = _outputs(tmp_path / "out")
    ds = pydicom.dcmread(out_file)  # no force: preamble and file meta were written
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and ds.PatientIdentityRemoved == "YES"


def test_missing_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [m for m in sys.modules if m.startswith("dicomanonymizer")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dicomanonymizer", None)
    with pytest.raises(MedmmError, match=r"needs dicom-anonymizer .*pip install 'medmm\[deid\]'"):
        load_profile()
