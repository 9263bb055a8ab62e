"""#30: JSON Lines and Parquet are read block by block, each block the whole read's rows, columns and types."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.data.readers import read_table, read_table_chunks, streams


def _frame(n: int = 41) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    cat = rng.choice(["a", "b", "c"], size=n).astype(object)
    cat[::9] = None
    age = rng.integers(20, 90, n).astype(float)
    age[::7] = np.nan
    return pd.DataFrame({"pid": [f"P{i:04d}" for i in range(n)], "age": age, "x": rng.normal(size=n), "k": cat,
                         "n": rng.integers(0, 5, n), "y": (rng.random(n) > 0.5).astype(int)})


def _sizes(parts: list[pd.DataFrame]) -> list[int]:
    return [len(p) for p in parts]


@pytest.mark.parametrize("rows", [1, 4, 10, 1000])
def test_jsonl_blocks_are_the_whole_read(tmp_path: Path, rows: int) -> None:
    path = tmp_path / "t.jsonl"
    _frame().to_json(path, orient="records", lines=True)
    whole = read_table(path)
    assert streams(path)
    parts = list(read_table_chunks(path, rows))
    assert _sizes(parts) == [min(rows, 41 - i) for i in range(0, 41, rows)]
    pd.testing.assert_frame_equal(pd.concat(parts), whole, check_dtype=False)  # a block's own int / float typing
    only = list(read_table_chunks(path, 20, columns=["y", "pid", "absent"]))
    assert [list(p.columns) for p in only] == [["pid", "y"]] * 3


def test_jsonl_rows_that_leave_out_keys_get_the_whole_reads_columns(tmp_path: Path) -> None:
    """BigQuery-style exports leave out null fields: a block whose rows lack a key still has its column
    (missing values), in the whole read's order; a compressed file streams too."""
    rows = [{"pid": "A", "age": 50}, {"pid": "B"}, {"pid": "C", "age": 61}, {"late": "x", "pid": "D"},
            {"pid": "E", "age": 40}]
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    whole = read_table(path)
    assert list(whole.columns) == ["pid", "age", "late"]
    parts = list(read_table_chunks(path, 2))
    assert [list(p.columns) for p in parts] == [["pid", "age", "late"]] * 3
    joined = pd.concat(parts)
    assert joined["pid"].tolist() == whole["pid"].tolist()
    assert joined["age"].tolist()[::2] == [50, 61, 40] and joined["age"].isna().tolist() == whole["age"].isna().tolist()
    assert joined["late"].isna().tolist() == whole["late"].isna().tolist()
    assert list(next(read_table_chunks(path, 1)).columns) == ["pid", "age", "late"]  # the header of a one-row read


def test_a_jsonl_file_that_is_not_one_object_a_line_keeps_the_whole_reads_error(tmp_path: Path) -> None:
    from medmm.errors import DataError

    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n{"a": \n')
    with pytest.raises(DataError) as whole:
        read_table(path)
    with pytest.raises(DataError) as blocks:
        list(read_table_chunks(path, 1))
    assert str(blocks.value) == str(whole.value)


@pytest.mark.parametrize("rows", [1, 3, 7, 1000])
@pytest.mark.parametrize("group_bytes", [0, 64 * 2**20])  # row groups read in batches / decoded whole and cut
def test_parquet_blocks_are_exactly_rows_long_across_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                rows: int, group_bytes: int) -> None:
    from medmm.data import readers

    monkeypatch.setattr(readers, "PARQUET_GROUP_BYTES", group_bytes)
    df = _frame()
    df["k"] = df["k"].astype("category")
    df["when"] = pd.date_range("2020-01-01", periods=len(df))
    path = tmp_path / "t.parquet"
    df.set_index("pid").to_parquet(path, row_group_size=5)  # a stored index: not a column of a whole read
    whole = read_table(path).reset_index(drop=True)
    assert "pid" not in whole.columns and streams(path)
    parts = list(read_table_chunks(path, rows))
    assert _sizes(parts) == [min(rows, 41 - i) for i in range(0, 41, rows)]
    assert all(p.index.tolist() == list(range(i * rows, i * rows + len(p))) for i, p in enumerate(parts))
    joined = pd.concat(parts)
    joined["k"] = joined["k"].astype(object)
    expected = whole.copy()
    expected["k"] = expected["k"].astype(object)
    pd.testing.assert_frame_equal(joined, expected)
    only = list(read_table_chunks(path, 40, columns=["y", "x"]))
    assert [list(p.columns) for p in only] == [["x", "y"]] * 2 and _sizes(only) == [40, 1]


