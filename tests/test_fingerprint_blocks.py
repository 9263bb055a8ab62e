"""The data fingerprint digests a table block by block (#30) and gives the digest of the whole read, for every
table: CSV / TSV blocks typed alike or not, numbers with thousands separators, Parquet row groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm import fingerprint
from medmm.data import readers


def _whole(path: Path) -> dict:
    """The fingerprint as it was made before #30's block digest: the whole table, one digest per column."""
    df = readers.read_table(path)
    return {"kind": "table", "rows": len(df), "columns": {str(c): fingerprint._column_digest(df[c]) for c in df.columns}}


def _frame(n: int = 70) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 9, n).astype(object),
                       "money": [f"{v:,}" for v in rng.integers(900, 90_000, n)],
                       "c": rng.choice(["a", "b", None], n), "b": rng.choice([True, False], n),
                       "id": [f"{i:05d}" for i in range(n)], "y": rng.integers(0, 2, n)})
    df.loc[n - 3, "k"] = 1.5  # integers in the first blocks, a float in the last: floats for every row
    return df


CASES = ["mixed", "ints only", "codes then text", "plain numbers as text", "missing in one block", "huge ints",
         "sparse text"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
@pytest.mark.parametrize("digest_rows", [16, 7])  # the fingerprint's blocks: read_table's, or smaller
def test_block_digest_is_the_whole_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, fmt: str,
                                         digest_rows: int) -> None:
    df = _frame()
    if case == "ints only":
        df["k"] = df["k"].astype(int)
    if case == "codes then text":
        df["id"] = ["007"] * 40 + ["x"] * 30  # numbers in the first blocks, text after: a one-pass CSV read keeps text
    if case == "plain numbers as text":
        df["money"] = [str(v) for v in range(len(df))]
        df.loc[5, "money"] = "1,234"  # one grouped number: the whole column is read as numbers
    if case == "missing in one block":
        df["y"] = df["y"].astype(float)
        df.loc[60:, "y"] = np.nan  # floats (NaN) in the last block, integers before
    if case == "huge ints":
        df["k"] = pd.Series([2**60 + i for i in range(len(df))], dtype=object)
        df.loc[65, "k"] = 0.5
    if case == "sparse text":  # a note in a few rows: blocks of only empty cells (floats) beside text
        df["note"] = [f"seen {i}" if 20 <= i < 30 or i == 60 else None for i in range(len(df))]
    path = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        if case != "ints only":
            df["k"] = df["k"].astype(str)
        df["cat"] = pd.Categorical(np.where(np.arange(len(df)) < 30, "a", "b"))  # categories differ by row group
        df["when"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(len(df)), unit="D")
        if case == "missing in one block":
            df["n"] = pd.array([None if i == 65 else i for i in range(len(df))], dtype="Int64")  # ints, floats
        df.to_parquet(path, row_group_size=16)
    else:
        df.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", 16)
    monkeypatch.setattr(fingerprint, "BLOCK_ROWS", digest_rows)
    want = _whole(path)
    got = fingerprint._table_in_blocks(path)
    if fmt == "parquet":
        assert got == want
    else:  # read whole only where read_table's blocks disagree and it reads the file again in one pass
        one_pass = len(readers.read_table_blocks(path)._blocks) == 1
        assert one_pass == (case in ("codes then text", "plain numbers as text", "huge ints"))
        assert (got is None) == one_pass and (one_pass or got == want)
    assert fingerprint.fingerprint(path) == want


def test_block_digest_reads_one_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No block larger than READ_BLOCK_ROWS is parsed, the table is never read whole, and a changed cell in the
    last block changes its column's digest (and only it)."""
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
    monkeypatch.setattr(fingerprint, "BLOCK_ROWS", 16)
    sizes: list[int] = []
    parse = readers._csv_parse_blocks

    def counted(*args, **kwargs):
        for block in parse(*args, **kwargs):
            sizes.append(len(block))
            yield block

    monkeypatch.setattr(readers, "_csv_parse_blocks", counted)
    monkeypatch.setattr(readers, "read_table", lambda *a, **k: pytest.fail("the table was read whole"))
    monkeypatch.setattr(readers, "read_table_blocks", lambda *a, **k: pytest.fail("the table was read whole"))
    first = fingerprint.fingerprint(path)
    assert max(sizes) == 16 and sum(sizes) >= 70
    df = pd.read_csv(path)
    df.loc[68, "x"] = 0.25
    df.to_csv(path, index=False)
    second = fingerprint.fingerprint(path)
    changed = [c for c in first["columns"] if first["columns"][c] != second["columns"][c]]
    assert changed == ["x"] and first["rows"] == second["rows"] == 70


