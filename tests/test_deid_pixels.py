"""medmm deid and burned-in pixel text: blanking, re-encoding, the second pass, path checks, cleanup.

Fast tests plant the text boxes through a reader stand-in (a known answer); the OCR engine itself
(RapidOCR) runs on the real ultrasound files in the slow tests (several seconds per image on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medmm.deid import deidentify
from medmm.deid.folder import PARTIAL_MARK, path_problems, remove_stale_partials
from medmm.deid.pixels import clean_pixels, in_scope, mark_clean
from medmm.deid.pseudonyms import new_key_file
from medmm.deid.verify import pattern_kinds
from medmm.demos.dicom import source_roots
from medmm.errors import MedmmError

ROOTS = source_roots()
PYDICOM = ROOTS[0]
DATA = ROOTS[1] if len(ROOTS) > 1 else None
needs_data = pytest.mark.skipif(DATA is None, reason="pydicom-data is not installed")


class PlantedReader:
    """Reads text in fixed boxes while those pixels are not blank; the second pass then sees none."""

    def __init__(self, boxes: list[tuple[int, int, int, int]], stubborn: bool = False):
        self.boxes, self.stubborn, self.calls = boxes, stubborn, 0

    def read(self, image: np.ndarray) -> list[tuple[tuple[int, int, int, int], str]]:
        self.calls += 1
        found = []
        for x0, y0, x1, y1 in self.boxes:
            if self.stubborn or image[y0:y1, x0:x1].max() > image.min():
                found.append(((x0, y0, x1, y1), "DOE^JANE 20040119"))
        return found


def _mr(tmp_path: Path, name: str = "MR_small_RLE.dcm") -> pydicom.Dataset:
    ds = pydicom.dcmread(PYDICOM / name)
    ds.Modality = "US"  # in scope for the pixel pass
    return ds


def test_blanks_planted_boxes_keeps_rle_and_marks_clean(tmp_path: Path) -> None:
    ds = _mr(tmp_path)
    before = ds.pixel_array.copy()
    reader = PlantedReader([(10, 5, 30, 12)])
    outcome = clean_pixels(ds, reader, "blank")  # type: ignore[arg-type]
    assert outcome.blanked and outcome.skip is None and outcome.texts_before and not outcome.texts_after
    assert outcome.reencoded == "same" and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    after = ds.pixel_array
    pad = 6
    region = (slice(0, 12 + pad), slice(10 - pad, 30 + pad))  # the top edge clips the padding
    assert (after[region] == before.min()).all()  # the box and its padding: darkest value
    outside = np.ones(before.shape, bool)
    outside[region] = False
    assert (after[outside] == before[outside]).all()  # nothing else touched (lossless round trip)
    mark_clean(ds)
    assert ds.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


def test_text_that_stays_after_blanking_skips_the_file(tmp_path: Path) -> None:
    ds = _mr(tmp_path, "MR_small.dcm")
    outcome = clean_pixels(ds, PlantedReader([(0, 0, 8, 8)], stubborn=True), "blank")  # type: ignore[arg-type]
    assert not outcome.blanked and outcome.skip == "text remains in the pixels after blanking"
    outcome = clean_pixels(_mr(tmp_path, "MR_small.dcm"), PlantedReader([(0, 0, 8, 8)]), "skip")  # type: ignore[arg-type]
    assert outcome.skip and "--pixels skip" in outcome.skip


def test_scope_by_modality_sop_class_and_flag() -> None:
    ct = pydicom.dcmread(PYDICOM / "CT_small.dcm", stop_before_pixels=True)
    assert not in_scope(ct) and in_scope(ct, scan_all=True)
    ct.BurnedInAnnotation = "YES"
    assert in_scope(ct)
    sc = pydicom.dcmread(PYDICOM / "SC_rgb_rle.dcm", stop_before_pixels=True)
    assert in_scope(sc)


def test_patterns_and_path_problems() -> None:
    assert pattern_kinds("5/25/2011") == ["date"] and pattern_kinds("11-05-25-142825") == ["id number"]
    assert pattern_kinds("MI 1.1 TIS<0.4 CINE 0118 3/3/4") == []
    forms = {"name form": {"jsmith", "smithj"}, "institution": {"stelsewhere"}}
    assert path_problems("a/20040119/x.dcm", forms) == ["date"]
    assert path_problems("visit 2004-01-19/x.dcm", forms) == ["date"]
    assert path_problems("JSmith/St Elsewhere/x.dcm", forms) == ["institution", "name form"]
    assert path_problems("chest/CT2/17106", forms) == []


def _key(tmp_path: Path) -> Path:
    return new_key_file(tmp_path / "keys" / "deid.key")


def test_date_and_name_folders_become_tokens_and_pass_the_check(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ds = pydicom.dcmread(PYDICOM / "CT_small.dcm")  # StudyDate 20040119, PatientName CompressedSamples^CT1
    for folder in ("20040119", "2004-01-19_CT", "visit 2004-01-19", "CompressedSamplesC"):
        (src / folder).mkdir(parents=True)
        shutil.copy(PYDICOM / "CT_small.dcm", src / folder / "a.dcm")
    out = tmp_path / "out"
    res = deidentify(src, out, key_file=_key(tmp_path), echo=lambda m: None)
    assert res.written == 4 and res.remaining == 0
    folders = [p.name for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 4 and all(f.startswith("D") for f in folders)
    text = "\n".join(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert ds.StudyDate not in text and "2004" not in text and "compressed" not in text.lower()


def test_stale_partial_of_a_dead_run_is_removed_a_live_one_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / ".out.partial-abc"
    stale.mkdir()
    (stale / PARTIAL_MARK).write_text(dead.stdout.strip())
    (stale / "x.dcm").write_bytes(b"unverified")
    live = tmp_path / ".other.partial-def"
    live.mkdir()
    (live / PARTIAL_MARK).write_text(str(os.getppid()))  # a process that runs
    foreign = tmp_path / ".mine.partial-x"  # not medmm's (no mark): never touched
    foreign.mkdir()
    assert remove_stale_partials(tmp_path) == 1
    assert not stale.exists() and live.exists() and foreign.exists()


def test_skipped_report_must_lie_outside_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PYDICOM / "CT_small.dcm", src / "a.dcm")
    with pytest.raises(MedmmError, match="outside --out"):
        deidentify(src, tmp_path / "out", key_file=_key(tmp_path), skipped_report=tmp_path / "out" / "s.csv",
                   echo=lambda m: None)


# ---------------------------------------------------------------- real OCR (slow)


@pytest.mark.slow
@needs_data
def test_real_ultrasound_text_found_blanked_and_gone(tmp_path: Path) -> None:
    """BAPTIST MED CTR (GE US, lossless J2K) and the Philips OB date / ID (RLE) are read, blanked,
    re-encoded losslessly, and a fresh OCR of the output reads nothing."""
    from medmm.deid.pixels import TextReader, display_image

    src = tmp_path / "src"
    (src / "us").mkdir(parents=True)
    shutil.copy(DATA / "US1_J2KR.dcm", src / "us" / "a.dcm")
    shutil.copy(DATA / "OBXXXX1A_rle.dcm", src / "us" / "b.dcm")
    out = tmp_path / "out"
    messages: list[str] = []
    res = deidentify(src, out, key_file=_key(tmp_path), echo=messages.append)
    assert res.written == 2 and res.remaining == 0
    assert res.pixel_counts["scanned"] == 2 and res.pixel_counts["blanked"] == 2
    assert any("2 file(s) scanned, 2 blanked" in m for m in messages)
    report = json.loads((out / "deid.json").read_text())
    assert report["pixels"]["blanked"] == 2
    reader = TextReader()
    syntaxes = set()
    for path in out.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        assert ds.BurnedInAnnotation == "NO"
        assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
        frames = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array[None]
        assert reader.read(display_image(ds, frames[0])) == []
    assert syntaxes == {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"}  # lossless stays in its family
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in (b"BAPTIST", b"11-05-25-142825", b"Philips Healthcare"):
        assert value not in blob


@pytest.mark.slow
@needs_data
def test_kill_mid_run_then_next_run_leaves_nothing_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(["US1_UNCR.dcm", "US1_UNCI.dcm", "OBXXXX1A.dcm", "US1_J2KR.dcm"]):
        shutil.copy(DATA / name, src / f"{i}.dcm")
    key = _key(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "medmm", "deid", str(src), "--out", str(tmp_path / "out"),
                             "--key-file", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.partial-*/*/*.dcm")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".out.partial-*")), "the run ended before it could be killed mid-way"
    (src / "0.dcm").unlink()  # a smaller second run: only CT_small
    for f in src.iterdir():
        f.unlink()
    shutil.copy(PYDICOM / "CT_small.dcm", src / "a.dcm")
    messages: list[str] = []
    deidentify(src, tmp_path / "out", key_file=key, echo=messages.append)
    assert not list(tmp_path.glob(".*partial*"))
    assert any("removed 1 unfinished staging folder" in m for m in messages)
    with open(tmp_path / "out" / "deid.json") as f:
        assert json.load(f)["stale_partial_folders_removed"] == 1


def test_patientid_studyuid_layout_becomes_pseudonym_and_keyed_uid(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ds = pydicom.dcmread(PYDICOM / "CT_small.dcm", stop_before_pixels=True)
    folder = src / ds.PatientID / ds.StudyInstanceUID
    folder.mkdir(parents=True)
    shutil.copy(PYDICOM / "CT_small.dcm", folder / "CT_small.dcm")
    out = tmp_path / "out"
    res = deidentify(src, out, key_file=_key(tmp_path), echo=lambda m: None)
    assert res.written == 1 and res.remaining == 0
    (written,) = out.rglob("*.dcm")
    back = pydicom.dcmread(written, stop_before_pixels=True)
    assert written.relative_to(out).parts[:2] == (back.PatientID, back.StudyInstanceUID)  # joins the headers


def test_a_run_into_the_parent_of_a_killed_runs_output_removes_its_staging_folder(tmp_path: Path) -> None:
    parent = tmp_path / "exports"
    stale = parent / ".old.partial-xyz"
    stale.mkdir(parents=True)
    (stale / PARTIAL_MARK).write_text("999999999")  # no such process
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PYDICOM / "CT_small.dcm", src / "a.dcm")
    messages: list[str] = []
    res = deidentify(src, parent, key_file=_key(tmp_path), echo=messages.append)  # --out is that parent
    assert res.written == 1 and not stale.exists() and res.stale_removed == 1
    assert any("removed 1 unfinished staging folder" in m for m in messages)


def test_big_endian_source_with_text_is_written_little_endian(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(PYDICOM / "MR_small_bigendian.dcm")
    ds.Modality = "US"
    src = tmp_path / "src"
    src.mkdir()
    ds.save_as(src / "a.dcm")
    monkeypatch.setattr("medmm.deid.pixels.TextReader", lambda: PlantedReader([(10, 5, 30, 12)]))
    res = deidentify(src, tmp_path / "out", key_file=_key(tmp_path), echo=lambda m: None)
    assert res.written == 1 and res.pixel_counts["blanked"] == 1, res.skipped
    (written,) = (tmp_path / "out").rglob("*.dcm")
    back = pydicom.dcmread(written)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and back.BurnedInAnnotation == "NO"
    assert (back.pixel_array[:18, 4:36] == back.pixel_array.min()).all()
