"""Conformal prediction sets / intervals and the refer flag (medmm.evaluation.conformal).

Sets are checked set-for-set against MAPIE's own split-conformal classes on the same
probabilities, coverage against planted data whose true probabilities are known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medmm.errors import MedmmError
from medmm.evaluation.conformal import (apply_sets, calibrate, conformal_quantile, coverage_report, load_conformal,
                                        prediction_columns, save_conformal, weighted_threshold)


def _planted(n: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the very probabilities the "model" outputs (a calibrated model; class 0 rarer)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.r_[0.3, np.full(k - 1, 0.8)], size=n)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return y, p


def _mapie():
    pytest.importorskip("mapie")
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

    class Probs(ClassifierMixin, BaseEstimator):
        """A prefit 'classifier' whose input is its own probabilities."""

        def fit(self, X, y):
            self.classes_ = np.arange(np.asarray(X).shape[1])
            self.n_features_in_ = np.asarray(X).shape[1]
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    class Preds(RegressorMixin, BaseEstimator):
        def fit(self, X, y):
            self.n_features_in_ = 1
            return self

        def predict(self, X):
            return np.asarray(X)[:, 0]

    return Probs, Preds


def test_quantile_is_the_split_conformal_order_statistic() -> None:
    s = np.arange(1, 20, dtype=float)  # n = 19: ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(s, 0.1) == 18.0
    assert conformal_quantile(s[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5: always include
    assert conformal_quantile(s[::-1], 0.5) == 10.0


@pytest.mark.slow  # importing MAPIE takes seconds
@pytest.mark.parametrize("seed", [0, 1])
def test_marginal_sets_and_intervals_equal_mapie(seed: int) -> None:
    from mapie.classification import SplitConformalClassifier
    from mapie.regression import SplitConformalRegressor

    Probs, Preds = _mapie()
    y, p = _planted(600, seed=seed)
    mapie = SplitConformalClassifier(Probs().fit(p, y), confidence_level=0.9, prefit=True).conformalize(p[:300], y[:300])
    ours = apply_sets(calibrate("multiclass", y[:300], p[:300], alpha=0.1, mondrian="none"), p[300:])
    assert (ours["sets"] == mapie.predict_set(p[300:])[1][:, :, 0]).all()

    rng = np.random.default_rng(seed)
    t = rng.normal(size=400)
    pred = t + rng.standard_t(3, size=400)
    reg = SplitConformalRegressor(Preds().fit(pred[:, None], t), confidence_level=0.8, prefit=True)
    iv = reg.conformalize(pred[:200, None], t[:200]).predict_interval(pred[200:, None])[1][:, :, 0]
    got = apply_sets(calibrate("regression", t[:200], pred[:200], alpha=0.2), pred[200:])
    np.testing.assert_allclose(np.stack([got["lower"], got["upper"]], axis=1), iv)


@pytest.mark.slow  # importing MAPIE takes seconds
@pytest.mark.filterwarnings("ignore:WARNING. your conformalization dataset:UserWarning")
def test_class_conditional_sets_equal_mapie_fitted_per_class() -> None:
    """Mondrian by class = for each class k, MAPIE conformalized on the calibration units of class k only."""
    from mapie.classification import SplitConformalClassifier

    Probs, _ = _mapie()
    y, p = _planted(900, seed=3)
    ours = apply_sets(calibrate("multiclass", y[:450], p[:450], alpha=0.1), p[450:])["sets"]
    for k in range(3):
        m = y[:450] == k
        mk = SplitConformalClassifier(Probs().fit(p, y), confidence_level=0.9, prefit=True).conformalize(p[:450][m],
                                                                                                           y[:450][m])
        assert (ours[:, k] == mk.predict_set(p[450:])[1][:, k, 0]).all()


def test_coverage_holds_overall_and_per_class_on_planted_data() -> None:
    y, p = _planted(20000, seed=4)
    conf = calibrate("multiclass", y[:10000], p[:10000], alpha=0.1, classes=["a", "b", "c"])
    rep = coverage_report(conf, y[10000:], p[10000:], label_names=["a", "b", "c"], n_boot=0)
    assert abs(rep["overall"]["coverage"] - 0.9) < 0.015
    for c in rep["classes"].values():
        assert abs(c["coverage"] - 0.9) < 0.02
    marginal = calibrate("multiclass", y[:10000], p[:10000], alpha=0.1, mondrian="none")
    rep_m = coverage_report(marginal, y[10000:], p[10000:], label_names=["a", "b", "c"], n_boot=0)
    assert abs(rep_m["overall"]["coverage"] - 0.9) < 0.015


def test_refer_rules_binary_multilabel_and_regression() -> None:
    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.8, 0.2)
    p[:20] = 0.5  # ambiguous units: 10 of each class
    conf = calibrate("binary", y, p, alpha=0.1, classes=["neg", "pos"])
    out = apply_sets(conf, np.array([0.5, 0.95, 0.05]))
    assert out["size"].tolist()[1:] == [1, 1] and out["abstain"].tolist()[1:] == [False, False]
    assert out["size"][0] == 2 and out["abstain"][0]
    head, rows = prediction_columns(conf, np.array([0.5, 0.95]), ["neg", "pos"])
    assert head == ["set_90", "abstain"] and rows == [["neg;pos", 1], ["pos", 0]]
    empty = {**conf, "thresholds": [0.0, 0.0]}  # nothing clears q = 0 but p = 1: empty sets
    assert apply_sets(empty, np.array([0.6]))["abstain"][0]
    assert not apply_sets({**empty, "refer": "ambiguous"}, np.array([0.6]))["abstain"][0]

    ml = calibrate("multilabel", np.stack([y, 1 - y], 1), np.stack([p, 1 - p], 1), alpha=0.1)
    head, rows = prediction_columns(ml, np.array([[0.95, 0.05], [0.5, 0.05]]), ["A", "B"])
    assert head == ["set_A", "set_B", "abstain"] and rows == [["1", "0", 0], ["0;1", "0", 1]]

    reg = calibrate("regression", np.zeros(99), np.r_[np.arange(1, 100) / 10.0], alpha=0.1, max_width=20.0)
    got = apply_sets(reg, np.array([0.0]))
    assert got["upper"][0] == pytest.approx(9.0) and not got["abstain"][0]  # 90th of 0.1..9.9
    assert apply_sets({**reg, "max_width": 17.0}, np.array([0.0]))["abstain"][0]  # width 18


def test_group_thresholds_and_the_flag_on_an_undercovered_subgroup() -> None:
    """Group B's labels ignore the model: pooled thresholds under-cover B (flagged), per-group ones do not."""
    rng = np.random.default_rng(5)
    n = 6000
    g = rng.choice(["A", "B"], n)
    p = rng.uniform(0.02, 0.98, n)
    y = np.where(g == "A", rng.random(n) < p, rng.random(n) < 0.5).astype(int)
    p = np.where(g == "B", np.clip(p * 0.2 + 0.8 * (1 - y) * p, 0, 1), p)  # B: confident and often wrong
    cal, test = slice(0, n // 2), slice(n // 2, n)
    pooled = calibrate("binary", y[cal], p[cal], alpha=0.1)
    rep = coverage_report(pooled, y[test], p[test], groups={"site": g[test]}, n_boot=300, seed=0)
    assert rep["groups"]["site"]["flagged"] == ["B"]
    grouped = calibrate("binary", y[cal], p[cal], alpha=0.1, groups=g[cal], group_column="site")
    rep = coverage_report(grouped, y[test], p[test], groups={"site": g[test]}, set_groups=g[test], n_boot=300, seed=0)
    assert rep["groups"]["site"]["flagged"] == []
    assert abs(rep["groups"]["site"]["cells"]["B"]["coverage"] - 0.9) < 0.03
    small = coverage_report(pooled, y[test][:5], p[test][:5], groups={"site": g[test][:5]}, n_boot=0)
    assert all(c.get("suppressed") for c in small["groups"]["site"]["cells"].values())


def test_weighted_quantile_reduces_to_the_plain_one_with_equal_weights() -> None:
    s = np.random.default_rng(1).random(199)
    assert weighted_threshold(s, np.ones(199), 1.0, 0.1) == conformal_quantile(s, 0.1)
    assert weighted_threshold(s[:5], np.ones(5), 1.0, 0.1) == math.inf
    w = np.where(s > 0.5, 10.0, 1.0)  # mass on high scores: a larger threshold
    assert weighted_threshold(s, w, 1.0, 0.1) > conformal_quantile(s, 0.1)


def test_json_round_trip_and_bad_settings(tmp_path) -> None:
    y, p = _planted(30, seed=6)
    conf = calibrate("multiclass", y, p, alpha=0.05, classes=["a", "b", "c"])  # few units: infinite thresholds
    save_conformal(tmp_path / "artifacts", conf)
    text = (tmp_path / "artifacts" / "conformal.json").read_text()
    assert "Infinity" not in text and json.loads(text)["alpha"] == 0.05
    assert "calibration_units" not in json.loads(text)  # artifacts/ travels with an export: thresholds only
    back = load_conformal(tmp_path)
    assert (apply_sets(back, p)["sets"] == apply_sets(conf, p)["sets"]).all()
    assert load_conformal(tmp_path / "nothing") is None
    for kw, msg in [({"alpha": 1.0}, "alpha"), ({"refer": "x"}, "refer"), ({"mondrian": "x"}, "mondrian")]:
        with pytest.raises(MedmmError, match=msg):
            calibrate("binary", [0, 1], [0.2, 0.8], **kw)
    with pytest.raises(MedmmError, match="survival"):
        calibrate("survival", [0, 1], [0.2, 0.8])


def test_sr_findings_carry_the_set_and_the_refer_flag() -> None:
    pytest.importorskip("highdicom")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medmm.deploy.sr import _set_findings

    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.8, 0.2)
    p[:20] = 0.5
    conf = calibrate("binary", y, p, alpha=0.1, classes=["neg", "pos"])
    both = _set_findings(hd, codes, conf, np.float32(0.5), ["neg", "pos"])
    assert [e.value.meaning for e in both] == ["neg", "pos", "Yes"]
    one = _set_findings(hd, codes, conf, np.float32(0.95), ["neg", "pos"])
    assert [e.value.meaning for e in one] == ["pos", "No"]


