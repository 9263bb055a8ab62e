"""The classic baseline's pixels (#30): one array filled row by row, the values of a list stacked at the end."""

from __future__ import annotations

import numpy as np
import pytest

from medmm import DataError, small_pixels


def _stacked(images: list[np.ndarray]) -> np.ndarray:
    """What small_pixels returned before: each image area-averaged to 32 px, then np.stack of the list."""
    rows = []
    for im in images:
        c, h, w = im.shape
        f = max(1, h // 32)
        rows.append(im[:, : h // f * f, : w // f * f].reshape(c, h // f, f, w // f, f).mean(axis=(2, 4)).reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("count", [None, 37, 50])
def test_small_pixels_equals_the_stacked_list(count: int | None) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((1, 64, 64), dtype=np.float32) for _ in range(37)]  # None: grows 1 -> 2 -> ... -> 64 rows
    got = small_pixels(iter(images), count=count)
    assert got.dtype == np.float32 and got.shape == (37, 32 * 32)
    assert np.array_equal(got, _stacked(images))


def test_small_pixels_empty_and_mixed_sizes() -> None:
    assert small_pixels(iter([])).shape == (0, 1)
    with pytest.raises(DataError, match="several sizes"):
        small_pixels(iter([np.zeros((1, 32, 32), np.float32), np.zeros((1, 16, 16), np.float32)]))
