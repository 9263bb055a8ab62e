"""Pixel cache: reuse without decoding, invalidation, per-file failures, crash isolation.

torch is imported inside the dataset test only: pool workers import this module to run
``_exit_on_row_one`` and should not pay for torch.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from medmm.data.dicom import cache as cache_mod
from medmm.data.dicom import pixels as pixels_mod
from medmm.data.dicom.cache import PixelCache
from medmm.data.dicom.pixels import PixelConfig, load_pixels
from medmm.data.dicom.scan import ImageItem, scan_folder
from medmm.demos.dicom import source_roots
from medmm.errors import DataError

ROOTS = source_roots()
PYDICOM_FILES = ROOTS[0]
FILES = {
    "CT/CT_small.dcm": "CT_small.dcm",
    "CT/17166.dcm": "dicomdirtests/77654033/CT2/17166",  # saturates its header window: constant
    "MR/MR_small.dcm": "MR_small.dcm",
    "US/rgb.dcm": "ExplVR_BigEnd.dcm",
    "NM/lossy.dcm": "JPEG-lossy.dcm",  # header fine, JPEG stream corrupt
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for target, source in FILES.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PYDICOM_FILES / source, root / target)
    return root


def _build(root: Path, cache_dir: Path, cfg: PixelConfig | None = None, workers: int = 0) -> PixelCache:
    records, skipped = scan_folder(root)
    assert skipped == []
    return PixelCache.build(root, records, cfg or PixelConfig(size=32), cache_dir, workers=workers)


def test_build_records_failures_and_constant_images(folder: Path, tmp_path: Path) -> None:
    cache = _build(folder, tmp_path / "cache")
    assert not cache.hit
    assert [s.path for s in cache.failed] == ["NM/lossy.dcm"] and "libjpeg" in cache.failed[0].reason
    assert cache.constant == ["CT/17166.dcm"]
    assert sorted(cache.index) == sorted(set(FILES) - {"NM/lossy.dcm"})
    assert cache.array.shape == (5, 1, 32, 32) and cache.array.dtype == np.uint8
    for key in cache.index:
        expected = load_pixels(folder / key, PixelConfig(size=32))
        np.testing.assert_allclose(cache.image(key), expected, atol=0.5 / 255 + 1e-6)
    assert (tmp_path / "cache" / "CACHEDIR.TAG").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no temp left


def test_second_build_decodes_nothing(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _build(folder, tmp_path / "cache")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(pixels_mod, "load_pixels", no_decoding)
    second = _build(folder, tmp_path / "cache")
    assert second.hit and second.path == first.path
    np.testing.assert_array_equal(second.array, first.array)
    assert second.failed == first.failed and second.constant == first.constant


def test_pixel_config_change_invalidates(folder: Path, tmp_path: Path) -> None:
    first = _build(folder, tmp_path / "cache", PixelConfig(size=32))
    other = _build(folder, tmp_path / "cache", PixelConfig(size=32, window="bone"))
    assert not other.hit and other.path != first.path
    assert not np.array_equal(other.array, first.array)
    assert _build(folder, tmp_path / "cache", PixelConfig(size=32)).hit  # the first entry is intact


def test_file_change_invalidates(folder: Path, tmp_path: Path) -> None:
    first = _build(folder, tmp_path / "cache")
    ct = folder / "CT" / "CT_small.dcm"
    stat = ct.stat()
    os.utime(ct, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    touched = _build(folder, tmp_path / "cache")
    assert not touched.hit and touched.path != first.path
    shutil.copyfile(PYDICOM_FILES / "MR_small.dcm", ct)  # replaced content
    replaced = _build(folder, tmp_path / "cache")
    assert not replaced.hit
    assert not np.array_equal(replaced.image("CT/CT_small.dcm"), first.image("CT/CT_small.dcm"))
    np.testing.assert_array_equal(replaced.image("CT/CT_small.dcm"), replaced.image("MR/MR_small.dcm"))


def test_parallel_build_matches_serial(folder: Path, tmp_path: Path) -> None:
    serial = _build(folder, tmp_path / "a", workers=0)
    parallel = _build(folder, tmp_path / "b", workers=2)
    np.testing.assert_array_equal(parallel.array, serial.array)
    assert parallel.failed == serial.failed and parallel.constant == serial.constant


def test_broken_entry_is_rebuilt(folder: Path, tmp_path: Path) -> None:
    first = _build(folder, tmp_path / "cache")
    (first.path / "pixels.npy").write_bytes(b"garbage")
    again = _build(folder, tmp_path / "cache")
    assert not again.hit and again.array.shape == first.array.shape


def test_frames_all_expands_multiframe_items(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    shutil.copyfile(PYDICOM_FILES / "rtdose.dcm", root / "dose.dcm")  # 15 frames
    shutil.copyfile(PYDICOM_FILES / "CT_small.dcm", root / "ct.dcm")
    records, _ = scan_folder(root)
    cache = PixelCache.build(root, records, PixelConfig(size=16, frames="all"), tmp_path / "c")
    assert cache.keys == ["ct.dcm#0"] + [f"dose.dcm#{i}" for i in range(15)]
    assert [(i.record.path, i.frame) for i in cache.items[:2]] == [("ct.dcm", 0), ("dose.dcm", 0)]
    assert not np.array_equal(cache.image("dose.dcm#0"), cache.image("dose.dcm#14"))
    with pytest.raises(DataError, match="frames='all'"):
        PixelCache.build(root, [ImageItem(records[1], 3)], PixelConfig(size=16), tmp_path / "c")
    with pytest.raises(DataError, match="no DICOM images"):
        PixelCache.build(root, [], PixelConfig(size=16), tmp_path / "c")


def test_dataset_reads_tensors_from_the_cache(folder: Path, tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from medmm.data.dicom.dataset import DicomImageDataset

    cache = _build(folder, tmp_path / "cache", PixelConfig(size=32, channels=3))
    keys = sorted(cache.index)
    rows = [cache.index[k] for k in keys]
    multi = [(1, 0), (0, 1), (1, 1), (0, 0)]
    dataset = DicomImageDataset(cache, rows, multi)
    x, y = dataset[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0.0 <= x.min() <= x.max() <= 1.0
    assert y.dtype == torch.float32 and y.tolist() == [1.0, 0.0]
    xb, yb = next(iter(DataLoader(DicomImageDataset(cache, rows, [0, 1, 2, 3]), batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(xb[2], torch.from_numpy(cache.image(keys[2])))
    assert len(pickle.dumps(dataset)) < 20_000  # the memory map is not pickled into workers
    with pytest.raises(ValueError, match="labels"):
        DicomImageDataset(cache, rows, [0])


def _exit_on_row_one(jobs, *args):
    """Pool job that kills its worker process on row 1, like a segfaulting decoder."""
    if any(job[0] == 1 for job in jobs):
        os._exit(3)
    return [(job[0], None, False) for job in jobs]


def test_a_crashing_decoder_only_loses_its_own_file() -> None:
    jobs = [(row, f"f{row}.dcm", None, 1) for row in range(6)]
    outcomes = cache_mod._run_jobs(jobs, (), workers=2, progress=None, fn=_exit_on_row_one)
    assert sorted(outcomes) == [(0, None, False), (1, cache_mod._CRASHED, False)] + [
        (row, None, False) for row in range(2, 6)]


def test_no_patient_identifiers_in_cache_or_reprs(folder: Path, tmp_path: Path) -> None:
    records, _ = scan_folder(folder)
    assert {r.patient_id for r in records} >= {"1CT1", "4MR1", "77654033"}  # read, kept in memory
    cache = PixelCache.build(folder, records, PixelConfig(size=16), tmp_path / "cache")
    written = b"".join(p.read_bytes() for p in cache.path.iterdir() if p.suffix == ".json")
    shown = repr(records) + repr(cache.failed) + repr(cache)
    for phi in ("1CT1", "4MR1", "77654033", "CompressedSamples", "Doe^Archibald"):
        assert phi.encode() not in written and phi not in shown
