"""``read_table`` of a large CSV parses it in blocks (#30: pandas' one-pass parser holds every cell's token,
about 4x the frame) and gives exactly the one-pass frame, or reads it in one pass when blocks disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.data import readers


def _one_pass(path: Path) -> pd.DataFrame:
    return readers.parse_number_columns(pd.read_csv(path, low_memory=False, encoding="utf-8-sig"))


@pytest.mark.parametrize("case", ["clean", "ints then floats", "codes then text", "bools then missing", "huge ints"])
def test_blocks_give_the_one_pass_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    rng = np.random.default_rng(0)
    n = 50
    df = pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 9, n).astype(object),
                       "c": rng.choice(["a", "b", "007"], n), "b": rng.choice(["True", "False"], n)})
    if case == "ints then floats":
        df.loc[40, "k"] = 1.5  # the last block has a decimal: one pass gives floats for every row
    if case == "codes then text":
        df["c"] = ["007"] * 30 + ["x"] * 20  # numbers in the first blocks: a one-pass read keeps "007" as text
    if case == "bools then missing":
        df.loc[45, "b"] = None
    if case == "huge ints":
        df["k"] = pd.Series([2**60 + i for i in range(n)], dtype=object)
        df.loc[45, "k"] = 0.5
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", 16)
    got, want = readers.read_table(path), _one_pass(path)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.dtypes) == list(want.dtypes) and got.index.equals(pd.RangeIndex(n))
    if case == "codes then text":
        assert got["c"].iloc[0] == "007"
