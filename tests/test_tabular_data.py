"""Tabular data layer: column typing, JSON-safe preprocessing, target checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from medmm.data.readers import read_table
from medmm.data.tabular.preprocess import (
    Preprocessor,
    _input_frame,
    fit_preprocessor,
    infer_column_types,
    prepare_target,
)
from medmm.errors import CheckpointError, ConfigError, DataError


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({
        "age": rng.normal(60, 10, n),
        "bmi": rng.normal(27, 4, n),
        "stage": rng.choice(["I", "II", "III"], n),
        "smoker": rng.choice([True, False], n),
        "site": rng.choice([1, 2, 3], n),  # integer codes, declared categorical below
        "note": ["x"] * n,
    })
    df.loc[::5, "age"] = np.nan
    df.loc[::7, "stage"] = np.nan
    return df


FEATURES = ["age", "bmi", "stage", "smoker", "site"]


# --------------------------------------------------------------------------- column types


def test_infer_column_types(frame):
    types = infer_column_types(frame, FEATURES, {"site": "categorical"})
    assert types == {
        "age": "numeric",
        "bmi": "numeric",
        "stage": "categorical",
        "smoker": "categorical",
        "site": "categorical",
    }
    assert infer_column_types(frame, ["site"]) == {"site": "numeric"}


def test_numbers_written_as_text_are_numeric():
    df = pd.DataFrame({"lab": ["1.5", "2", None, "3e1"]})
    assert infer_column_types(df) == {"lab": "numeric"}
    pre = fit_preprocessor(df, {"lab": "numeric"})
    assert pre.transform(df).shape == (4, 2)  # value + missing indicator


def test_garbage_in_numeric_column_names_the_column_never_the_values():
    df = pd.DataFrame({"creatinine": ["12", "n/a", "abc", "13", "14", "15.5", None]})
    with pytest.raises(DataError, match="creatinine") as err:
        infer_column_types(df)
    # a cell may hold PHI: the error names the column, the kind, a count and a row, never the value (#27)
    assert "n/a" not in str(err.value) and "abc" not in str(err.value)
    assert "2 value(s) are text" in str(err.value) and "data row 2" in str(err.value)
    # the user may say it is a category after all
    assert infer_column_types(df, overrides={"creatinine": "categorical"}) == {"creatinine": "categorical"}


def test_mostly_text_column_is_categorical():
    df = pd.DataFrame({"ward": ["ICU", "A1", "B2", "ICU", "7"]})
    assert infer_column_types(df) == {"ward": "categorical"}
    with pytest.raises(DataError, match="ward"):
        infer_column_types(df, overrides={"ward": "numeric"})


def test_all_missing_column_is_an_error(frame):
    frame["empty"] = np.nan
    with pytest.raises(DataError, match="empty"):
        infer_column_types(frame, [*FEATURES, "empty"])
    with pytest.raises(DataError, match="empty"):
        fit_preprocessor(frame, {"age": "numeric", "empty": "numeric"})


def test_bad_features_and_overrides(frame):
    with pytest.raises(DataError, match="nope"):
        infer_column_types(frame, ["age", "nope"])
    with pytest.raises(ConfigError, match="'text'"):
        infer_column_types(frame, ["age"], {"age": "text"})
    with pytest.raises(ConfigError, match="bmi"):
        infer_column_types(frame, ["age"], {"bmi": "numeric"})
    with pytest.raises(DataError, match="datetime"):
        infer_column_types(pd.DataFrame({"when": pd.to_datetime(["2020-01-01", "2021-01-01"])}))


# --------------------------------------------------------------------------- preprocessing


def test_preprocessor_output_and_names(frame):
    types = infer_column_types(frame, FEATURES, {"site": "categorical"})
    pre = fit_preprocessor(frame, types)
    x = pre.transform(frame)
    assert x.dtype == np.float32 and x.shape == (len(frame), pre.n_features)
    assert pre.feature_names == [
        "age", "bmi", "age__missing",
        "stage=I", "stage=II", "stage=III",
        "smoker=False", "smoker=True",
        "site=1", "site=2", "site=3",
    ]
    assert np.allclose(x[:, :3].mean(0), 0, atol=1e-6) and np.allclose(x[:, :3].std(0), 1, atol=1e-5)
    onehots = x[:, 3:6]
    assert (onehots.sum(1) == 1).all()  # missing stage imputed to the most frequent one


def _sklearn_reference(train, pre):
    """The whole-table scikit-learn pipeline that fit_preprocessor's per-column statistics reproduce."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    ct = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)),
                          ("scale", StandardScaler())]), pre.numeric),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]), pre.categorical),
    ], remainder="drop", sparse_threshold=0.0)
    return ct.fit(_input_frame(train, pre.numeric, pre.categorical))


