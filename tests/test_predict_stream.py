"""Streaming ``medmm predict`` of a table (#30): blocks of the one table reader, the same file as one pass,
and no block larger than asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmm.data.readers import read_table, read_table_chunks, streams
from medmm.errors import ConfigError, DataError


def _table(path: Path, n: int = 53) -> Path:
    import pandas as pd

    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 2))
    cat = rng.choice(["a", "b", "c"], size=n).astype(object)
    cat[::9] = None  # missing categories in several blocks
    df = pd.DataFrame({"pid": [f"P{i:04d}" for i in range(n)], "a": x[:, 0], "b": x[:, 1], "k": cat,
                       "y": (x[:, 0] + (cat == "a") > 0).astype(int)})
    df.loc[7, "b"] = np.nan
    df.to_csv(path, index=False)
    return path


def test_chunks_are_the_table_in_order(tmp_path: Path) -> None:
    import pandas as pd

    path = _table(tmp_path / "t.csv")
    whole = read_table(path)
    parts = list(read_table_chunks(path, 10))
    assert [len(p) for p in parts] == [10, 10, 10, 10, 10, 3]
    pd.testing.assert_frame_equal(pd.concat(parts), whole)  # index = row number in the table, same values
    only = list(read_table_chunks(path, 20, columns=["y", "pid", "absent"]))
    assert [list(p.columns) for p in only] == [["pid", "y"]] * 3
    tsv = tmp_path / "t.tsv"
    whole.to_csv(tsv, sep="\t", index=False)
    pd.testing.assert_frame_equal(pd.concat(read_table_chunks(tsv, 7)), whole)


def test_jsonl_streams_to_the_whole_frame(tmp_path: Path) -> None:  # read whole and cut before #30's last pass
    import pandas as pd

    whole = read_table(_table(tmp_path / "t.csv"))
    path = tmp_path / "t.jsonl"
    whole.to_json(path, orient="records", lines=True)
    parts = list(read_table_chunks(path, 25))
    assert [len(p) for p in parts] == [25, 25, 3]
    assert streams(path) and streams(tmp_path / "t.csv") and not streams(tmp_path)
    pd.testing.assert_frame_equal(pd.concat(parts), read_table(path))


def test_chunk_errors_are_read_tables(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("a,b\n")
    with pytest.raises(DataError, match="no rows"):
        list(read_table_chunks(empty, 5))
    with pytest.raises(ConfigError, match="chunk rows"):
        list(read_table_chunks(empty, 0))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,b\n1,\xff\xfe\n")
    with pytest.raises(DataError, match="UTF-8"):
        list(read_table_chunks(bad, 5))


def test_chunk_rows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.predict_stream import CHUNK_ROWS, chunk_rows

    monkeypatch.delenv("MEDMM_PREDICT_CHUNK_ROWS", raising=False)
    assert chunk_rows() == CHUNK_ROWS
    monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", "12")
    assert chunk_rows() == 12
    monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", "-3")
    with pytest.raises(ConfigError, match="positive integer"):
        chunk_rows()


@pytest.mark.slow
def test_streamed_predict_is_the_one_pass_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose eval batch is 8 rows, predicted in blocks of 8 rows (7 asked, rounded up to whole
    batches), writes the same bytes as in one block; with labels (metrics) and without; a second
    reading of the whole table never happens and no block holds more than 8 rows."""
    from click.testing import CliRunner
    from medmm_plugins.tabular_risk.task import TabularRiskTask

    from medmm import cli as cli_mod
    from medmm.data import readers
    from tests.conftest import cli

    data = _table(tmp_path / "t.csv")
    unlabelled = tmp_path / "u.csv"
    read_table(data).drop(columns=["y"]).to_csv(unlabelled, index=False)
    sets = [a for s in ["data.target=y", "data.id_column=pid", "engine.epochs=1", "engine.bootstrap=0",
                        "engine.baseline=none", "model.backbone=linear", "engine.device=cpu",
                        "engine.eval_batch_size=8"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(data), "--out", str(tmp_path / "run"), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json  # the runner's seconds per phase (bench/scale.py prints their shares)

    phases = json.loads((tmp_path / "run" / "summary.json").read_text())["phase_seconds"]
    assert {"data (read, split, preprocess)", "train", "evaluate", "baseline", "report"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert "phases (seconds, share): data (read, split, preprocess)" in (tmp_path / "run" / "train.log").read_text()

    sizes: list[int] = []
    original = TabularRiskTask.predict_chunks

    def counted(self: TabularRiskTask, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for split, collate in original(self, path, rows):
            sizes.append(len(split.units))
            yield split, collate

    def no_whole_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("streaming predict read the whole table")

    monkeypatch.setattr(TabularRiskTask, "predict_chunks", counted)
    monkeypatch.setattr(readers, "read_table", no_whole_read)
    runner = CliRunner()
    for src in (data, unlabelled):
        files = []
        for rows in ("7", "100000"):
            monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", rows)
            out = tmp_path / f"{src.stem}-{rows}.csv"
            res = runner.invoke(cli_mod.make_cli(), ["predict", str(tmp_path / "run"), "--data", str(src), "--out", str(out)])
            assert res.exit_code == 0, res.output
            assert "53 predictions" in res.output
            files.append(out.read_bytes())
            caveats = [line for line in res.output.splitlines() if "caveat:" in line]
            assert bool(caveats) == (src == data), res.output  # the run's own labelled rows: counted in blocks
        assert files[0] == files[1]
        assert files[0].count(b"\n") == 54
        if src == data:
            own_caveat = caveats
    assert sizes == ([8] * 6 + [5] + [53]) * 2
    assert b",true" in (tmp_path / "t-7.csv").read_bytes().splitlines()[0]
    # --shard still reads the whole table and predicts its block: the blocks concatenate to the file
    monkeypatch.setattr(readers, "read_table", read_table)
    parts = []
    for i in range(2):
        out = tmp_path / f"s{i}.csv"
        res = runner.invoke(cli_mod.make_cli(), ["predict", str(tmp_path / "run"), "--data", str(data), "--out", str(out),
                                          "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
        parts.append(out.read_bytes().splitlines(keepends=True))
    assert b"".join(parts[0] + parts[1][1:]) == (tmp_path / "t-7.csv").read_bytes()
    whole = runner.invoke(cli_mod.make_cli(), ["predict", str(tmp_path / "run"), "--data", str(data), "--out",
                                               str(tmp_path / "whole.csv"), "--shard", "0/1"])  # ids kept: seen_splits
    assert [line for line in whole.output.splitlines() if "caveat:" in line] == own_caveat


def test_a_table_of_another_shape_is_told_apart_without_reading_it_whole(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The training-rows caveat of a labelled predict asks whether the table is the run's data: a table
    with other rows or columns is answered from its shape, read one column block at a time."""
    from medmm import fingerprint
    from medmm.data import readers
    from medmm.errors import MedmmError

    run = tmp_path / "run"
    run.mkdir()
    data = _table(tmp_path / "t.csv", 40)
    fingerprint.save(run, data, fingerprint.fingerprint(data))
    whole = read_table(data)
    longer, same_shape = tmp_path / "longer.csv", tmp_path / "same.csv"
    _table(longer, 60)
    changed = whole.copy()
    changed.loc[3, "a"] = 99.0
    changed.to_csv(same_shape, index=False)

    def no_whole_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(readers, "read_table", no_whole_read)
    with pytest.raises(MedmmError, match="40 rows, now 60"):
        fingerprint.check_same_data(run, longer)
    monkeypatch.setattr(readers, "read_table", read_table)  # same shape: the column digests decide
    with pytest.raises(MedmmError, match="column\\(s\\) 'a' changed"):
        fingerprint.check_same_data(run, same_shape)
    assert fingerprint.check_same_data(run, data)


def test_streamed_ids_keep_the_column_type_and_repeats_name_their_lines(tmp_path: Path) -> None:
    """The first pass keeps the id column as read (not a string per row) and checks repeats by a hash per
    id: a repeat is the one-pass error naming its table line; ids whose column is integer in one block
    and float in another (a missing id) are the strings of one read of the whole column."""
    import pandas as pd
    from medmm_plugins.tabular_risk.task import TabularRiskTask

    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "tabular-risk")
    task = TabularRiskTask(resolved_config(spec, None, ["data.target=y", "data.id_column=pid"]), tmp_path)
    task.problem, task.label_names = "binary", ["0", "1"]

    class Identity:  # the features are not what this test is about
        def transform(self, df: pd.DataFrame) -> np.ndarray:
            return np.zeros((len(df), 1), np.float32)

    task.preprocessor = Identity()
    path = tmp_path / "t.csv"
    pd.DataFrame({"pid": [*range(100, 112), None, 200], "a": 1.0, "y": [0, 1] * 7}).to_csv(path, index=False)
    ids = [u for split, _ in task.predict_chunks(path, 5) for u in split.units]
    assert ids == [str(u) for u in read_table(path)["pid"].astype(str)] and ids[0] == "100.0"
    pd.DataFrame({"pid": [f"P{i}" for i in [*range(10), 3]], "a": 1.0, "y": 0}).to_csv(path, index=False)
    with pytest.raises(DataError, match="table line 12 repeats"):
        next(iter(task.predict_chunks(path, 4)))


def _predict_bytes(run: Path, data: Path, out: Path, monkeypatch: pytest.MonkeyPatch, rows: str,
                   whole: bool = False) -> tuple[bytes, str]:
    """``medmm predict RUN --data DATA`` in blocks of ``rows`` (or in one pass when ``whole``): its bytes and console."""
    from click.testing import CliRunner

    from medmm import cli as cli_mod
    from medmm.data import readers

    monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", rows)
    if whole:  # the one-pass path: the input does not stream
        monkeypatch.setattr(readers, "streams", lambda path: False)
    res = CliRunner().invoke(cli_mod.make_cli(), ["predict", str(run), "--data", str(data), "--out", str(out),
                                                  "--overwrite"])
    monkeypatch.setattr(readers, "streams", streams)
    assert res.exit_code == 0, res.output
    return out.read_bytes(), res.output


@pytest.mark.slow
def test_grouped_sets_and_the_onnxruntime_path_stream_to_the_one_pass_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose conformal sets are grouped by a numeric column (Mondrian, banded at calibration) streams on the
    torch and the onnxruntime path: blocks of 8 rows write the one-pass bytes, set and set_thresholds columns
    included, and the referral line is the same; the export reads its blocks through ``TabularInputs.blocks``
    and never the whole table."""
    import pandas as pd
    from medmm_plugins.tabular_risk.runtime import TabularInputs

    from medmm.data import readers
    from tests.conftest import cli

    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({"pid": [f"p{i:04d}" for i in range(n)], "x1": rng.normal(size=n), "x2": rng.normal(size=n),
                       "score": np.round(rng.uniform(0, 100, n), 2)})
    df.loc[[5, 17], "score"] = np.nan  # no group value: the per-class thresholds, said per row
    p = 1 / (1 + np.exp(-(2.5 * df.x1 + 1.5 * df.x2)))
    df["y"] = np.where(np.where(df.score.fillna(0) < 75, rng.random(n) < p, rng.random(n) < 0.5), "pos", "neg")
    data, unlabelled = tmp_path / "planted.csv", tmp_path / "u.csv"
    df.to_csv(data, index=False)
    df.drop(columns=["y"]).iloc[::-1].to_csv(unlabelled, index=False)  # another order: rows found by id
    run = tmp_path / "run"
    sets = [a for s in ["data.target=y", "data.id_column=pid", "data.features=[x1,x2]", "eval.conformal.group_column=score",
                        "engine.epochs=2", "engine.bootstrap=0", "engine.baseline=none", "model.backbone=linear",
                        "engine.eval_batch_size=8", "engine.device=cpu"] for a in ("--set", s)]
    proc = cli("run", "tabular-risk", "--data", str(data), "--out", str(run), *sets, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cli("export", str(run), "--out", str(tmp_path / "export")).returncode == 0
    sizes: list[int] = []
    original = TabularInputs.blocks

    def counted(self: TabularInputs, path: Path, rows: int):  # type: ignore[no-untyped-def]
        for ex in original(self, path, rows):
            sizes.append(len(ex.units))
            yield ex

    monkeypatch.setattr(TabularInputs, "blocks", counted)
    for src in (data, unlabelled):
        for model in (run, tmp_path / "export"):
            whole, said = _predict_bytes(model, src, tmp_path / "whole.csv", monkeypatch, "100000", whole=True)
            monkeypatch.setattr(readers, "read_table", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole read")))
            got, told = _predict_bytes(model, src, tmp_path / "blocks.csv", monkeypatch, "7")
            monkeypatch.setattr(readers, "read_table", read_table)
            assert got == whole
            assert told.splitlines()[1:] == said.splitlines()[1:]  # referral line (and metrics) as one pass
            assert "thresholds per score group, 2 unit(s) with no score value" in told
    header = (tmp_path / "blocks.csv").read_bytes().splitlines()[0]
    assert b"set_90" in header and b"set_thresholds" in header
    assert sizes == ([8] * 37 + [4]) * 2  # 300 rows of the export in blocks of 8

    # evaluate scores the table block by block too (only the id, label and subgroup columns read whole): the
    # same evaluation as one pass, subgroup table and conformal coverage by group included
    import json

    from medmm.evaluation import shift as shift_mod

    results = {}
    for rows, whole in (("100000", True), ("7", False)):
        monkeypatch.setenv("MEDMM_PREDICT_CHUNK_ROWS", rows)
        if whole:
            monkeypatch.setattr(readers, "streams", lambda path: False)
        else:
            monkeypatch.setattr(readers, "read_table", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole read")))
            monkeypatch.setattr(shift_mod, "shift_report", lambda *a, **k: shift)  # reads the feature columns whole
        out = tmp_path / f"eval-{rows}"
        proc = cli("evaluate", str(run), "--data", str(data), "--out", str(out), "--subgroups", "score", "--no-card")
        assert proc.returncode == 0, proc.stderr[-2000:]
        monkeypatch.setattr(readers, "streams", streams)
        monkeypatch.setattr(readers, "read_table", read_table)
        result = json.loads((out / "evaluation.json").read_text())
        shift = result["shift"]
        result["provenance"].pop("evaluated")
        results[whole] = (result, (out / "predictions.csv").read_bytes())
    assert results[True] == results[False]
    assert results[True][0]["subgroups"] and results[True][0]["provenance"]["units"] == n


def test_image_export_batches_are_read_one_at_a_time_from_the_pixel_file(tmp_path: Path) -> None:
    """The onnxruntime image reader's batches come from the pixel cache's file, one batch per read (never
    every image at once), scaled to [0, 1] as the whole array was, in the rows' order."""
    from types import SimpleNamespace

    from medmm_plugins.image_cls.runtime import PixelBatches

    pixels = np.arange(7 * 1 * 2 * 2, dtype=np.uint8).reshape(7, 1, 2, 2)
    np.save(tmp_path / "pixels.npy", pixels)
    rows = [6, 0, 2, 3, 5]  # a decoded subset, in the cache's order of units
    batches = PixelBatches(SimpleNamespace(path=tmp_path, scale=1 / 255), rows, 2)
    whole = pixels[rows].astype(np.float32) * np.float32(1 / 255)
    assert len(batches) == 3 and [len(b["x"]) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), whole)
    np.testing.assert_array_equal(batches[-1]["x"], whole[4:])
    assert max(batches, key=lambda b: b["x"].shape[0])["x"].shape == (2, 1, 2, 2)
    with pytest.raises(IndexError):
        batches[3]
    assert len(PixelBatches(SimpleNamespace(path=tmp_path, scale=1.0), [], 4)) == 0


def test_growing_keeps_blocks_in_one_buffer_of_the_smallest_exact_dtype() -> None:
    """The streamed metrics' inputs: the blocks' rows in order, class indices as int8 (a float32 target
    would be 4 bytes a row), widened exactly when a later block needs it; no copy kept per block."""
    from medmm.pooling import Growing, smallest_exact

    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 3, size=(n,)).astype(np.float32) for n in (5, 1, 300, 7)]
    g = Growing(exact_small=True)
    for b in blocks:
        g.add(b)
    got = g.array()
    assert got is not None and got.dtype == np.int8 and got.flags.owndata
    assert np.array_equal(got, np.concatenate(blocks))
    g.add(np.array([1000.0, 2.5], np.float32))  # a regression-like block: widened to float32, values exact
    assert g.array().dtype == np.float32 and np.array_equal(g.array()[-2:], [1000.0, 2.5])
    assert smallest_exact(np.array([300.0, -2.0])).dtype == np.int16
    assert smallest_exact(np.array([np.nan, 1.0])).dtype == np.float64  # NaN is no integer
    assert Growing().array() is None
    s = Growing()
    for n in (4, 9):
        s.add(np.ones((n, 3), np.float32))
    assert s.array().shape == (13, 3) and s.array().dtype == np.float32


def _fake_stream(tmp_path: Path, labelled: bool, blocks: int, rows: int = 4) -> object:
    """:func:`stream_predict` of a fake task of ``blocks`` blocks of ``rows`` binary units (targets when
    ``labelled``), through a fake trainer; the predictions file and the result."""
    from types import SimpleNamespace

    from medmm.engine.trainer import EvalOutput
    from medmm.predict_stream import stream_predict

    data = tmp_path / "x.csv"
    data.write_text("a\n1\n")
    rng = np.random.default_rng(blocks)

    def chunks(path: Path, asked: int):  # type: ignore[no-untyped-def]
        for b in range(blocks):
            units = [f"u{b * rows + i}" for i in range(rows)]
            yield SimpleNamespace(units=units, scores=rng.random(rows).astype(np.float32),
                                  targets=rng.integers(0, 2, rows).astype(np.float32) if labelled else None), None

    task = SimpleNamespace(predict_chunks=chunks, problem="binary", label_names=["no", "yes"], unit_columns=None)
    trainer = SimpleNamespace(device="cpu", e=SimpleNamespace(eval_batch_size=rows), cfg=None,
                              evaluate=lambda model, split, collate: EvalOutput(split.units, split.scores,
                                                                                split.targets, 0.5))
    model = SimpleNamespace(to=lambda device: None)
    return stream_predict(task, data, tmp_path, trainer, model, tmp_path / "p.csv", rows=rows)


def test_streamed_predict_keeps_no_row_of_unlabelled_input_and_compact_rows_of_labelled(tmp_path: Path) -> None:
    """Per row a streamed predict keeps nothing for unlabelled input (it counts the units) and, for labelled
    input, one float32 score and one int8 target: 5 bytes a row whatever the number of blocks."""
    held = {}
    for labelled in (False, True):
        for blocks in (3, 30):
            got = _fake_stream(tmp_path, labelled, blocks)
            assert got is not None and got.n == 4 * blocks and got.ev.units == []
            lines = (tmp_path / "p.csv").read_text().splitlines()
            assert len(lines) == 1 + 4 * blocks and lines[0].startswith("id,prob_yes,predicted")
            arrays = [a for a in (got.ev.scores, got.ev.targets) if a is not None]
            held[labelled, blocks] = sum(a.nbytes for a in arrays)
            if labelled:
                assert got.ev.scores.dtype == np.float32 and got.ev.targets.dtype == np.int8
                assert len(got.ev.scores) == len(got.ev.targets) == 4 * blocks
            else:
                assert got.ev.targets is None and len(got.ev.scores) == 0
    assert held[False, 3] == held[False, 30] == 0
    assert (held[True, 30] - held[True, 3]) / (4 * 27) == 5  # bytes per added row


def test_unit_columns_write_the_bytes_of_a_dict_per_unit(tmp_path: Path) -> None:
    """:class:`UnitColumns` (one value or tuple per unit) writes the predictions file a dict per unit writes, with
    one column, two, or none; and holds no dict per unit."""
    from types import SimpleNamespace

    from medmm import UnitColumns
    from medmm.predictions import write_predictions

    rng = np.random.default_rng(1)
    units = [f"ct/s{i // 3}/{i}.dcm" for i in range(12)]
    ev = SimpleNamespace(units=units, scores=rng.random((12, 3)).astype(np.float32), targets=None)
    for names in (["sop_instance_uid"], ["sop_instance_uid", "patient_id"], []):
        compact = UnitColumns(names)
        plain: dict[str, dict[str, str]] = {}
        for i, u in enumerate(units):
            values = [f"1.2.3.{i}", f"P{i // 4}"][:len(names)]
            compact.add(u, values)
            compact.add(u, ["not", "kept"][:len(names)])  # a unit's first values are kept
            plain.setdefault(u, dict(zip(names, values)))
        files = []
        for cols in (compact, plain):
            out = write_predictions(tmp_path / f"p{len(files)}.csv", ev, "multiclass", ["a", "b", "c"], cols)
            files.append(out.read_bytes())
        assert files[0] == files[1]
        assert files[0].splitlines()[0].startswith(("id," + "".join(f"{n}," for n in sorted(names)) + "prob_a").encode())
        assert dict(compact) == {u: c for u, c in plain.items() if c}
        assert not any(isinstance(v, dict) for v in compact.values_of.values())


def test_notes_in_blocks_remember_only_the_ids_that_repeat(tmp_path: Path) -> None:
    """Streamed notes skip a repeated id as a set of every id does, across blocks, ids compared as stripped
    text; only the ids that occur twice are remembered (2 of 300 rows here), not one string per row."""
    import pandas as pd
    from medmm_plugins.text_cls.blocks import SeenIds, repeatable_ids

    from medmm import load_text_examples

    ids = [f"R{i}" for i in range(300)]
    ids[250], ids[290] = " R7", "R100 "  # repeats of earlier rows, in later blocks, with spaces around
    ids[40] = None  # a missing id: skipped as missing, never remembered
    path = tmp_path / "notes.csv"
    pd.DataFrame({"rid": ids, "text": [f"note {i}" for i in range(300)]}).to_csv(path, index=False)
    assert repeatable_ids(path, "rid", 64) == {"R7", "R100"}
    got = {}
    for seen in (set(), SeenIds(repeatable_ids(path, "rid", 64))):
        kept, skipped = [], []
        for df in read_table_chunks(path, 64, string_columns=["rid", "text"]):
            ex = load_text_examples(df, text_columns=["text"], id_column="rid", label_columns=[], block=True,
                                    first_row=int(df.index[0]), seen_ids=seen)
            kept += ex.row_ids
            skipped += ex.skipped
        got[type(seen).__name__] = (kept, skipped)
    assert got["set"] == got["SeenIds"] and len(got["set"][0]) == 297
    assert sorted(r for r, why in got["set"][1] if why == "duplicate id") == ["R100", "R7"]
    assert seen.seen == {"R7", "R100"}  # type: ignore[union-attr]
