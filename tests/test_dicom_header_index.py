"""The DICOM header index (#30): a second scan of the same folder reads only new or changed files,
gives the same records and skips as a fresh scan, and survives a damaged index."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from medmm.data.dicom.scan import list_files, scan_folder
from medmm.demos.dicom import source_roots

PYDICOM_FILES = source_roots()[0]


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(PYDICOM_FILES, root)
    return root


def test_second_scan_reads_no_header_and_gives_the_same_result(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path), tmp_path / "cache"
    first_stats: dict[str, int] = {}
    first = scan_folder(root, index_dir=cache, stats=first_stats)
    assert first == scan_folder(root)  # the index changes nothing about the result
    n = len(list_files(root))
    assert first_stats == {"files": n, "headers_read": n, "reused": 0}
    again: dict[str, int] = {}
    assert scan_folder(root, index_dir=cache, stats=again) == first
    assert again == {"files": n, "headers_read": 0, "reused": n}
    index = next((cache / "dicom-headers").glob("*.json"))
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert (cache / "dicom-headers" / "CACHEDIR.TAG").exists()


def test_changed_new_and_removed_files_are_read_again(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path), tmp_path / "cache"
    scan_folder(root, index_dir=cache)
    ct = root / "CT_small.dcm"
    st = ct.stat()
    ct.write_bytes(b"no longer an image")  # its scan result changes
    os.utime(ct, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    shutil.copy(root / "MR_small.dcm", root / "MR_copy.dcm")
    (root / "rtplan.dcm").unlink()
    stats: dict[str, int] = {}
    got = scan_folder(root, index_dir=cache, stats=stats)
    assert stats["headers_read"] == 2 and stats["reused"] == stats["files"] - 2
    assert got == scan_folder(root)
    assert dict((s.path, s.reason) for s in got[1])["CT_small.dcm"].startswith("not a DICOM file")


def test_a_damaged_index_is_ignored_not_trusted(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path), tmp_path / "cache"
    first = scan_folder(root, index_dir=cache)
    index = next((cache / "dicom-headers").glob("*.json"))
    index.write_text('{"format": "medmm-dicom-header-index/1", "entries": {"CT_small.dcm": [1, 2, "record", []]}')
    stats: dict[str, int] = {}
    assert scan_folder(root, index_dir=cache, stats=stats) == first
    assert stats["reused"] == 0


def test_folder_fingerprint_reads_no_file_unless_an_old_run_needs_hashes(tmp_path, monkeypatch) -> None:
    """A run's folder fingerprint is size + mtime (no file read); only an older run's content
    fingerprint makes --resume hash the folder again."""
    from medmm import fingerprint as fp

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.dcm").write_bytes(b"x" * 10)
    reads: list[str] = []
    real = fp._file_digest
    monkeypatch.setattr(fp, "_file_digest", lambda p: reads.append(str(p)) or real(p))
    new = fp.fingerprint(root)
    assert new["method"] == "size+mtime" and not reads
    run = tmp_path / "run"
    run.mkdir()
    fp.save(run, root, new)
    assert fp.check_same_data(run, root) and not reads  # resume: a directory walk
    old = fp.fingerprint(root, content=True)  # what a run made before #30 stored
    fp.save(run, root, old)
    reads.clear()
    assert fp.check_same_data(run, root) and len(reads) == 1  # compared like with like: hashed
