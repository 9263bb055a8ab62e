"""#30: ``medmm evaluate``'s shift check reads a table block by block and gives the whole read's results."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medmm.evaluation.shift import shift_report, write_training_profile


def _whole_read_reference(pre, df: pd.DataFrame, train_text, text_cols) -> dict:
    """The check as it was before #30's streaming (the whole frame; numpy's ``mean``)."""
    from medmm.data.tabular.preprocess import category_strings, to_float

    warnings: list[str] = []
    rows, unseen = [], {}
    for i, col in enumerate(pre.numeric):
        x = to_float(df[col], col)
        x = x[np.isfinite(x)]
        smd = float((x.mean() - pre.means[i]) / pre.scales[i]) if x.size else math.nan
        rows.append({"feature": col, "smd": smd, "missing_share": float(1 - x.size / max(len(df), 1))})
    for col, cats in zip(pre.categorical, pre.categories):
        values = [v for v in category_strings(df[col]) if v == v and v is not None]
        unseen[col] = sum(1 for v in values if v not in set(cats))
    texts = [" ".join("" if not isinstance(v, str) else v for v in r) for r in df[text_cols].itertuples(index=False)]
    docs = [re.findall(r"[a-z]+", t.lower()) for t in texts]
    vocab = set(train_text["vocab"])
    tokens = sum(len(d) for d in docs)
    oov = sum(1 for d in docs for w in d if hashlib.blake2b(w.encode(), digest_size=6).hexdigest() not in vocab) / max(tokens, 1)
    q = [float(v) for v in np.quantile(np.asarray([len(d) for d in docs], float), (0.1, 0.25, 0.5, 0.75, 0.9))]
    return {"numeric": rows, "unseen_categories": unseen, "oov_share": oov, "length_quantiles": q, "warnings": warnings}


@pytest.fixture()
def planted(tmp_path: Path):
    rng = np.random.default_rng(3)
    n = 1003
    train = pd.DataFrame({"note": [" ".join(rng.choice(["chest", "clear", "lung", "mass", "no"], 6)) for _ in range(200)]})
    train_path = tmp_path / "train.csv"
    train.to_csv(train_path, index=False)
    run = tmp_path / "run"
    write_training_profile(train_path, {"text_column": "note"}, run / "artifacts")
    age = rng.integers(20, 90, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    lab = rng.normal(3.0, 1.7, n) * 1.000001  # values whose sums round
    site = rng.choice(["a", "b", "z"], n)  # z: never seen in training
    site[rng.random(n) < 0.05] = ""
    words = ["chest", "clear", "unseenword", "lung", "xyz"]
    note = [" ".join(rng.choice(words, int(k))) for k in rng.integers(0, 30, n)]
    df = pd.DataFrame({"id": np.arange(n), "age": age, "lab": lab, "site": site, "note": note, "other": "x"})
    data = tmp_path / "new.csv"
    df.to_csv(data, index=False)
    pre = SimpleNamespace(numeric=["age", "lab"], categorical=["site"], categories=[["a", "b"]],
                          means=[60.0, 2.5], scales=[15.0, 1.5])
    return data, run, pre


def test_streamed_shift_equals_the_whole_read_at_every_block_size(planted) -> None:
    data, run, pre = planted
    task = SimpleNamespace(preprocessor=pre)
    cfg = {"text_column": "note"}
    whole = shift_report(task, data, cfg, run, rows=10**9)
    df = pd.read_csv(data, keep_default_na=True)
    ref = _whole_read_reference(pre, df, json.loads((run / "artifacts" / "data_profile.json").read_text())["text"], ["note"])
    for r_new, r_old in zip(whole["tabular"]["numeric"], ref["numeric"]):
        assert r_new["feature"] == r_old["feature"]
        assert r_new["missing_share"] == r_old["missing_share"]
        assert r_new["smd"] == pytest.approx(r_old["smd"], rel=1e-13, abs=1e-15)  # last bits: fsum vs pairwise
    assert whole["tabular"]["numeric"][0]["smd"] == ref["numeric"][0]["smd"]  # integers: exact in both
    assert whole["tabular"]["numeric"][0]["missing_share"] > 0.05
    assert whole["tabular"]["unseen_categories"] == ref["unseen_categories"] and ref["unseen_categories"]["site"] > 200
    assert whole["text"]["oov_share"] == ref["oov_share"] > 0.2
    assert whole["text"]["length_quantiles"] == ref["length_quantiles"]
    assert any("never seen" in w for w in whole["warnings"])
    for rows in (1, 7, 500):  # block boundaries anywhere: the very same report
        assert shift_report(task, data, cfg, run, rows=rows) == whole


def test_shift_reads_only_the_checked_columns_in_blocks(planted, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmm.data.readers as readers

    data, run, pre = planted
    seen: list[tuple[int, tuple]] = []
    real = readers.read_table_chunks

    def spy(path, rows, **kw):
        for block in real(path, rows, **kw):
            seen.append((len(block), tuple(block.columns)))
            yield block

    monkeypatch.setattr(readers, "read_table_chunks", spy)
    monkeypatch.setattr(readers, "read_table", lambda *a, **k: pytest.fail("the table was read whole"))
    shift_report(SimpleNamespace(preprocessor=pre), data, {"text_column": "note"}, run, rows=100)
    blocks = [s for s in seen if s[0] > 1]
    assert blocks and max(n for n, _ in blocks) == 100
    assert all(set(cols) == {"age", "lab", "site", "note"} for _, cols in blocks)  # never id / other


@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression"])
def test_predictions_are_written_in_slices_to_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             problem: str) -> None:
    """``medmm evaluate`` (and a whole-read predict) writes predictions.csv a slice of units at a time."""
    from medmm import predictions

    rng = np.random.default_rng(0)
    n = 23
    scores = rng.random(n) if problem != "multiclass" else rng.dirichlet(np.ones(3), n)
    targets = rng.integers(0, 2 if problem == "binary" else 3, n).astype(float)
    ev = SimpleNamespace(units=[f"u{i}" for i in range(n)], scores=scores, targets=targets)
    cols = {"u3": {"uid": "1.2.3"}, "u20": {"uid": "1.2.4"}}
    files = []
    for rows in (10**6, 5):
        monkeypatch.setattr(predictions, "WRITE_ROWS", rows)
        out = tmp_path / f"p{rows}.csv"
        predictions.write_predictions(out, ev, problem, ["a", "b", "c"][: 2 if problem == "binary" else 3], cols)
        files.append(out.read_bytes())
    assert files[0] == files[1] and files[0].count(b"\n") == n + 1 and b"1.2.4" in files[0]