def test_per_column_fit_has_the_sklearn_pipelines_statistics(frame):
    """Each statistic equals the whole-table ColumnTransformer's (medians, indicators, mean/scale of values
    and indicators, modes, categories); the float64 sums may differ in the last bit only."""
    types = infer_column_types(frame, FEATURES, {"site": "categorical"})
    train = frame.iloc[:40].copy()
    train.loc[train.index[:3], "age"] = np.nan  # an indicator column, and a median over fewer rows
    pre = fit_preprocessor(train, types)
    ct = _sklearn_reference(train, pre)
    num, cat = ct.named_transformers_["num"], ct.named_transformers_["cat"]
    assert pre.medians == num.named_steps["impute"].statistics_.tolist()
    assert pre.indicators == [pre.numeric[i] for i in num.named_steps["impute"].indicator_.features_] == ["age"]
    np.testing.assert_allclose(pre.means, num.named_steps["scale"].mean_, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(pre.scales, num.named_steps["scale"].scale_, rtol=1e-13)
    assert pre.modes == [str(m) for m in cat.named_steps["impute"].statistics_]
    assert pre.categories == [[str(c) for c in cats] for cats in cat.named_steps["onehot"].categories_]
    np.testing.assert_array_equal(pre.transform(frame), ct.transform(_input_frame(frame, pre.numeric,
                                                                                  pre.categorical)).astype(np.float32))


def test_json_round_trip_matches_sklearn(frame):
    types = infer_column_types(frame, FEATURES, {"site": "categorical"})
    pre = fit_preprocessor(frame.iloc[:40], types)
    new = frame.iloc[40:].copy()
    new.loc[new.index[0], "bmi"] = np.nan  # missing where training had none: no indicator
    new.loc[new.index[1], "stage"] = "IV"  # unseen category
    new.loc[new.index[2], "site"] = 9.0  # unseen, and the column became float
    new["site"] = new["site"].astype(float)  # 1.0 must still be category "1"
    new = new[["site", "stage", "bmi", "smoker", "age", "note"]]  # order and extras do not matter

    loaded = Preprocessor.from_json(json.loads(json.dumps(pre.to_json())))
    assert loaded == pre
    with pytest.warns(UserWarning, match="2 categorical value"):
        ours = loaded.transform(new)
    reference = _sklearn_reference(frame.iloc[:40], pre).transform(_input_frame(new, pre.numeric, pre.categorical))
    np.testing.assert_array_equal(ours, reference.astype(np.float32))
    assert not np.isnan(ours).any()
    assert ours[1, 3:6].sum() == 0 and ours[2, -3:].sum() == 0  # unseen -> all zero
    assert ours[3:, -3:].sum(1).tolist() == [1.0] * (len(new) - 3)


def test_unseen_category_warning_counts_per_column(frame):
    pre = fit_preprocessor(frame, {"stage": "categorical"})
    new = pd.DataFrame({"stage": ["I", "V", "V", "0", None]})
    with pytest.warns(UserWarning, match=r"3 categorical value.*'stage': 3"):
        x = pre.transform(new)
    assert x.sum(1).tolist() == [1, 0, 0, 0, 1]


def test_missing_columns_at_predict(frame):
    pre = fit_preprocessor(frame, infer_column_types(frame, FEATURES))
    with pytest.raises(DataError, match=r"\['bmi', 'stage'\]"):
        pre.transform(frame.drop(columns=["bmi", "stage"]))


def test_garbage_at_predict_is_an_error(frame):
    pre = fit_preprocessor(frame, {"age": "numeric"})
    with pytest.raises(DataError, match="age.*1 value.*text") as err:
        pre.transform(pd.DataFrame({"age": [50, "old"]}))
    assert "old" not in str(err.value)  # what medmm serve answers with a 422: never the value (#27)


def test_from_json_rejects_tampered_input(frame):
    pre = fit_preprocessor(frame, infer_column_types(frame, FEATURES))
    data = pre.to_json()
    with pytest.raises(CheckpointError):
        Preprocessor.from_json({**data, "format": "pickle"})
    with pytest.raises(CheckpointError):
        Preprocessor.from_json({**data, "scales": data["scales"][:-1]})
    with pytest.raises(CheckpointError):
        Preprocessor.from_json({**data, "medians": ["__import__('os')"] * len(data["medians"])})
    with pytest.raises(CheckpointError):
        Preprocessor.from_json({k: v for k, v in data.items() if k != "categories"})


def test_read_table_formats(tmp_path, frame):
    frame = frame[["age", "stage"]].dropna().reset_index(drop=True)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        got = read_table(tmp_path / name)
        pd.testing.assert_frame_equal(got, frame, check_dtype=False)
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="format"):
        read_table(tmp_path / "t.xlsx")


