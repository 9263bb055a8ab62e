"""tabular-risk end to end through the CLI on real tables (scikit-learn and lifelines data sets)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli

pytestmark = pytest.mark.slow  # every test trains through `medmm run`

QUICK = ["--set", "engine.bootstrap=100", "--quiet"]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from sklearn.datasets import load_diabetes

    root = tmp_path_factory.mktemp("diab")
    df = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    df.loc[3, "progression"] = None  # a row without a target is skipped, not fatal
    data = root / "diabetes.csv"
    df.to_csv(data, index_label="patient")
    run = root / "run"
    out = cli("run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=progression",
              "--set", "data.id_column=patient", "--set", "model.backbone=linear", "--set", "engine.epochs=60", *QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    return data, run


def test_regression_matches_ridge_on_the_same_split(diabetes: tuple[Path, Path]) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    data, run = diabetes
    s = _summary(run)
    df = pd.read_csv(data).dropna(subset=["progression"])
    split = pd.read_csv(run / "splits.csv").set_index("id")["split"]
    which = df.patient.map(split)
    x, y = df.drop(columns=["patient", "progression"]), df.progression
    ridge = Ridge(alpha=1.0).fit(x[which == "train"], y[which == "train"])
    reference = r2_score(y[which == "test"], ridge.predict(x[which == "test"]))
    assert s["metrics"]["r2"] > reference - 0.08, (s["metrics"]["r2"], reference)
    skipped = list(csv.DictReader((run / "skipped.csv").open()))
    assert skipped == [{"id": "3", "reason": "missing target"}]
    preds = pd.read_csv(run / "predictions.csv")
    # the conformal interval (eval.conformal, default alpha 0.1) and its refer flag sit beside the value
    assert list(preds.columns) == ["id", "prediction", "lower_90", "upper_90", "abstain", "true"]
    assert len(preds) == s["sizes"]["test"]
    assert (preds.lower_90 <= preds.prediction).all() and (preds.prediction <= preds.upper_90).all()
    assert preds.prediction.between(0, 400).all()  # original units, not standardised ones
    art = json.loads((run / "artifacts" / "tabular.json").read_text())
    assert art["preprocessor"] and not list((run / "artifacts").glob("*.pkl"))


def test_predict_on_a_table_without_target(diabetes: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = diabetes
    df = pd.read_csv(data).drop(columns=["progression"]).head(20)
    df.to_csv(tmp_path / "new.csv", index=False)
    out = cli("predict", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 20 and list(preds.columns) == ["id", "prediction", "lower_90", "upper_90", "abstain"]
    df.drop(columns=["bmi"]).to_csv(tmp_path / "bad.csv", index=False)
    bad = cli("predict", str(run), "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "q.csv"))
    assert bad.returncode == 2 and "bmi" in bad.stderr and "Traceback" not in bad.stderr


def test_binary_risk_on_breast_cancer(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df["target"] = df["target"].map({0: "malignant", 1: "benign"})
    df.to_csv(tmp_path / "bc.csv", index=False)
    run = tmp_path / "run"
    out = cli("run", "tabular-risk", "--data", str(tmp_path / "bc.csv"), "--out", str(run),
              "--set", "data.target=target", "--set", "engine.epochs=30", "--set", "model.backbone=linear", *QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    s = _summary(run)
    assert s["metrics"]["auroc"] > 0.95
    lo, hi = s["ci"]["auroc"]
    assert lo <= s["metrics"]["auroc"] <= hi
    assert "prob_malignant" in pd.read_csv(run / "predictions.csv").columns


def test_survival_cox_on_gbsg2(tmp_path: Path) -> None:
    lifelines = pytest.importorskip("lifelines")
    df = lifelines.datasets.load_gbsg2()  # categorical columns: horTh, menostat, tgrade
    df.to_csv(tmp_path / "gbsg2.csv", index=False)
    run = tmp_path / "run"
    out = cli("run", "tabular-risk", "--data", str(tmp_path / "gbsg2.csv"), "--out", str(run),
              "--set", "data.time=time", "--set", "data.event=cens", "--set", "engine.batch_size=256",
              "--set", "engine.epochs=40", "--set", "model.backbone=linear", *QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    s = _summary(run)
    assert s["monitor"] == "c_index" and s["metrics"]["c_index"] > 0.6
    assert list(pd.read_csv(run / "predictions.csv").columns) == ["id", "risk", "time", "event"]


@pytest.mark.parametrize("edit, overrides, message", [
    (lambda df: df, ["data.target=nope"], "'nope' is not in the data"),
    (lambda df: df.assign(bmi=df.bmi.astype(str).where(df.index % 7 > 0, "high")), ["data.target=progression"], "bmi"),
    (lambda df: df.assign(progression=1.0), ["data.target=progression"], "constant"),
    # rows sharing an id would have their scores averaged as one unit: refused, naming the table lines
    (lambda df: df.assign(pid=[4 if i == 5 else i for i in range(len(df))]), ["data.target=progression",
     "data.id_column=pid"], "'pid' has duplicate values (table line 7 repeats an earlier row's id)"),
])
def test_bad_tables_give_one_clear_line(tmp_path: Path, edit, overrides, message) -> None:
    from sklearn.datasets import load_diabetes

    df = edit(load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"}))
    df.to_csv(tmp_path / "t.csv", index=False)
    args = [a for o in overrides for a in ("--set", o)]
    out = cli("run", "tabular-risk", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "r"), *args, *QUICK)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_user_split_column_and_finite_val_loss(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    df = load_diabetes(as_frame=True, scaled=False).frame
    df["fold"] = ["test" if i % 5 == 0 else "valid" if i % 5 == 1 else "train" for i in range(len(df))]
    df.loc[[3, 8], "fold"] = ["holdout", None]  # the one split rule: skipped with a reason, not re-split
    data = tmp_path / "d.csv"
    df.to_csv(data, index_label="pid")
    run = tmp_path / "run"
    out = cli("run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=target",
              "--set", "data.id_column=pid", "--set", "data.split_column=fold", "--set", "engine.epochs=3",
              "--set", "engine.bootstrap=0", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    split = pd.read_csv(run / "splits.csv").set_index("id")["split"]
    assert len(split) == len(df) - 2 and (split == df.fold.str.replace("valid", "val")[split.index]).all()
    skipped = pd.read_csv(run / "skipped.csv").set_index("id")["reason"].to_dict()
    assert skipped == {3: "invalid split value (expected train/val/test)", 8: "missing split"}
    art = json.loads((run / "artifacts" / "tabular.json").read_text())
    assert "fold" not in art["preprocessor"]["numeric"] + art["preprocessor"]["categorical"]
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in val if r["split"] == "val"]
    assert losses and all(isinstance(v, float) and v > 0 for v in losses)  # the task's own loss is counted
