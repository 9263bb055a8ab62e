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


@pytest.mark.parametrize("case", ["clean", "ints then floats", "codes then text", "bools then missing", "huge ints",
                                  "sparse text"])
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
    if case == "sparse text":  # blocks of only empty cells (read as floats) beside text: joined, text with NaN
        df["note"] = [f"seen {i}" if 20 <= i < 30 else None for i in range(n)]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", 16)
    got, want = readers.read_table(path), _one_pass(path)
    if case == "sparse text":
        table = readers.read_table_blocks(path)
        assert len(table._blocks) == 4 and table.dtypes["note"] == object
        pd.testing.assert_series_equal(table["note"], want["note"], check_exact=True)
        for block, _, _ in table.row_blocks():
            assert block["note"].dtype == object
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.dtypes) == list(want.dtypes) and got.index.equals(pd.RangeIndex(n))
    if case == "codes then text":
        assert got["c"].iloc[0] == "007"


def _mixed_table(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 9, n).astype(object),
                       "money": [f"{v:,}" for v in rng.integers(900, 90_000, n)], "c": rng.choice(["a", "b", None], n),
                       "b": rng.choice(["True", "False"], n)})
    df.loc[n - 3, "k"] = 1.5  # integers in the first blocks, a float in the last: floats for every row
    df.to_csv(path, index=False)
    return path


def test_block_table_columns_and_rows_are_the_joined_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_table_blocks`` keeps the parsed blocks unjoined (#30); each column, row selection and ``iloc`` is
    exactly ``read_table``'s (dtypes included: integers that are floats elsewhere, thousands separators parsed)."""
    path = _mixed_table(tmp_path / "t.csv")
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", 16)
    want, table = readers.read_table(path), readers.read_table_blocks(path)
    assert len(table._blocks) == 4 and len(table) == len(want) and list(table.columns) == list(want.columns)
    assert want["k"].dtype == np.float64 and want["money"].dtype == np.float64
    for col in want.columns:
        pd.testing.assert_series_equal(table[col], want[col], check_exact=True)
    rows = np.random.default_rng(2).permutation(len(want))[:40]  # unsorted, across blocks
    pd.testing.assert_frame_equal(table.iloc[rows], want.iloc[rows].reset_index(drop=True), check_exact=True)
    mask = np.arange(len(want)) % 3 == 0
    sub = table[mask]
    for col in want.columns:
        pd.testing.assert_series_equal(sub[col], want[col][mask].reset_index(drop=True), check_exact=True)
    pd.testing.assert_frame_equal(sub.take([5, 1, 17]).iloc[[2, 0]],
                                  want[mask].iloc[[17, 5]].reset_index(drop=True), check_exact=True)
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 2**40)  # a small file: one block, the same table
    one = readers.read_table_blocks(path)
    assert len(one._blocks) == 1
    pd.testing.assert_series_equal(one["k"], want["k"], check_exact=True)


def test_blockwise_transform_frees_the_blocks_and_is_the_whole_transform(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding a :class:`BlockTable` block by block (releasing each block) gives bitwise the transform of the
    joined frame, rows in any order, with one warning counting every unseen category."""
    import warnings

    from medmm.data.tabular.preprocess import fit_preprocessor, infer_column_types

    path = _mixed_table(tmp_path / "t.csv", 90)
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", 16)
    want = readers.read_table(path)
    pre = fit_preprocessor(want.iloc[:30], infer_column_types(want, ["x", "k", "money", "c", "b"], {"k": "categorical"}))
    rows = np.random.default_rng(3).permutation(len(want))
    table = readers.read_table_blocks(path)
    with warnings.catch_warnings(record=True) as whole:
        warnings.simplefilter("always")
        expected = pre.transform(want, rows=rows)
    with warnings.catch_warnings(record=True) as blocks:
        warnings.simplefilter("always")
        got = pre.transform(table, rows=rows, release=True)
    assert np.array_equal(got, expected) and got.dtype == np.float32
    assert [str(w.message) for w in blocks] == [str(w.message) for w in whole] and len(whole) == 1
    assert all(b is None for b in table._blocks)
    with pytest.raises(RuntimeError):
        table["x"]