# --------------------------------------------------------------------------- end to end (slow)


class _Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output = exit_code, output


def _cli(args: list[str]) -> _Result:
    """Run the CLI in this process as a user would; exit code and everything it printed."""
    import contextlib
    import io

    from medmm.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        code = main(list(args))
    return _Result(code, buf.getvalue())


@pytest.mark.slow
def test_train_predict_evaluate_recalibrate_and_tripod_through_the_cli(tmp_path) -> None:
    """A tiny binary tabular-risk run on the breast-cancer table, used as a user would."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 4, 7, -1]]
    df.insert(0, "pid", [f"p{i:04d}" for i in range(len(df))])
    df["y"] = np.where(df.pop("target") == 1, "benign", "malignant")
    df["site"] = np.random.default_rng(0).choice(["north", "south"], len(df))
    data = tmp_path / "bc.csv"
    df.to_csv(data, index=False)
    run = tmp_path / "run"
    r = _cli(["run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=y",
                          "--set", "data.id_column=pid", "--set", "data.subgroup_columns=[site]",
                          "--set", "data.features=[mean radius,mean texture,mean smoothness,mean concave points]",
                          "--set", "engine.epochs=3", "--set", "engine.bootstrap=50", "--set", "engine.baseline=none",
                          "--set", "model.backbone=linear", "--set", "engine.min_steps=1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "conformal 90% on test: coverage" in r.output
    conf = load_conformal(run)
    assert conf["problem"] == "binary" and conf["calibrated_on"] == "val" and conf["mondrian"] == "class"
    units = json.loads((run / "conformal_calibration.json").read_text())
    assert len(units["y"]) == len(units["scores"]) == conf["n"]
    preds = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    want = apply_sets(conf, preds["prob_malignant"].to_numpy())
    names = np.array(["benign", "malignant"])
    assert preds["set_90"].tolist() == [";".join(names[s]) for s in want["sets"]]
    assert preds["abstain"].tolist() == want["abstain"].astype(int).tolist()
    r = _cli(["predict", str(run), "--data", str(data), "--out", str(tmp_path / "torch.csv")])
    assert r.exit_code == 0 and "referred (abstain = 1)" in r.output, r.output
    r = _cli(["export", str(run), "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output
    r = _cli(["predict", str(tmp_path / "export"), "--data", str(data), "--out", str(tmp_path / "onnx.csv")])
    assert r.exit_code == 0, r.output
    torch_p, onnx_p = (pd.read_csv(tmp_path / f, keep_default_na=False) for f in ("torch.csv", "onnx.csv"))
    assert (torch_p.set_90 == onnx_p.set_90).all() and (torch_p.abstain == onnx_p.abstain).all()
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app

    client = TestClient(create_app(ExportedModel(tmp_path / "export")))
    assert "refer" in client.get("/model").json()["prediction_sets"]
    rows = df.drop(columns=["y", "site"]).head(5).to_dict("records")
    got = client.post("/predict", json={"rows": rows}).json()["predictions"]
    first = torch_p.set_index("id").loc[[g["id"] for g in got]]
    assert [g["set_90"] for g in got] == [[n for n in s.split(";") if n] for s in first.set_90]
    assert [g["abstain"] for g in got] == [bool(a) for a in first.abstain]
    card = (run / "model_card.md").read_text()
    assert "## Prediction sets and referral" in card and "## Decision curves" in card
    assert "Decision curves" in (run / "report.html").read_text()

    site = df.sample(300, weights=np.exp(df["mean radius"] / 4), replace=True, random_state=0)
    site["pid"] = [f"q{i:04d}" for i in range(len(site))]
    site.to_csv(tmp_path / "site2.csv", index=False)
    ev = tmp_path / "ev"
    r = _cli(["evaluate", str(run), "--data", str(tmp_path / "site2.csv"), "--out", str(ev),
              "--recalibrate", "conformal", "--no-card"])
    assert r.exit_code == 0, r.output
    result = json.loads((ev / "evaluation.json").read_text())
    assert result["conformal"]["groups"]["site"]["cells"].keys() == {"north", "south"}
    assert result["decision_curve"]["malignant"]["n"] == 300
    recal = result["recalibration"]
    assert recal["method"] == "conformal" and recal["fit_units"] == 150
    assert recal["weighted"] is not None  # the shift check fires on this site: the weighted check runs
    assert not (tmp_path / "export" / "conformal_calibration.json").exists()  # validation units stay home
    new = load_conformal(ev / "recalibrated-run")
    assert new["calibrated_on"] == "external calibration part" and new["n"] == 150
    assert "Prediction sets and referral" in (ev / "evaluation.html").read_text()

    r = _cli(["report", str(run), "--tripod-ai"])
    assert r.exit_code == 0, r.output
    tri = json.loads((run / "tripod-ai" / "tripod-ai.json").read_text())
    items = {i["item"]: i for i in tri["items"]}
    assert len({"".join(c for c in k if c.isdigit()) for k in items}) == 27
    assert "90% conformal prediction sets" in items["15"]["text"] and "conformal.json" in items["15"]["source"]
    assert items["17"]["status"] == "to be supplied by the authors"
    assert "by 'pid'" in items["12a"]["text"]
    assert (run / "tripod-ai" / "tripod-ai.md").read_text().count("| 23a |") == 1
    r = _cli(["report", str(run), "--tripod-ai"])
    assert r.exit_code != 0  # never overwrites


def test_multilabel_coverage_is_per_label_and_the_joint_figure_is_reported_apart() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 0.98, size=(6000, 3))
    y = (rng.random((6000, 3)) < p).astype(int)
    conf = calibrate("multilabel", y[:3000], p[:3000], alpha=0.1)
    rep = coverage_report(conf, y[3000:], p[3000:], label_names=["a", "b", "c"], n_boot=0)
    assert abs(rep["overall"]["coverage"] - 0.9) < 0.015  # the per-label guarantee
    assert all(abs(c["coverage"] - 0.9) < 0.02 for c in rep["classes"].values())
    assert rep["all_labels_covered"] < 0.8  # about 0.9 ** 3: not what the sets promise, shown apart


def test_a_misspelled_group_column_fails_before_training_naming_its_key(tmp_path) -> None:
    import pandas as pd

    from medmm.errors import DataError
    from medmm.evaluation import check_subgroup_columns

    data = tmp_path / "t.csv"
    pd.DataFrame({"x": [1, 2], "site": ["a", "b"], "y": [0, 1]}).to_csv(data, index=False)
    check_subgroup_columns(data, {"data": {}, "eval": {"conformal": {"group_column": "site"}}})
    with pytest.raises(DataError, match="eval.conformal.group_column: 'sitez' is not a column of t.csv"):
        check_subgroup_columns(data, {"data": {}, "eval": {"conformal": {"group_column": "sitez"}}})


# --------------------------------------------------------------------------- grouped thresholds everywhere (#32)


def test_numeric_groups_band_with_the_calibration_edges_and_a_missing_value_uses_the_per_class_thresholds() -> None:
    from medmm.evaluation.conformal import group_values, threshold_sources

    rng = np.random.default_rng(3)
    n = 4000
    score = rng.uniform(0, 100, n)
    p = rng.uniform(0.02, 0.98, n)
    y = np.where(score < 75, rng.random(n) < p, rng.random(n) < 0.5).astype(int)  # top band: labels ignore p
    from medmm.evaluation.subgroups import band_edges, label_values

    edges = band_edges(score, "score")
    conf = calibrate("binary", y, p, alpha=0.1, groups=label_values(score, edges), group_column="score",
                     group_edges=edges, classes=["a", "b"])
    assert conf["group_edges"] == edges and len(edges) == 3 and "missing" not in conf["group_thresholds"]
    top = group_values(conf, [99.0])[0]
    assert top.startswith("≥") and conf["group_thresholds"][top] != conf["thresholds"]  # the top band differs
    # one value alone bands as the calibration split did (not as a batch of one: its own "quartiles")
    batch = group_values(conf, list(score[:50]))
    assert [group_values(conf, [v])[0] for v in score[:50]] == batch
    # a unit with no value, or with a group never calibrated, uses the per-class thresholds, and says so
    groups = [top, "missing", "[200, 300)"]
    got = apply_sets(conf, np.full(3, 0.85), groups)["sets"]
    pooled = apply_sets(conf, np.full(1, 0.85))["sets"][0]
    assert (got[1] == pooled).all() and (got[2] == pooled).all() and not (got[0] == pooled).all()
    assert threshold_sources(conf, groups, 3) == [f"score={top}", "per class (no score value)",
                                                  "per class (score group not calibrated)"]
    head, rows = prediction_columns(conf, np.full(3, 0.85), ["a", "b"], groups)
    assert head == ["set_90", "abstain", "set_thresholds"] and rows[1][2] == "per class (no score value)"
    assert "200" not in "".join(map(str, rows[2]))  # an uncalibrated value is never echoed


def test_sr_findings_use_the_units_group_thresholds() -> None:
    pytest.importorskip("highdicom")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medmm.deploy.sr import _set_findings

    rng = np.random.default_rng(4)
    g = np.repeat(["A", "B"], 400)
    y = rng.integers(0, 2, 800)
    p = np.where(g == "A", np.where(y == 1, 0.9, 0.1), rng.uniform(0.05, 0.95, 800))  # B: the scores say nothing
    conf = calibrate("binary", y, p, alpha=0.1, groups=g, group_column="site", classes=["neg", "pos"])
    def meaning(score: float, group: str | None) -> list[str]:
        return [e.value.meaning for e in _set_findings(hd, codes, conf, np.float32(score), ["neg", "pos"], group)]

    assert meaning(0.95, "A") == ["pos", "No"]
    assert meaning(0.5, "A") == ["Yes"]  # A's thresholds are tight: an empty set, referred
    assert meaning(0.5, "B") == meaning(0.5, None) == ["neg", "pos", "Yes"]  # B's and the per-class ones are wide


def _same_sets(a, b, conf, cols=("set_90", "abstain", "set_thresholds")) -> None:
    """Rows of two predictions tables (indexed by id) hold the same sets, except where the score is within float
    error of one of its group's thresholds (they are validation scores: torch and onnxruntime may round apart)."""
    cols = list(cols)
    b = b.loc[a.index]
    assert (a["set_thresholds"] == b["set_thresholds"]).all()
    for uid in a.index[(a[cols] != b[cols]).any(axis=1)]:
        q = conf["group_thresholds"].get(a.set_thresholds[uid].split("=", 1)[-1], conf["thresholds"])
        p = a.prob_pos[uid]
        assert min(abs((1 - p) - q[1]), abs(p - q[0])) < 1e-5, (uid, a.loc[uid, cols], b.loc[uid, cols])


