"""Tabular memory (#30): the transform fills one float32 matrix column by column and gives exactly the
values of the former whole-block float64 transform."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from medmm.data.tabular.preprocess import _input_frame, fit_preprocessor, infer_column_types


def _former_transform(pre, df: pd.DataFrame) -> np.ndarray:
    """The pre-#30 transform (whole numeric block in float64, one-hot blocks, hstack, then float32)."""
    n = len(df)
    blocks = []
    if pre.numeric:
        x = df[pre.numeric].to_numpy(dtype=np.float64)
        missing = np.isnan(x)
        x = np.where(missing, np.asarray(pre.medians, dtype=np.float64), x)
        z = np.hstack([x, missing[:, pre._indicator_idx].astype(np.float64)])
        z -= np.asarray(pre.means, dtype=np.float64)
        z /= np.asarray(pre.scales, dtype=np.float64)
        blocks.append(z)
    for col, mode, lookup in zip(pre.categorical, pre.modes, pre._lookup):
        idx = np.array([lookup.get(mode if v != v else v, -1) for v in df[col].to_numpy(dtype=object)], dtype=np.intp)
        onehot = np.zeros((n, len(lookup)))
        onehot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1.0
        blocks.append(onehot)
    return (np.hstack(blocks) if blocks else np.zeros((n, 0))).astype(np.float32)


def test_transform_is_bitwise_the_former_one_in_float32() -> None:
    rng = np.random.default_rng(0)
    n = 500
    df = pd.DataFrame({"a": rng.normal(size=n) * 1e3, "b": rng.integers(0, 9, n).astype(float),
                       "c": rng.choice(np.array(["x", "y", "z", np.nan], dtype=object), n), "d": rng.normal(size=n)})
    df.loc[rng.random(n) < 0.2, "a"] = np.nan  # missing values: median + indicator
    df.loc[rng.random(n) < 0.1, "d"] = np.nan
    pre = fit_preprocessor(df.iloc[:300], infer_column_types(df, ["a", "b", "c", "d"], {}))
    new = df.iloc[300:].copy()
    new.loc[new.index[:5], "c"] = "unseen"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = pre.transform(new)
        want = _former_transform(pre, new)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == want.shape and np.array_equal(got, want)


def test_classic_baseline_standardises_its_own_copy_in_place() -> None:
    """The baseline's one float64 matrix is standardised in place: the task's float32 features are left
    as they were, and mean / scale are those of the out-of-place formula."""
    from medmm.classic import fit_baseline
    from medmm.task import BaselineInputs

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    x[::17, 3] = np.nan
    x[:, 5] = 1.0  # constant: scale 1
    y = (x[:, 0] + rng.normal(size=600) > 0).astype(np.float32)
    before = x.copy()
    base = fit_baseline("binary", ["0", "1"], BaselineInputs([str(i) for i in range(400)], y[:400], tabular=x[:400]),
                        BaselineInputs([str(i) for i in range(400, 600)], y[400:], tabular=x[400:]))
    assert np.array_equal(x, before, equal_nan=True)
    ref = np.nan_to_num(np.asarray(before[:400], float))
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    assert np.array_equal(base.arrays["mean"], ref.mean(axis=0)) and np.array_equal(base.arrays["scale"], scale)


def test_column_std_is_numpys_without_a_copy_of_the_matrix() -> None:
    """The baseline's scale, computed a few columns at a time (a temporary of a few columns, not of the
    training matrix), is bitwise ``x.std(axis=0)``, including a last block that would hold one column."""
    from medmm.classic import _column_std

    for seed, k in enumerate((1, 2, 9, 17, 50)):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(20_011, k)) * rng.uniform(1e-3, 1e3, k) + rng.normal(size=k) * 100
        assert np.array_equal(_column_std(x), x.std(axis=0))


def test_transform_of_chosen_rows_is_the_whole_transform_indexed() -> None:
    """``transform(df, rows=r)`` (what training writes into its split-ordered matrix) is bitwise
    ``transform(df)[r]``, numbers written as text and unseen categories included, and warns the same count."""
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({"a": rng.normal(size=n), "k": rng.integers(0, 5, n),
                       "c": rng.choice(np.array(["1", "2.50", " x ", "", np.nan, 7, 1.5], dtype=object), n)})
    df.loc[rng.random(n) < 0.3, "a"] = np.nan
    pre = fit_preprocessor(df.iloc[:200], infer_column_types(df, ["a", "k", "c"], {"k": "categorical",
                                                                                   "c": "categorical"}))
    df.loc[df.index[250:260], "c"] = "unseen"
    rows = rng.permutation(n)[:300]
    with warnings.catch_warnings(record=True) as whole:
        warnings.simplefilter("always")
        want = pre.transform(df)
        some = pre.transform(df.iloc[rows])
    with warnings.catch_warnings(record=True) as chosen:
        warnings.simplefilter("always")
        got = pre.transform(df, rows=rows)
    assert np.array_equal(got, want[rows]) and np.array_equal(got, some)
    assert np.array_equal(want, _former_transform(pre, _input_frame(df, pre.numeric, pre.categorical)))
    assert [str(w.message) for w in chosen] == [str(w.message) for w in whole][1:]