def test_plugin_formats_are_still_read_whole_and_cut(tmp_path: Path) -> None:
    assert not streams(tmp_path) and not streams(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_predict_and_evaluate_of_jsonl_and_parquet_stream_to_the_whole_reads_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In blocks of 8 rows (7 asked, whole eval batches) and never read whole: the bytes of the whole read's
    predictions and the same evaluation (metrics, shift check, subgroups)."""
    from medmm.data import readers
    from tests.conftest import cli

    df = _frame(53)
    df["k"] = df["k"].fillna("a")
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    sets = [a for s in ["data.target=y", "data.id_column=pid", "engine.epochs=1", "engine.bootstrap=0",
                        "engine.baseline=none", "model.backbone=linear", "engine.device=cpu",
                        "engine.eval_batch_size=8"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(csv), "--out", str(tmp_path / "run"), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shifted = df.assign(age=df["age"] + 30)
    jsonl, parquet = tmp_path / "t.jsonl", tmp_path / "t.parquet"
    shifted.to_json(jsonl, orient="records", lines=True)
    shifted.to_parquet(parquet, row_group_size=10)

    def outputs(source: Path, name: str) -> tuple[bytes, dict]:
        pred = cli("predict", str(tmp_path / "run"), "--data", str(source), "--out", str(tmp_path / f"{name}.csv"))
        assert pred.returncode == 0, pred.stderr[-2000:]
        ev = cli("evaluate", str(tmp_path / "run"), "--data", str(source), "--out", str(tmp_path / f"{name}-ev"),
                 "--subgroups", "k")
        assert ev.returncode == 0, ev.stderr[-2000:]
        result = json.loads((tmp_path / f"{name}-ev" / "evaluation.json").read_text())
        result["provenance"].pop("evaluated")
        return (tmp_path / f"{name}.csv").read_bytes(), result

    for source in (jsonl, parquet):
        with monkeypatch.context() as m:
            m.setattr(readers, "streams", lambda path: False)  # the whole read, as before #30
            whole = outputs(source, f"{source.suffix[1:]}-whole")
        with monkeypatch.context() as m:
            m.setenv("MEDMM_PREDICT_CHUNK_ROWS", "7")
            m.setattr(readers, "read_table", lambda *a, **k: pytest.fail("read whole"))
            streamed = outputs(source, f"{source.suffix[1:]}-blocks")
        assert streamed[0] == whole[0] and streamed[0].count(b"\n") == 54
        assert streamed[1] == whole[1]
        assert any("'age'" in w for w in streamed[1]["shift"]["warnings"])


def test_jsonl_blocks_are_parsed_in_parts_and_cut_to_exact_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas makes a dict per line before the frame: a block is parsed a few lines at a time and joined."""
    from medmm.data import readers

    path = tmp_path / "t.jsonl"
    _frame().to_json(path, orient="records", lines=True)
    monkeypatch.setattr(readers, "JSONL_PARSE_LINES", 3)
    parts = list(read_table_chunks(path, 7))
    assert _sizes(parts) == [7] * 5 + [6]
    pd.testing.assert_frame_equal(pd.concat(parts), read_table(path), check_dtype=False, check_index_type=False)