@pytest.mark.slow
def test_group_thresholds_travel_to_onnxruntime_and_serve_and_a_one_row_request_bands_as_val(tmp_path) -> None:
    """A planted table whose top band of a numeric column has labels the model cannot see: its thresholds
    differ from the others'. torch predict == onnxruntime predict == serve, row by row and one row alone."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 1600
    df = pd.DataFrame({"pid": [f"p{i:04d}" for i in range(n)], "x1": rng.normal(size=n), "x2": rng.normal(size=n),
                       "score": np.round(rng.uniform(0, 100, n), 2)})
    p = 1 / (1 + np.exp(-(2.5 * df.x1 + 1.5 * df.x2)))
    y = np.where(df.score < 75, rng.random(n) < p, rng.random(n) < 0.5)
    df["y"] = np.where(y, "pos", "neg")
    data = tmp_path / "planted.csv"
    df.to_csv(data, index=False)
    run = tmp_path / "run"
    r = _cli(["run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=y",
              "--set", "data.id_column=pid", "--set", "data.features=[x1,x2]",
              "--set", "eval.conformal.group_column=score", "--set", "engine.epochs=3", "--set", "engine.bootstrap=0",
              "--set", "engine.baseline=none", "--set", "model.backbone=linear", "--quiet"])
    assert r.exit_code == 0, r.output
    conf = load_conformal(run)
    assert len(conf["group_edges"]) == 3  # quartiles of val's scores, fixed with the run
    assert len({json.dumps(t) for t in conf["group_thresholds"].values()}) > 1  # the groups' thresholds differ
    r = _cli(["predict", str(run), "--data", str(data), "--out", str(tmp_path / "torch.csv")])
    assert r.exit_code == 0 and "thresholds per score group" in r.output, r.output
    assert _cli(["export", str(run), "--out", str(tmp_path / "export")]).exit_code == 0
    r = _cli(["predict", str(tmp_path / "export"), "--data", str(data), "--out", str(tmp_path / "onnx.csv")])
    assert r.exit_code == 0 and "thresholds per score group" in r.output, r.output
    torch_p, onnx_p = (pd.read_csv(tmp_path / f, keep_default_na=False).set_index("id")
                       for f in ("torch.csv", "onnx.csv"))
    assert torch_p.set_thresholds.str.startswith("score=").all()
    assert torch_p.set_thresholds.nunique() == len(conf["group_thresholds"])
    _same_sets(torch_p, onnx_p, conf)
    # pooled thresholds would give other sets on this data: the groups are really used
    pooled = apply_sets(conf, torch_p.prob_pos.to_numpy())["sets"]
    assert (np.array([";".join(np.array(["neg", "pos"])[s]) for s in pooled]) != torch_p.set_90.to_numpy()).any()

    # one row alone (a table of one row, torch and onnxruntime): banded with the run's edges, same set
    pick = [i for i in range(n) if df.score[i] >= 75][:1] + [i for i in range(n) if df.score[i] < 25][:1]
    for i in pick:
        one = tmp_path / f"one{i}.csv"
        df.iloc[[i]].drop(columns=["y"]).to_csv(one, index=False)
        for src, name, whole in ((run, "t", torch_p), (tmp_path / "export", "o", onnx_p)):
            assert _cli(["predict", str(src), "--data", str(one), "--out", str(tmp_path / f"{name}{i}.csv")]).exit_code == 0
            got = pd.read_csv(tmp_path / f"{name}{i}.csv", keep_default_na=False).set_index("id")
            assert got.set_thresholds.iloc[0] == whole.set_thresholds[got.index[0]]
            _same_sets(got, whole, conf)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medmm.deploy.runtime import ExportedModel
    from medmm.deploy.service import create_app

    client = TestClient(create_app(ExportedModel(tmp_path / "export")))
    def served(rows: list[dict]) -> pd.DataFrame:
        got = client.post("/predict", json={"rows": rows}).json()["predictions"]
        return pd.DataFrame([{**g, "set_90": ";".join(g["set_90"]), "abstain": int(g["abstain"])}
                             for g in got]).set_index("id")

    rows = df.drop(columns=["y"]).iloc[:40].to_dict("records")
    got = served(rows)
    assert len(got) == 40 and got.set_thresholds.str.startswith("score=").all()
    _same_sets(got, onnx_p, conf)
    _same_sets(got, torch_p, conf)
    for i in pick:  # one row per request
        one = served([df.drop(columns=["y"]).iloc[i].to_dict()])
        assert one.set_thresholds.iloc[0] == torch_p.set_thresholds[one.index[0]]
        _same_sets(one, onnx_p, conf)
    # no group value: the per-class thresholds, said in the response
    bare = client.post("/predict", json={"rows": [{k: v for k, v in rows[0].items() if k != "score"}]}).json()
    g = bare["predictions"][0]
    assert g["set_thresholds"] == "per class (no score value)"
    names = np.array(["neg", "pos"])
    assert g["set_90"] == list(names[apply_sets(conf, np.array([g["prob_pos"]]))["sets"][0]])

    # evaluate on new data whose scores lie in the top half only: its coverage cells for the thresholds'
    # column use the run's stored bands (those the sets were made with), not the new data's own quartiles
    top = df[df.score >= 50]
    top.to_csv(tmp_path / "top.csv", index=False)
    r = _cli(["evaluate", str(run), "--data", str(tmp_path / "top.csv"), "--out", str(tmp_path / "ev"),
              "--subgroups", "score", "--no-card"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    cells = set(result["conformal"]["groups"]["score"]["cells"])
    want = set(torch_p.set_thresholds[top.pid].str.removeprefix("score="))
    assert cells == want and len(cells) == 2  # the two stored bands above 50, not four new quartiles


def test_a_dicom_unit_shown_as_a_keyed_path_finds_its_header_attributes(tmp_path) -> None:
    """Units of a folder whose path holds the PatientID or a date are public paths (keyed tokens): the group
    of the thresholds (and the subgroup audit) is still read from their headers, not taken as missing."""
    import shutil

    from medmm.data.dicom.scan import ImageItem, scan_folder
    from medmm.demos.dicom import source_roots
    from medmm.evaluation.attributes import unit_attributes

    study = tmp_path / "src" / "1CT1" / "2004-01-19_CT"  # CT_small.dcm: PatientID 1CT1
    study.mkdir(parents=True)
    shutil.copy(source_roots()[0] / "CT_small.dcm", study / "x.dcm")
    records, _ = scan_folder(tmp_path / "src")
    units = [ImageItem(r).key for r in records]
    assert len(units) == 1 and "1CT1" not in units[0]
    assert unit_attributes(tmp_path / "src", {}, units, ["Modality"]) == {"Modality": ["CT"]}