JSONL_CASES = {  # case -> whether the fingerprint digests it in blocks (else: the whole read, as before)
    "clean": True, "sparse text": True, "ints then floats": True, "text with nulls": True, "keys left out": True,
    "thousands": True, "bools then nulls": False, "a date-named column": False, "lists": False,
}


def _jsonl_case(tmp_path: Path, case: str) -> Path:
    """A 70-line JSON Lines table of ``case`` (a key of :data:`JSONL_CASES`)."""
    import json

    rng = np.random.default_rng(5)
    rows = [{"id": f"{i:04d}", "x": float(rng.normal()), "k": int(rng.integers(0, 9)), "c": str(rng.choice(["a", "b"])),
             "b": bool(i % 3)} for i in range(70)]
    if case == "ints then floats":
        rows[66]["k"] = 2.5
    if case == "text with nulls":
        for i in range(0, 70, 7):
            rows[i]["c"] = None
    if case == "keys left out":
        for i in range(20, 40):
            del rows[i]["x"]
        rows[50]["late"] = 3  # a key that appears late: every earlier row lacks it
    if case == "thousands":
        for i, r in enumerate(rows):
            r["money"] = f"{1000 + 37 * i:,}"
    if case == "bools then nulls":
        rows[60]["b"] = None
    if case == "a date-named column":
        for i, r in enumerate(rows):
            r["admit_time"] = 1_600_000_000 + i
    if case == "lists":
        rows[3]["c"] = [1, 2]
    if case == "sparse text":  # a key in a few rows only (BigQuery leaves out nulls), null in one
        for i in range(20, 30):
            rows[i]["note"] = f"seen {i}"
        rows[60]["note"] = None
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_json_lines_block_digest_is_the_whole_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """JSON Lines parts of 16 lines (pandas' own parser per part) give the whole read's digest; a column typed
    differently in two parts, a date-named column or cells pandas cannot hash send it to the whole read."""
    path = _jsonl_case(tmp_path, case)
    monkeypatch.setattr(readers, "JSONL_PARSE_LINES", 16)
    want = _whole(path)
    got = fingerprint._table_in_blocks(path)
    assert (got is not None) == JSONL_CASES[case]
    assert got is None or got == want
    assert fingerprint.fingerprint(path) == want


@pytest.mark.parametrize("case", list(JSONL_CASES))
@pytest.mark.parametrize("block_rows", [16, 48, 1000])
def test_json_lines_read_in_parts_is_the_whole_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                                                     block_rows: int) -> None:
    """``read_table`` / ``read_table_blocks`` of JSON Lines parse it in parts (#30: the whole parse holds a dict per
    line) and give exactly ``pd.read_json``'s whole frame (dtypes, values, index), or make that whole read."""
    path = _jsonl_case(tmp_path, case)
    monkeypatch.setattr(readers, "JSONL_PARSE_LINES", 16)
    monkeypatch.setattr(readers, "READ_BLOCK_ROWS", block_rows)
    want = readers.parse_number_columns(pd.read_json(path, lines=True, encoding="utf-8-sig", dtype=False))
    got = readers.read_table(path)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    table = readers.read_table_blocks(path)
    in_parts = JSONL_CASES[case] or case == "lists"  # lists: read in parts, but their digest hashes the text
    assert (len(table._blocks) > 1) == (in_parts and block_rows < 70)
    for c in want.columns:
        pd.testing.assert_series_equal(table[c], want[c], check_exact=True, check_names=False)


def test_table_rows_without_a_parse(tmp_path: Path) -> None:
    """Parquet's metadata and JSON Lines' key pass give the rows of the whole read (blank lines are not rows);
    a CSV does not say (None); the fingerprint's shape check uses them."""
    df = _frame(23)
    pq_path, jl_path, csv_path = tmp_path / "t.parquet", tmp_path / "t.jsonl", tmp_path / "t.csv"
    df.to_parquet(pq_path, row_group_size=5)
    df.to_csv(csv_path, index=False)
    lines = df.to_json(orient="records", lines=True).splitlines()
    jl_path.write_text("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:]) + "\n")
    assert readers.table_rows(pq_path) == len(readers.read_table(pq_path)) == 23
    assert readers.table_rows(jl_path) == len(readers.read_table(jl_path)) == 23
    assert readers.table_rows(csv_path) is None
    assert fingerprint._table_shape(jl_path) == {"kind": "table", "rows": 23,
                                                 "columns": dict.fromkeys(map(str, df.columns), "")}