# --------------------------------------------------------------------------- targets


def test_regression_target():
    df = pd.DataFrame({"y": [1.0, None, 3.5, 2.0]})
    t = prepare_target(df, "regression", "y")
    assert t.mask.tolist() == [True, False, True, True]
    assert t.skipped == {"missing target": 1} and t.n == 3
    assert t.y.dtype == np.float32 and t.y.tolist() == [1.0, 3.5, 2.0]
    with pytest.raises(DataError, match="constant"):
        prepare_target(pd.DataFrame({"y": [2, 2, None]}), "regression", "y")
    with pytest.raises(DataError, match="'y' should be numeric but 1 value"):
        prepare_target(pd.DataFrame({"y": [2, 3, "high"]}), "regression", "y")


def test_binary_target():
    t = prepare_target(pd.DataFrame({"y": [0, 1, 1, None]}), "binary", "y")
    assert t.y.tolist() == [0, 1, 1] and t.classes == [0, 1] and t.skipped == {"missing target": 1}
    t = prepare_target(pd.DataFrame({"y": ["malignant", "benign", "", "benign"]}), "binary", "y")
    assert t.classes == ["benign", "malignant"] and t.y.tolist() == [1, 0, 0] and t.n == 3
    t = prepare_target(pd.DataFrame({"y": ["yes", "no", "yes"]}), "binary", "y", positive_label="no")
    assert t.classes == ["yes", "no"] and t.y.tolist() == [0, 1, 0]
    t = prepare_target(pd.DataFrame({"y": [True, False]}), "binary", "y")
    assert t.y.tolist() == [1, 0]
    with pytest.raises(DataError, match="regression"):
        prepare_target(pd.DataFrame({"y": [0, 1, 2]}), "binary", "y")
    with pytest.raises(DataError, match="single class"):
        prepare_target(pd.DataFrame({"y": [1, 1, 1]}), "binary", "y")


def test_survival_target():
    df = pd.DataFrame({"t": [5, 3, None, 8, 2], "e": [1, 0, 1, None, True]})
    t = prepare_target(df, "survival", time="t", event="e")
    assert t.mask.tolist() == [True, True, False, False, True]
    assert t.skipped == {"missing time": 1, "missing event": 1}
    assert t.time.tolist() == [5, 3, 2] and t.event.tolist() == [1, 0, 1] and t.y is None
    with pytest.raises(DataError, match="no events"):
        prepare_target(pd.DataFrame({"t": [1, 2], "e": [0, 0]}), "survival", time="t", event="e")
    with pytest.raises(DataError, match="> 0"):
        prepare_target(pd.DataFrame({"t": [0, 2], "e": [1, 0]}), "survival", time="t", event="e")
    with pytest.raises(DataError, match="0/1"):
        prepare_target(pd.DataFrame({"t": [1, 2], "e": [1, 2]}), "survival", time="t", event="e")


def test_target_config_errors():
    df = pd.DataFrame({"y": [0, 1]})
    with pytest.raises(ConfigError, match="problem"):
        prepare_target(df, "multiclass", "y")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target"):
        prepare_target(df, "binary")
    with pytest.raises(ConfigError, match="time"):
        prepare_target(df, "survival", event="y")
    with pytest.raises(DataError, match="'label'"):
        prepare_target(df, "binary", "label")
    with pytest.raises(ConfigError, match="positive_label"):
        prepare_target(df, "binary", "y", positive_label=5)


def test_no_warning_without_unseen_categories(frame):
    pre = fit_preprocessor(frame, infer_column_types(frame, FEATURES))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre.transform(frame)
