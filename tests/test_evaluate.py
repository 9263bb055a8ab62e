"""``medmm evaluate`` and the evaluation layer: operating points, subgroup audit, suppression, recalibration.

Unit tests check each piece against planted answers and scikit-learn; the slow tests train one small
tabular-risk run and evaluate it through the CLI as a user would.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.errors import MedmmError
from medmm.evaluation.calibration import apply_calibrator, fit_calibrator
from medmm.evaluation.subgroups import audit, audit_markdown, group_labels, parse_bands
from medmm.evaluation.threshold import choose_operating_point, choose_threshold, decisions, operating_stats


def _planted(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label = x1 > 0 in groups A and C, but x2 > 0 in group B; the "model" scores x1 for everyone."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.array(["A", "B", "C"]), n // 3)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y = np.where(g == "B", x2 > 0, x1 > 0).astype(int)
    flip = rng.random(n) < 0.1  # some label noise everywhere
    y = np.where(flip, 1 - y, y)
    p = 1 / (1 + np.exp(-3 * x1))
    return y, p, g


# --------------------------------------------------------------------------- operating point


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_point_rules_agree_with_sklearn_roc_curve(seed: int) -> None:
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.3 * y + rng.random(300) * 0.8, 0, 1), 2)  # ties on purpose
    fpr, tpr, thr = roc_curve(y, p)
    sens = lambda t: float(((p >= t) & (y == 1)).sum() / (y == 1).sum())  # noqa: E731
    spec = lambda t: float(((p < t) & (y == 0)).sum() / (y == 0).sum())  # noqa: E731
    candidates = np.unique(p)

    t = choose_threshold(y, p, "youden")
    assert t in thr
    assert sens(t) + spec(t) - 1 == pytest.approx(float(np.max(tpr - fpr)))

    t = choose_threshold(y, p, "target_sensitivity", target=0.9)
    assert sens(t) >= 0.9 and all(sens(c) < 0.9 for c in candidates if c > t)
    t = choose_threshold(y, p, "target_specificity", target=0.8)
    assert spec(t) >= 0.8 and all(spec(c) < 0.8 for c in candidates if c < t)
    assert choose_threshold(y, p, "fixed", fixed=0.3) == 0.3
    assert choose_threshold(np.ones(5), np.ones(5) / 2, "youden", fixed=0.5) == 0.5  # one class: undefined


def test_multiclass_operating_point_is_one_vs_rest_per_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    s = rng.dirichlet(np.ones(3), 400) * 0.5 + np.eye(3)[y] * 0.5
    op = choose_operating_point("multiclass", y, s, ["a", "b", "c"], rule="youden", target=0.9, fixed=0.5,
                                chosen_on="val")
    assert list(op["thresholds"]) == ["a", "b", "c"]
    for k, c in enumerate("abc"):
        assert op["thresholds"][c] == choose_threshold(y == k, s[:, k], "youden")
    assert decisions("multiclass", s, op).shape == (400, 3)


def test_operating_stats_counts_and_bootstrap_ci() -> None:
    y = np.array([1] * 40 + [0] * 60)
    call = np.array([1] * 30 + [0] * 10 + [1] * 6 + [0] * 54)
    st = operating_stats(y, call, n_boot=300)
    assert (st["tp"], st["fn"], st["fp"], st["tn"]) == (30, 10, 6, 54)
    assert st["sensitivity"] == 0.75 and st["specificity"] == 0.9
    assert st["ppv"] == pytest.approx(30 / 36) and st["npv"] == pytest.approx(54 / 64)
    lo, hi = st["ci"]["sensitivity"]
    assert lo < 0.75 < hi and hi - lo < 0.35


# --------------------------------------------------------------------------- subgroup audit


def test_audit_flags_the_planted_group_and_only_it() -> None:
    y, p, g = _planted()
    op = choose_operating_point("binary", y, p, ["neg", "pos"], rule="youden", target=0.9, fixed=0.5, chosen_on="val")
    result = audit("binary", y, p, {"group": g}, op=op, n_boot=300)
    col = result["columns"]["group"]
    assert col["flagged"] == ["B"]
    rows = {r["group"]: r for r in col["groups"]}
    assert rows["B"]["value"] < 0.65 < 0.85 < min(rows["A"]["value"], rows["C"]["value"])
    assert col["largest_gap"] > 0.2
    # the fairness figures are fairlearn's own
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    calls = decisions("binary", p, op)[:, 0]
    assert col["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y, calls, sensitive_features=g))
    assert col["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, calls, sensitive_features=g))


def test_small_cells_are_suppressed_everywhere() -> None:
    y, p, g = _planted(n=300)
    g = g.astype(object)
    g[:3] = "rare"  # a group of 3 patients
    result = audit("binary", y, p, {"site": g}, op=None, min_group_size=10, n_boot=50)
    col = result["columns"]["site"]
    rare = next(r for r in col["groups"] if r["group"] == "rare")
    assert rare == {"group": "rare", "n": "< 10", "suppressed": True}
    assert col["suppressed"] == 1 and "rare" not in col["flagged"]
    md = audit_markdown(result)
    assert "| rare | < 10 | suppressed |" in md
    line = next(l for l in md.splitlines() if l.startswith("| rare"))
    assert not any(ch.isdigit() for ch in line.replace("< 10", ""))  # no figure of the small group at all


def test_group_labels_band_numbers_and_keep_categories() -> None:
    ages = [5, 39.9, 40, 64, 65, 79, 80, 95, None, 50, 51, 52]
    assert list(group_labels(ages, "age")) == ["[0, 40)", "[0, 40)", "[40, 65)", "[40, 65)", "[65, 80)", "[65, 80)",
                                               "≥ 80", "≥ 80", "missing", "[40, 65)", "[40, 65)", "[40, 65)"]
    assert list(group_labels(ages[:4], "x", {"x": [10, 50]})) == ["< 10", "[10, 50)", "[10, 50)", "≥ 50"]
    assert list(group_labels(["F", "M", "", 1.0], "sex")) == ["F", "M", "missing", "1"]
    assert parse_bands("{age: [0, 65]}") == {"age": [0.0, 65.0]}


def test_dicom_subgroups_come_from_allowed_header_attributes_only(tmp_path: Path) -> None:
    import shutil

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from medmm.errors import DataError
    from medmm.evaluation.attributes import age_in_years, unit_attributes

    for folder, name in (("a", "CT_small.dcm"), ("b", "MR_small.dcm")):
        (tmp_path / folder).mkdir()
        shutil.copy(get_testdata_file(name), tmp_path / folder / name)
    mr_series = str(dcmread(tmp_path / "b" / "MR_small.dcm", stop_before_pixels=True).SeriesInstanceUID)
    units = ["a/CT_small.dcm", mr_series, "a/CT_small.dcm#0", "not/there.dcm"]  # path, series UID, frame, unknown
    got = unit_attributes(tmp_path, {}, units, ["PatientSex", "PatientAge", "Manufacturer"])
    assert got == {"PatientSex": ["O", "F", "O", None], "PatientAge": [0.0, None, 0.0, None],
                   "Manufacturer": ["GE MEDICAL SYSTEMS", "TOSHIBA_MEC", "GE MEDICAL SYSTEMS", None]}
    with pytest.raises(DataError, match="'PatientName' is not an allowed DICOM header attribute"):
        unit_attributes(tmp_path, {}, units, ["PatientName"])
    assert age_in_years("065Y") == 65 and age_in_years("006M") == 0.5 and np.isnan(age_in_years("junk"))


def test_a_misspelled_subgroup_column_fails_before_training(tmp_path: Path) -> None:
    from medmm.errors import DataError
    from medmm.evaluation import check_subgroup_columns

    data = tmp_path / "t.csv"
    pd.DataFrame({"x": [1, 2], "sex": ["F", "M"], "y": [0, 1]}).to_csv(data, index=False)
    check_subgroup_columns(data, {"data": {"subgroup_columns": ["sex"]}, "eval": {}})
    with pytest.raises(DataError, match="data.subgroup_columns: 'gender' is not a column of t.csv"):
        check_subgroup_columns(data, {"data": {"subgroup_columns": ["sex", "gender"]}, "eval": {}})


def test_missing_fairlearn_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.evaluation.subgroups import require_fairlearn

    monkeypatch.setitem(sys.modules, "fairlearn.metrics", None)
    with pytest.raises(MedmmError, match=r"pip install 'medmm\[evaluate\]'"):
        require_fairlearn()


# --------------------------------------------------------------------------- recalibration


def test_temperature_scaling_recovers_a_planted_temperature_and_isotonic_calibrates() -> None:
    from medmm.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    z = rng.normal(scale=2, size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    over = 1 / (1 + np.exp(-2.5 * z))  # overconfident by a factor 2.5
    cal = fit_calibrator("binary", y, over, "temperature")
    assert cal["temperature"] == pytest.approx(2.5, rel=0.1)
    iso = fit_calibrator("binary", y[:2000], over[:2000], "isotonic")
    after = apply_calibrator("binary", over[2000:], iso)
    assert expected_calibration_error(y[2000:], after) < expected_calibration_error(y[2000:], over[2000:]) / 2
    with pytest.raises(MedmmError, match="temperature"):
        fit_calibrator("multiclass", y % 3, np.full((4000, 3), 1 / 3), "isotonic")


def test_eval_config_keys_are_validated() -> None:
    from medmm.errors import ConfigError
    from medmm.plugins import load_plugins
    from medmm.runner import resolved_config

    spec = load_plugins().registry.get("task", "tabular-risk")
    cfg = resolved_config(spec, None, ["eval.threshold=target_specificity", "data.subgroup_columns=[sex,site]"])
    assert cfg["eval"]["threshold"] == "target_specificity" and cfg["data"]["subgroup_columns"] == ["sex", "site"]
    with pytest.raises(ConfigError, match="eval.threshold"):
        resolved_config(spec, None, ["eval.threshold=best"])
    with pytest.raises(ConfigError, match="eval.target"):
        resolved_config(spec, None, ["eval.target=1.5"])


# --------------------------------------------------------------------------- end to end (slow)


def _cli(*args: str) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stderr-like output)."""
    import contextlib
    import io

    from medmm.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, err.getvalue() + out.getvalue()


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A binary tabular-risk run on the breast-cancer table with string labels and two subgroup columns."""
    from sklearn.datasets import load_breast_cancer

    root = tmp_path_factory.mktemp("evaluate")
    df = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 4, 5, 7, -1]]
    rng = np.random.default_rng(0)
    df.insert(0, "pid", [f"p{i:04d}" for i in range(len(df))])
    df["y"] = np.where(df.pop("target") == 1, "benign", "malignant")
    df["site"] = rng.choice(["north", "south"], len(df))
    df["age"] = rng.integers(25, 90, len(df))
    data = root / "bc.csv"
    df.to_csv(data, index=False)
    run = root / "run"
    code, out = _cli("run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=y",
                     "--set", "data.id_column=pid", "--set", "data.features=[mean radius,mean texture,mean smoothness,"
                     "mean compactness,mean concave points]", "--set", "data.subgroup_columns=[site,age]",
                     "--set", "engine.epochs=8", "--set", "engine.bootstrap=200", "--set", "engine.baseline=none", "--quiet")
    assert code == 0, out[-3000:]
    split = pd.read_csv(run / "splits.csv").set_index("id")["split"]
    return run, data, df.assign(split=df.pid.map(split))


@pytest.mark.slow
def test_training_run_stores_an_operating_point_and_audits_subgroups(trained) -> None:
    run, _, _ = trained
    op = json.loads((run / "artifacts" / "operating_point.json").read_text())
    assert op["chosen_on"] == "val" and op["rule"] == "youden" and list(op["thresholds"]) == ["malignant"]
    preds = pd.read_csv(run / "predictions.csv")
    t = op["thresholds"]["malignant"]
    assert (preds.decision == np.where(preds.prob_malignant >= t, "malignant", "benign")).all()
    report = (run / "report.html").read_text()
    assert "Operating point (on test)" in report and "Subgroups (on test)" in report
    card = (run / "model_card.md").read_text()
    assert "## Subgroups" in card and "**site**" in card and "Subgroups: the metrics are averages" not in card
    summary = json.loads((run / "summary.json").read_text())
    assert summary["operating_point"]["malignant"]["threshold"] == t


@pytest.mark.slow
def test_evaluating_the_runs_own_test_split_reproduces_its_test_metrics(trained, tmp_path: Path) -> None:
    run, _, df = trained
    test = tmp_path / "test.csv"
    df[df.split == "test"].drop(columns="split").to_csv(test, index=False)
    code, out = _cli("evaluate", str(run), "--data", str(test), "--out", str(tmp_path / "ev"), "--site", "own test")
    assert code == 0, out
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert ev["metrics"] == summary["metrics"]  # exactly: same reader, same model, same metric code
    assert ev["ci"] == {k: list(v) for k, v in summary["ci"].items()}
    assert ev["provenance"]["units"] == summary["sizes"]["test"]
    assert ev["operating_stats"]["malignant"]["sensitivity"] == summary["operating_point"]["malignant"]["sensitivity"]
    assert set(ev["subgroups"]["columns"]) == {"site", "age"} and not ev["shift"]["warnings"]
    assert "### " in (card := (run / "model_card.md").read_text()) and "own test" in card.split("## Validation")[1]
    html = (tmp_path / "ev" / "evaluation.html").read_text()
    assert "Subgroups" in html and "data:image/png;base64" in html


@pytest.mark.slow
@pytest.mark.parametrize("edit, args, message", [
    (lambda d: d.drop(columns="y"), [], "label column 'y'"),
    (lambda d: d.drop(columns="mean texture"), [], "mean texture"),
    (lambda d: d.assign(y=d.y.where(d.index > 2, "unknown")), [], "label column 'y' holds 1 value(s) the model "
                                                                    "was never trained on, in 3 row(s)"),
    (lambda d: d, ["--subgroups", "sex"], "subgroup column 'sex'"),
])
def test_bad_external_data_is_one_line_and_writes_nothing(trained, tmp_path: Path, edit, args, message) -> None:
    run, _, df = trained
    before = _tree_hash(run)
    data = tmp_path / "external.csv"
    edit(df.drop(columns="split")).to_csv(data, index=False)
    code, out = _cli("evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "ev"), *args)
    assert code == 2 and message in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "ev").exists() and _tree_hash(run) == before


@pytest.mark.slow
def test_shifted_site_warns_and_recalibration_writes_a_new_run(trained, tmp_path: Path) -> None:
    run, _, df = trained
    before = _tree_hash(run)
    shifted = df.drop(columns="split").assign(**{"mean texture": df["mean texture"] * 1.6})
    data = tmp_path / "site2.csv"
    shifted.to_csv(data, index=False)
    code, out = _cli("evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "ev"),
                     "--recalibrate", "temperature", "--no-card")
    assert code == 0, out
    assert "shift warning: feature 'mean texture'" in out
    new = tmp_path / "ev" / "recalibrated-run"
    cal = json.loads((new / "artifacts" / "calibration.json").read_text())
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    assert _tree_hash(run) == before  # the original run is untouched
    code, out = _cli("predict", str(new), "--data", str(data), "--out", str(tmp_path / "p.csv"))
    assert code == 0, out
    raw = pd.read_csv(tmp_path / "ev" / "predictions.csv").set_index("id").prob_malignant
    recal = pd.read_csv(tmp_path / "p.csv").set_index("id").prob_malignant
    z = np.log(raw / (1 - raw)) / cal["temperature"]
    assert np.allclose(recal, 1 / (1 + np.exp(-z)), atol=2e-5)


@pytest.mark.slow
def test_a_trained_model_that_fails_one_subgroup_is_flagged_there_only(tmp_path: Path) -> None:
    """Label = x1 > 0 in groups A and C but x2 > 0 in group B (a fifth of the rows): the model learns x1."""
    rng = np.random.default_rng(0)
    n = 1500
    g = rng.choice(["A", "B", "C"], n, p=[0.4, 0.2, 0.4])
    x = rng.normal(size=(n, 3))
    y = np.where(g == "B", x[:, 1] > 0, x[:, 0] > 0)
    df = pd.DataFrame({"pid": [f"p{i}" for i in range(n)], "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2],
                       "group": g, "y": np.where(y, "pos", "neg")})
    data = tmp_path / "planted.csv"
    df.to_csv(data, index=False)
    run = tmp_path / "run"
    code, out = _cli("run", "tabular-risk", "--data", str(data), "--out", str(run), "--set", "data.target=y",
                     "--set", "data.id_column=pid", "--set", "data.features=[x1,x2,x3]", "--set", "model.backbone=linear",
                     "--set", "data.test_fraction=0.4", "--set", "data.subgroup_columns=[group]", "--set",
                     "engine.epochs=5", "--set", "engine.lr=0.05", "--set", "engine.bootstrap=300", "--set", "engine.baseline=none", "--quiet")
    assert code == 0, out[-2000:]
    assert json.loads((run / "summary.json").read_text())["subgroups_flagged"] == {"group": ["B"]}
    code, out = _cli("evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "ev"), "--no-card")
    assert code == 0, out
    col = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["subgroups"]["columns"]["group"]
    assert col["flagged"] == ["B"], col