def test_drop_column_rows_are_drawn_before_encoding(monkeypatch) -> None:
    """The leakage check encodes only the rows it draws: the same matrix as encoding train + val whole and
    drawing from it (the pre-#30 way)."""
    from medmm.data import leakage

    rng = np.random.default_rng(4)
    df = pd.DataFrame({"a": rng.normal(size=300), "c": rng.choice(["p", "q", "r"], 300)})
    pre = fit_preprocessor(df.iloc[:200], infer_column_types(df, ["a", "c"], {}))
    train, val = df.iloc[:200], df.iloc[200:]
    monkeypatch.setattr(leakage, "_DROP_MAX_ROWS", 77)
    whole = np.concatenate([pre.transform(train), pre.transform(val)])
    keep = np.sort(np.random.default_rng(0).choice(len(whole), 77, replace=False))
    assert np.array_equal(leakage._drop_rows(pre, train, val), whole[keep])
    monkeypatch.setattr(leakage, "_DROP_MAX_ROWS", 20_000)
    assert np.array_equal(leakage._drop_rows(pre, train, val), whole)


def test_the_runner_reads_its_own_memory() -> None:
    """summary.json's ``memory_mb`` (bench/scale.py's in-process floor): RSS now and the peak see an allocation."""
    from medmm.runner import _peak_rss_mb, _rss_mb

    before, peak_before = _rss_mb(), _peak_rss_mb()
    block = np.ones(40 * 2**20 // 8)  # 40 MB, touched
    now = _rss_mb()
    assert before is not None and now is not None and peak_before is not None
    assert now - before > 30 and _peak_rss_mb() >= now - 1
    del block


def test_free_heap_pages_are_handed_back() -> None:
    """``release_free_memory`` (glibc ``malloc_trim``) after many freed small blocks: RSS does not grow, and it
    answers whether glibc did it (never raises)."""
    from medmm.io import release_free_memory
    from medmm.runner import _rss_mb

    blocks = [np.ones(2**17) for _ in range(200)]  # 200 MB of 1 MB heap blocks (below the mmap threshold)
    del blocks[::2]
    before = _rss_mb()
    done = release_free_memory()
    assert isinstance(done, bool) and before is not None and _rss_mb() <= before + 1
    del blocks


@pytest.mark.slow
def test_tabular_risk_data_from_blocks_is_the_data_from_one_frame(tmp_path, monkeypatch) -> None:
    """tabular-risk's data phase on a table held in parsed blocks (#30: never joined, freed while encoded) gives
    the same features, ids, targets, splits, skipped rows and fitted preprocessor as on the one joined frame:
    rows without a target, groups, missing values, integers that are floats in a later block, numbers with
    thousands separators and categories unseen in training."""
    from medmm_plugins.tabular_risk.task import TabularRiskTask

    from medmm.data import readers
    from medmm.plugins import get_registry
    from medmm.runner import resolved_config

    rng = np.random.default_rng(5)
    n = 3000
    df = pd.DataFrame({"pid": [f"P{i:05d}" for i in rng.permutation(n)], "x": rng.normal(size=n),
                       "k": rng.integers(0, 20, n).astype(object), "money": [f"{v:,}" for v in rng.integers(900, 9e6, n)],
                       "c": rng.choice(np.array(["a", "b", "c", None], dtype=object), n), "grp": rng.integers(0, 900, n)})
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[n - 5, "k"] = 2.5
    df.loc[rng.choice(n, 4, replace=False), "c"] = "rare"
    df["y"] = np.where(rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(df["x"].to_numpy()))), "yes", "no")
    df.loc[rng.choice(n, 40, replace=False), "y"] = None
    df.to_csv(tmp_path / "d.csv", index=False)
    spec = get_registry().get("task", "tabular-risk")
    sets = ["data.target=y", "data.id_column=pid", "data.group_column=grp", "engine.device=cpu"]
    out = {}
    for name, block_rows in (("one", None), ("blocks", 700)):
        if block_rows:
            monkeypatch.setattr(readers, "READ_BLOCK_BYTES", 0)
            monkeypatch.setattr(readers, "READ_BLOCK_ROWS", block_rows)
        (tmp_path / name).mkdir()
        task = TabularRiskTask(resolved_config(spec, None, sets), tmp_path / name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bundle = task.build_data(tmp_path / "d.csv")
        out[name] = (task, bundle, sorted(str(w.message) for w in caught))
    assert len(readers.read_table_blocks(tmp_path / "d.csv")._blocks) == 5  # the blocks were not joined
    (a, bundle_a, warn_a), (b, bundle_b, warn_b) = out["one"], out["blocks"]
    assert warn_a == warn_b
    assert a.preprocessor.to_json() == b.preprocessor.to_json() and a.label_names == b.label_names
    for part in ("train", "val", "test"):
        sa, sb = getattr(bundle_a, part), getattr(bundle_b, part)
        assert sa.units == sb.units and np.array_equal(sa.targets, sb.targets)
        assert torch.equal(sa.dataset.x, sb.dataset.x)
    for f in sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_file()):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "blocks" / f).read_bytes(), f
