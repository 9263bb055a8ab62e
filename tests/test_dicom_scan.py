"""Folder scan, skip report, grouping keys and the demo folder, on real pydicom files."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from medmm.demos.dicom import CLASSES, build_demo, source_roots
from medmm.data.dicom.labels import labels_from_folders
from medmm.data.dicom.scan import (
    CACHEDIR_TAG,
    DicomRecord,
    Skipped,
    decode_workers,
    expand_frames,
    group_key,
    image_items,
    list_files,
    scan_folder,
    write_skipped_csv,
)
from medmm.errors import DataError

ROOTS = source_roots()
PYDICOM_FILES = ROOTS[0]


def _record(**changes) -> DicomRecord:
    base = DicomRecord("CT/a.dcm", "P1", "1.2.3", "1.2.3.4", "1.2.3.4.5", "CT", 8, 8, 1,
                       "1.2.840.10008.1.2.1", "MONOCHROME2")
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("root", ROOTS, ids=("pydicom", "pydicom-data")[: len(ROOTS)])
def test_every_file_found_is_ingested_or_skipped(root: Path) -> None:
    records, skipped = scan_folder(root)
    found = list_files(root)
    assert len(records) + len(skipped) == len(found)
    assert sorted([r.path for r in records] + [s.path for s in skipped]) == found
    assert all(s.reason for s in skipped)
    assert records == sorted(records, key=lambda r: r.path)


def test_skip_reasons_for_known_bad_files() -> None:
    records, skipped = scan_folder(PYDICOM_FILES)
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["README.txt"].startswith("not a DICOM file")
    assert reasons["no_meta.dcm"].startswith("not a DICOM file")  # force=False: no preamble
    assert reasons["rtplan.dcm"] == "no pixel data"
    assert reasons["dicomdirtests/DICOMDIR"] == "no pixel data"
    assert reasons["MR_truncated.dcm"] == "truncated pixel data (8130 of 8192 bytes)"
    assert reasons["badVR.dcm"] == "invalid NumberOfFrames"  # '1A'
    assert reasons["meta_missing_tsyntax.dcm"] == "no transfer syntax in file meta"
    by_path = {r.path: r for r in records}
    ct = by_path["CT_small.dcm"]
    assert (ct.modality, ct.rows, ct.cols, ct.frames, ct.photometric) == ("CT", 128, 128, 1, "MONOCHROME2")
    assert ct.transfer_syntax == "1.2.840.10008.1.2.1"
    assert by_path["dicomdirtests/77654033/CR1/6154"].photometric == "MONOCHROME1"
    assert by_path["rtdose.dcm"].frames == 15


def test_hidden_files_counted_hidden_and_cache_dirs_pruned(tmp_path: Path) -> None:
    shutil.copyfile(PYDICOM_FILES / "CT_small.dcm", tmp_path / "a.dcm")
    shutil.copyfile(PYDICOM_FILES / "CT_small.dcm", tmp_path / ".hidden.dcm")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / CACHEDIR_TAG).write_text("Signature: 8a477f597d28d172789f06886806bc55")
    (tmp_path / "cache" / "pixels.npy").write_bytes(b"\x93NUMPY")
    (tmp_path / "empty.dcm").write_bytes(b"")
    records, skipped = scan_folder(tmp_path)
    assert [r.path for r in records] == ["a.dcm"]
    assert {s.path: s.reason for s in skipped} == {
        ".hidden.dcm": "hidden file",
        "empty.dcm": "not a DICOM file (no DICM preamble / file meta)",
    }


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "nope")


def test_write_skipped_csv(tmp_path: Path) -> None:
    skipped = [Skipped("a/b.dcm", "no pixel data"), Skipped("c,d.txt", "x")]
    out = write_skipped_csv(skipped, tmp_path / "r" / "s.csv")
    with open(out, newline="") as fh:
        assert list(csv.reader(fh)) == [["path", "reason"], ["a/b.dcm", "no pixel data"], ["c,d.txt", "x"]]
    assert write_skipped_csv([], out) is None and not out.exists()  # the one writer (medmm.io): no stale report


def test_decode_workers_is_num_workers_or_the_cpus_within_1_to_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (decode_workers(0), decode_workers(None), decode_workers(2), decode_workers(8)) == (4, 4, 2, 4)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert decode_workers(0) == 1


def test_group_key_levels_and_fallbacks() -> None:
    rec = _record()
    assert [group_key(rec, lvl) for lvl in ("instance", "series", "study", "patient")] == [
        "path:CT/a.dcm", "series:1.2.3.4", "study:1.2.3", "patient:P1"]
    anonymous = _record(patient_id="", study_uid="")
    assert group_key(anonymous, "patient") == "series:1.2.3.4"
    assert group_key(_record(patient_id="", study_uid="", series_uid=""), "patient") == "path:CT/a.dcm"
    with pytest.raises(DataError, match="unknown grouping level"):
        group_key(rec, "hospital")


def test_expand_frames_gives_one_item_per_frame() -> None:
    recs = [_record(path="a.dcm", frames=3), _record(path="b.dcm", frames=1)]
    assert [i.key for i in expand_frames(recs)] == ["a.dcm#0", "a.dcm#1", "a.dcm#2", "b.dcm#0"]
    assert [i.key for i in image_items(recs, "middle")] == ["a.dcm", "b.dcm"]
    assert group_key(expand_frames(recs)[1], "instance") == "path:a.dcm"


def test_scan_parallel_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmm.data.dicom.scan as scan

    monkeypatch.setattr(scan, "_POOL_MIN_FILES", 1)
    assert scan_folder(PYDICOM_FILES, workers=2) == scan_folder(PYDICOM_FILES)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo") / "dicom")


@pytest.mark.slow
def test_demo_folder_has_real_classes_and_exercises_skips(demo: Path) -> None:
    records, skipped = scan_folder(demo)
    labels = labels_from_folders(records)
    assert labels.classes == sorted(CLASSES)
    counts = {c: sum(1 for v in labels.values() if v == c) for c in labels.classes}
    assert all(n >= 4 for n in counts.values()), counts
    assert 40 <= len(records) <= 150
    assert all(r.modality == labels[r.path] for r in records)  # folder = header modality
    assert {s.path for s in skipped} == {"README.txt", "US/.DS_Store", "MR/MR_truncated.dcm"}
    assert labels.unlabelled == []


@pytest.mark.slow
def test_demo_rebuild_is_idempotent(demo: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    build_demo(demo)
    after = {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    assert before == after
    assert sorted(os.listdir(demo)) == ["CR", "CT", "MR", "README.txt", "US"]
