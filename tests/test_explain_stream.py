"""#30: `medmm explain` reads a table in blocks and stops once it has its units: the same units, examples and
selection as the whole read (pinned against `_candidates` / `_distinct` on the whole input)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medmm.explain.run import PickedExamples, _candidates, _distinct, streamed_pick
from medmm.task import Split


class _Rows:
    """Dict items with their example index; one input repeats (a duplicate unit)."""

    def __init__(self, start: int, n: int) -> None:
        self.start, self.n = start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = self.start + i
        return {"x": torch.full((3,), float(g if g != 17 else 5)), "index": int(i)}


class _Table:
    """Tuple items, batched reads (as tabular-risk's dataset)."""

    def __init__(self, start: int, n: int) -> None:
        self.x = torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple:
        return self.x[i], torch.zeros(()), i

    def __getitems__(self, idx: list[int]) -> tuple:
        index = torch.as_tensor(idx)
        return self.x[index], torch.zeros(len(idx)), index


def _setup(tmp_path: Path, n: int, splits: list[str]) -> tuple[Path, Path]:
    data = tmp_path / "data.csv"
    data.write_text("a\n" + "\n".join(str(i) for i in range(n)) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": str(data)}))
    (run / "splits.csv").write_text("id,split\n" + "".join(f"u{i},{s}\n" for i, s in enumerate(splits) if s))
    return run, data


def _task(n: int, kind: type, consumed: list[int]) -> SimpleNamespace:
    def predict_chunks(path: Path, rows: int):
        for start in range(0, n, rows):
            consumed.append(start)
            k = min(rows, n - start)
            yield Split(kind(start, k), [f"u{start + i}" for i in range(k)]), None

    return SimpleNamespace(predict_chunks=predict_chunks)


def _whole(run: Path, data: Path, n: int, kind: type, split_name, limit: int):
    split = Split(kind(0, n), [f"u{i}" for i in range(n)])
    candidates, why = _candidates(run, split.units, split_name, data)
    chosen, dups = _distinct(split, candidates, limit)
    positions = [i for i, u in enumerate(split.units) if u in chosen]
    return split, positions, why, dups


@pytest.mark.parametrize("kind", [_Rows, _Table])
@pytest.mark.parametrize("rows", [1, 4, 7, 1000])
@pytest.mark.parametrize("split_name,limit", [(None, 3), (None, 50), ("train", 4), ("all", 5), ("val", 2)])
def test_streamed_pick_is_the_whole_reads_choice(tmp_path: Path, kind: type, rows: int, split_name, limit: int) -> None:
    n = 40
    splits = ["train", "train", "val", "test"] * 10
    run, data = _setup(tmp_path, n, splits)
    consumed: list[int] = []
    got = streamed_pick(_task(n, kind, consumed), run, data, split_name, limit, rows=rows)
    assert got is not None
    split, _, positions, where, why, dups = got
    whole, expected, whole_why, whole_dups = _whole(run, data, n, kind, split_name, limit)
    assert where == expected and dups == whole_dups
    assert [split.units[p] for p in positions] == [whole.units[p] for p in expected]
    for p, g in zip(positions, where):  # the very item, its index where the split says it is
        a, b = split.dataset[p], whole.dataset[g]
        if isinstance(a, dict):
            assert torch.equal(a["x"], b["x"]) and a["index"] == p
        else:
            assert torch.equal(a[0], b[0]) and int(a[-1]) == p
    if rows < n and (split_name != "all" or limit < n):
        assert len(consumed) < -(-n // rows) or limit >= 10  # stopped once it had its units
    if split_name == "all" and limit < n and rows < n:  # stopped before the end: how many were read
        assert why.startswith(f"the first {min(n, len(consumed) * rows)} units")
    else:  # a split's count from the run's splits.csv when the read stopped early: for the run's own data the same
        assert why == whole_why


def test_duplicates_new_data_and_the_val_fallback(tmp_path: Path) -> None:
    n = 30
    run, data = _setup(tmp_path, n, ["train"] * 20 + ["val"] * 10)  # no test split: val is held out
    got = streamed_pick(_task(n, _Rows, []), run, data, None, 3, rows=4)
    whole = _whole(run, data, n, _Rows, None, 3)
    assert got[3] == whole[1] and got[4] == whole[2] and "val split (10 in the data)" in got[4]
    other = tmp_path / "other.csv"  # another data set: all of it; unit 17 repeats unit 5's input
    other.write_text("a\n" + "1\n" * n)
    consumed: list[int] = []
    got = streamed_pick(_task(n, _Rows, consumed), run, other, None, 20, rows=8)
    _, _, _, where, why, dups = got
    assert dups == 1 and 17 not in where and len(where) == 20 and where[-1] == 20
    assert why == "the first 24 units of the data (read in blocks until 20 were found) (none was used by the run)"
    assert consumed == [0, 8, 16]
    full = streamed_pick(_task(n, _Rows, []), run, other, None, 20, rows=1000)
    assert full[3] == where and full[4] == _whole(run, other, n, _Rows, None, 20)[2] == \
        "all 30 units of the data (none was used by the run)"
    with pytest.raises(Exception, match="--split all"):
        streamed_pick(_task(n, _Rows, []), run, other, "test", 3)


def test_items_without_a_recognisable_index_fall_back_to_the_whole_read() -> None:
    class Plain:
        def __getitem__(self, i: int) -> dict:
            return {"x": torch.zeros(2)}

    picked = PickedExamples([(Plain(), 0), (Plain(), 3)])
    with pytest.raises(LookupError):
        picked.check()
    batched = PickedExamples([(_Table(0, 4), 1), (_Table(4, 4), 2)])
    x, _, index = batched.__getitems__([0, 1])
    assert x[:, 0].tolist() == [1.0, 6.0] and index.tolist() == [0, 1]
    assert np.array_equal(batched[1][0].numpy(), [6.0, 6.0])


@pytest.mark.slow
def test_explain_of_a_table_in_blocks_writes_the_whole_reads_attributions(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A tabular-risk run explained on its own table read in blocks of 4 rows (test units spread over blocks)
    and on a Parquet copy writes the attributions and selection of the whole read, and reads no block after
    the one that completed ``--limit``."""
    import pandas as pd
    from medmm_plugins.tabular_risk.task import TabularRiskTask

    from medmm.data import readers
    from tests.conftest import cli

    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=(n, 3))
    df = pd.DataFrame({"pid": [f"P{i:03d}" for i in range(n)], "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                       "k": rng.choice(["u", "v"], n), "y": (x[:, 0] > 0).astype(int)})
    data = tmp_path / "t.csv"
    df.to_csv(data, index=False)
    sets = [a for s in ["data.target=y", "data.id_column=pid", "engine.epochs=2", "engine.bootstrap=0",
                        "engine.baseline=none", "model.backbone=linear", "engine.device=cpu"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(data), "--out", str(tmp_path / "run"), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks: list[int] = []
    original = TabularRiskTask.predict_chunks

    def counted(self: TabularRiskTask, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for split, collate in original(self, path, rows):
            blocks.append(len(split.units))
            yield split, collate

    monkeypatch.setattr(TabularRiskTask, "predict_chunks", counted)

    def explain(name: str, source: Path = data, *extra: str) -> tuple[bytes, dict]:
        out = tmp_path / name
        res = cli("explain", str(tmp_path / "run"), "--data", str(source), "--out", str(out), "--limit", "6", *extra)
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        return (out / "attributions.csv").read_bytes(), {k: v for k, v in summary.items() if "second" not in k}

    monkeypatch.setattr(readers, "streams", lambda path: False)  # the whole read, as before #30
    whole = explain("whole")
    whole_all = explain("whole-all", data, "--split", "all")
    monkeypatch.undo()
    monkeypatch.setattr(TabularRiskTask, "predict_chunks", counted)
    monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", "4")
    assert explain("blocks") == whole
    assert whole[1]["selection"].startswith("held-out units of the run's test split (")
    assert 1 < len(blocks) < n // 4 and set(blocks) == {4}  # several blocks, stopped long before the end
    blocks.clear()
    attrs, summary = explain("blocks-all", data, "--split", "all")
    assert attrs == whole_all[0] and len(blocks) == 2  # the first 6 rows: two blocks of 4
    assert summary["selection"].startswith("the first 8 units of the data (read in blocks until 6 were found)")
    parquet = tmp_path / "t.parquet"
    df.to_parquet(parquet)
    assert explain("parquet", parquet, "--split", "all")[0] == whole_all[0]  # another path: every unit is new
