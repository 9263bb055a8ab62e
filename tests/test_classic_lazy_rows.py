"""The image baseline over a lazy row source (medmm.LazyRows, #30): the same numbers as an array, bounded reads."""

from __future__ import annotations

import numpy as np
import pytest

from medmm import LazyRows, small_pixels
from medmm.classic import fit_baseline
from medmm.task import BaselineInputs


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 1, 16, 16]`` images whose class (0 / 1) is a brighter top half, with noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = rng.random((n, 1, 16, 16)).astype(np.float32) * 0.8
    x[y == 1, :, :8] += 0.2
    return x, y


class Counted:
    """A lazy source over ``images`` that records every block of rows it is asked for."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.asked = images, []

    def read(self, idx: np.ndarray) -> np.ndarray:
        self.asked.append(np.asarray(idx).copy())
        return small_pixels((self.images[i] for i in idx), count=len(idx))

    def rows(self) -> LazyRows:
        return LazyRows(len(self.images), self.read, width=256)

    def read_rows(self) -> int:
        return sum(len(a) for a in self.asked)


def _inputs(x: np.ndarray, y: np.ndarray, tag: str, lazy: Counted | None = None,
            present: np.ndarray | None = None) -> BaselineInputs:
    image = lazy.rows() if lazy is not None else small_pixels(iter(x), count=len(x))
    return BaselineInputs([f"{tag}{i}" for i in range(len(x))], y, image=image,
                          present={} if present is None else {"image": present})


def test_lazy_rows_read_what_is_asked() -> None:
    x, _ = _images(10, 0)
    src = Counted(x)
    rows = src.rows()
    whole = small_pixels(iter(x))
    assert len(rows) == 10 and rows.width == 256 and src.asked == []  # nothing read to know the size
    assert np.array_equal(rows[3], whole[3]) and np.array_equal(rows[2:5], whole[2:5])
    sub = rows.take(np.array([1, 4, 7]))
    assert len(sub) == 3 and np.array_equal(sub[1:], whole[[4, 7]])
    assert np.array_equal(src.asked[-1], [4, 7])  # only those rows of the source
    assert np.array_equal(np.asarray(sub), whole[[1, 4, 7]])
    assert LazyRows(10, src.read).width == 256  # read from the first row when not given


def test_lazy_source_fits_and_scores_bitwise_as_the_array(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm import classic

    (xtr, ytr), (xva, yva), (xte, yte) = _images(240, 1), _images(90, 2), _images(150, 3)
    present = np.ones(len(xte), bool)
    present[::7] = False  # rows without the image get the prior
    arrays = fit_baseline("binary", ["a", "b"], _inputs(xtr, ytr, "r"), _inputs(xva, yva, "v"))
    src_tr, src_va, src_te = Counted(xtr), Counted(xva), Counted(xte)
    monkeypatch.setattr(classic, "IMAGE_BLOCK", 64)  # several blocks per split
    lazy = fit_baseline("binary", ["a", "b"], _inputs(xtr, ytr, "r", src_tr), _inputs(xva, yva, "v", src_va))
    assert lazy.description == arrays.description and lazy.params == arrays.params
    assert sorted(lazy.arrays) == sorted(arrays.arrays)
    assert all(lazy.arrays[k].tobytes() == arrays.arrays[k].tobytes() for k in arrays.arrays)
    assert src_tr.read_rows() == len(xtr)  # each training row read once, a block at a time
    assert max(len(a) for a in src_tr.asked + src_va.asked) <= 64
    for p in (None, present):
        src_te.asked.clear()
        got = lazy.predict(_inputs(xte, yte, "t", src_te, p))
        monkeypatch.setattr(classic, "IMAGE_BLOCK", 10**9)
        want = arrays.predict(_inputs(xte, yte, "t", None, p))
        monkeypatch.setattr(classic, "IMAGE_BLOCK", 64)
        assert np.allclose(got, want, rtol=0, atol=1e-6)  # one pass vs blocks: BLAS may differ in the last bits
        assert got.tobytes() == arrays.predict(_inputs(xte, yte, "t", None, p)).tobytes()  # same blocks: bitwise
        # never more than a block of rows asked at once, only the rows that have the image, each once
        assert max(len(a) for a in src_te.asked) <= 64
        kept = np.flatnonzero(p) if p is not None else np.arange(len(xte))
        assert np.array_equal(np.concatenate(src_te.asked), kept)


def test_the_fit_reads_only_the_capped_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm import classic

    (xtr, ytr), (xva, yva) = _images(300, 4), _images(60, 5)
    monkeypatch.setattr(classic, "IMAGE_FIT_CELLS", 120 * 256)  # 256 features: 120 images
    monkeypatch.setattr(classic, "IMAGE_BLOCK", 50)
    src = Counted(xtr)
    capped = fit_baseline("binary", ["a", "b"], _inputs(xtr, ytr, "r", src), _inputs(xva, yva, "v"))
    assert capped.description.endswith("fitted on a stratified sample of 120 of 300 training images")
    idx = classic.fit_sample("binary", ytr, 120)
    assert idx is not None and np.array_equal(np.concatenate(src.asked), idx)  # only the sample, each row once
    assert src.read_rows() == 120 and max(len(a) for a in src.asked) <= 50
    monkeypatch.setattr(classic, "IMAGE_FIT_CELLS", 10**12)
    direct = fit_baseline("binary", ["a", "b"], _inputs(xtr[idx], ytr[idx], "s"), _inputs(xva, yva, "v"))
    for k in ("coef", "intercept", "mean", "scale"):  # the fit of exactly those rows
        assert capped.arrays[k].tobytes() == direct.arrays[k].tobytes()
    assert float(capped.arrays["prior"]) == pytest.approx(ytr.mean())  # the prior from every training row
    arr = fit_baseline("binary", ["a", "b"], _inputs(xtr, ytr, "r"), _inputs(xva, yva, "v"))
    assert "sample" not in arr.description  # under the cap: every row
    monkeypatch.setattr(classic, "IMAGE_FIT_CELLS", 120 * 256)
    from_array = fit_baseline("binary", ["a", "b"], _inputs(xtr, ytr, "r"), _inputs(xva, yva, "v"))
    assert all(from_array.arrays[k].tobytes() == capped.arrays[k].tobytes() for k in capped.arrays)
