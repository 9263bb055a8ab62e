"""medmm.data.dicom.series: which instance stands for a row's image cell, and its decoded pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmm.data.dicom.pixels import PixelConfig
from medmm.data.dicom.series import choose_images, load_row_images


def _write(path: Path, series_uid: str, value: int, *, broken: bool = False) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "1.2.3", series_uid, "P1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = np.zeros((4, 4), np.uint16)
    pixels[0, :] = value  # not constant: a constant image is refused
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())  # PixelData
    if broken:  # the header scans, the pixels cannot be decoded
        del ds.BitsAllocated
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _study(root: Path) -> None:
    for i, value in enumerate((100, 200, 300)):  # the largest series: its middle instance is b.dcm
        _write(root / "study" / "s1" / f"{'abc'[i]}.dcm", "1.2.3.1", value)
    _write(root / "study" / "s2" / "z.dcm", "1.2.3.2", 900)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no DICOM here")
    _write(root / "bad" / "x.dcm", "1.2.3.3", 50, broken=True)


def test_choose_images_picks_the_middle_of_the_largest_series(tmp_path: Path) -> None:
    _study(tmp_path)
    cells = ["study", "study/s2/z.dcm", None, "", "gone", "notes"]
    root, keys, problems = choose_images(cells, tmp_path)
    assert root == tmp_path.resolve()
    assert keys == ["study/s1/b.dcm", "study/s2/z.dcm", "", "", "", ""]
    assert problems == [(4, "image path does not exist"), (5, "no readable DICOM image at the image path")]


def test_load_row_images_decodes_once_and_drops_undecodable_rows(tmp_path: Path) -> None:
    _study(tmp_path / "data")
    cfg = PixelConfig(size=8, channels=1, window=None, frames="middle")
    rows = load_row_images(["study", "bad/x.dcm", "study/s1/b.dcm", None], tmp_path / "data", cfg,
                           tmp_path / "cache", workers=0)
    assert rows.keys == ["study/s1/b.dcm", "", "study/s1/b.dcm", ""]
    assert rows.problems == [(1, "image could not be decoded")]
    assert rows.pixels is not None and rows.pixels.image(rows.keys[0]).shape == cfg.shape
    assert not any((tmp_path / "data").rglob("*.npy"))  # the pixel cache lives in cache_dir only
    empty = load_row_images([None, "gone"], tmp_path / "data", cfg, tmp_path / "cache", workers=0)
    assert empty.pixels is None and empty.keys == ["", ""] and empty.problems == [(1, "image path does not exist")]


def test_a_second_choice_reads_no_header_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    """With the cache folder as header index, headers are read once per file, then only for files whose
    size or mtime changed; the choice is the same."""
    import os

    _study(tmp_path / "data")
    cells = ["study", "study/s2/z.dcm", "notes"]
    first: dict[str, int] = {}
    got = choose_images(cells, tmp_path / "data", index_dir=tmp_path / "cache", stats=first)
    assert first == {"headers_read": 5, "reused": 0}  # a, b, c, z and the readme (not DICOM: remembered too)
    again: dict[str, int] = {}
    assert choose_images(cells, tmp_path / "data", index_dir=tmp_path / "cache", stats=again) == got
    assert again == {"headers_read": 0, "reused": 5}
    z = tmp_path / "data" / "study" / "s2" / "z.dcm"
    st = z.stat()
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third: dict[str, int] = {}
    assert choose_images(cells, tmp_path / "data", index_dir=tmp_path / "cache", stats=third) == got
    assert third == {"headers_read": 1, "reused": 4}
    plain: dict[str, int] = {}
    assert choose_images(cells, tmp_path / "data", stats=plain) == got  # no index: every header, once
    assert plain == {"headers_read": 5, "reused": 0}
