"""Labels from folders and CSVs: every key style, multi-label, and nothing dropped silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medmm.demos.dicom import source_roots
from medmm.data.dicom.labels import labels_from_csv, labels_from_folders
from medmm.data.dicom.scan import DicomRecord, scan_folder
from medmm.errors import DataError

BASE = DicomRecord("x", "P", "study-1", "series-1", "sop-1", "CT", 8, 8, 1, "1.2.840.10008.1.2.1",
                   "MONOCHROME2")
RECORDS = [
    dataclasses.replace(BASE, path="chest/a.dcm", sop_uid="sop-a"),
    dataclasses.replace(BASE, path="chest/b.dcm", sop_uid="sop-b", series_uid="series-2"),
    dataclasses.replace(BASE, path="head/c.dcm", sop_uid="sop-c", study_uid="study-2", series_uid="series-3"),
    dataclasses.replace(BASE, path="loose.dcm", sop_uid="sop-d", study_uid="study-3", series_uid="series-4"),
]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_folder_labels_report_root_files_as_unlabelled() -> None:
    table = labels_from_folders(RECORDS)
    assert dict(table) == {"chest/a.dcm": "chest", "chest/b.dcm": "chest", "head/c.dcm": "head"}
    assert table.classes == ["chest", "head"] and table.unlabelled == ["loose.dcm"]
    assert table.target("head/c.dcm") == 1 and not table.multi_label


def test_folder_labels_on_a_real_scan() -> None:
    records, _ = scan_folder(source_roots()[0] / "dicomdirtests")
    table = labels_from_folders(records)
    assert table.classes == ["77654033", "98892001", "98892003"]  # first level only
    assert table["77654033/CR1/6154"] == "77654033" and table.unlabelled == []


def test_csv_by_path_normalises_and_reports_unmatched(tmp_path: Path) -> None:
    text = "path,finding\n./chest/a.dcm,normal\nchest\\b.dcm,effusion\nhead/missing.dcm,normal\n"
    table = labels_from_csv(RECORDS, _csv(tmp_path, "\ufeff" + text))  # Excel BOM
    assert dict(table) == {"chest/a.dcm": "normal", "chest/b.dcm": "effusion"}
    assert table.classes == ["effusion", "normal"] and table.key == "path"
    assert table.unmatched == ["head/missing.dcm"]
    assert table.unlabelled == ["head/c.dcm", "loose.dcm"]


def test_csv_absolute_paths_relative_to_root(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    text = f"path,label\n{root / 'chest' / 'a.dcm'},yes\n/elsewhere/b.dcm,no\n"
    table = labels_from_csv(RECORDS, _csv(tmp_path, text), root=root)
    assert dict(table) == {"chest/a.dcm": "yes"} and table.unmatched == ["/elsewhere/b.dcm"]


def test_csv_by_sop_instance_uid(tmp_path: Path) -> None:
    table = labels_from_csv(RECORDS, _csv(tmp_path, "sopinstanceuid,label\nsop-c,bleed\nsop-z,none\n"))
    assert dict(table) == {"head/c.dcm": "bleed"} and table.unmatched == ["sop-z"]
    assert table.key == "SOPInstanceUID"


def test_csv_by_study_labels_every_instance_in_it(tmp_path: Path) -> None:
    text = "StudyInstanceUID,label\nstudy-1,abnormal\nstudy-2,normal\n"
    table = labels_from_csv(RECORDS, _csv(tmp_path, text))
    assert dict(table) == {"chest/a.dcm": "abnormal", "chest/b.dcm": "abnormal", "head/c.dcm": "normal"}
    assert table.unlabelled == ["loose.dcm"] and table.unmatched == []


def test_csv_by_series(tmp_path: Path) -> None:
    table = labels_from_csv(RECORDS, _csv(tmp_path, "SeriesInstanceUID,label\nseries-1,a\nseries-2,b\n"))
    assert dict(table) == {"chest/a.dcm": "a", "chest/b.dcm": "b"}


def test_csv_multi_label(tmp_path: Path) -> None:
    text = "path,effusion,nodule,note\nchest/a.dcm,1,0,\nchest/b.dcm,0.0,1.0,\nhead/c.dcm,,,\n"
    table = labels_from_csv(RECORDS, _csv(tmp_path, text), label_columns=["effusion", "nodule"])
    assert table.multi_label and table.classes == ["effusion", "nodule"]
    assert dict(table) == {"chest/a.dcm": (1, 0), "chest/b.dcm": (0, 1)}
    assert table.target("chest/b.dcm") == [0.0, 1.0]
    assert table.unlabelled == ["head/c.dcm", "loose.dcm"]  # blank row -> unlabelled, not dropped
    with pytest.raises(DataError, match="'nodule' must be 0 or 1"):
        labels_from_csv(RECORDS, _csv(tmp_path, "path,effusion,nodule\nchest/a.dcm,1,maybe\n"))


@pytest.mark.parametrize("text, message", [
    ("filename,label\na.dcm,x\n", "needs a key column"),
    ("path\nchest/a.dcm\n", "no label column"),
    ("path,label\nchest/a.dcm,x\n./chest/a.dcm,y\n", "conflicting labels"),
    ("path,label\n,x\n", "line 2: empty path"),
])
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        labels_from_csv(RECORDS, _csv(tmp_path, text))


def test_csv_missing_file_and_unknown_label_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        labels_from_csv(RECORDS, tmp_path / "nope.csv")
    with pytest.raises(DataError, match="label column"):
        labels_from_csv(RECORDS, _csv(tmp_path, "path,label\nchest/a.dcm,x\n"), label_columns=["grade"])


def test_summary_has_counts_only() -> None:
    assert labels_from_folders(RECORDS).summary() == (
        "3 labelled, 1 unlabelled, 0 unmatched CSV key(s); 2 classes")
