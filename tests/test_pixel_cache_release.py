"""A pass over the pixel cache lets go of its memory map every few thousand images (#30): the pages read
leave the process's resident memory instead of piling up over a 20,000-image predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmm.data.dicom import cache as cache_module
from medmm.data.dicom.cache import PixelCache
from medmm.data.dicom.dataset import DicomImageDataset
from medmm.data.dicom.pixels import PixelConfig


def _cache(tmp_path: Path, n: int) -> tuple[PixelCache, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    return PixelCache(path=tmp_path, cfg=PixelConfig(size=8), dtype="uint8", keys=[f"k{i}" for i in range(n)]), pixels


@pytest.mark.parametrize(("every", "maps"), [(3, 4), (100, 1)])
def test_the_memory_map_is_released_every_few_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      every: int, maps: int) -> None:
    cache, pixels = _cache(tmp_path, 10)
    loads = []
    real_load = np.load
    monkeypatch.setattr(cache_module.np, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    dataset = DicomImageDataset(cache, list(range(10)), [0] * 10)
    dataset.release_every = every
    images = [dataset[i][0].numpy() for i in range(10)]
    assert len(loads) == maps  # 10 reads, a release after every 3rd: mapped at reads 1, 4, 7 and 10
    expected = pixels.astype(np.float32) * np.float32(1 / 255)
    assert all(np.array_equal(im, expected[i]) for i, im in enumerate(images))  # the same values, remapped or not
