"""The classic baseline beside every run (medmm.classic) and backbone recipes (medmm.recipes)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmm.classic import Comparison, fit_baseline, load_baseline
from medmm.task import BaselineInputs
from tests.conftest import cli

WORDS = {"pos": ["effusion", "pleural fluid", "blunted angle"], "neg": ["clear lungs", "normal heart", "no acute"]}


def _docs(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    y = np.array([i % 2 for i in range(n)])
    filler = ["portable view", "comparison made", "stable lines", "patient rotated"]
    texts = [" ".join(rng.sample(filler, 2) + [rng.choice(WORDS["pos" if t else "neg"])]) for t in y]
    return texts, y


def _text_inputs(n: int, seed: int) -> BaselineInputs:
    texts, y = _docs(n, seed)
    return BaselineInputs([f"d{seed}-{i}" for i in range(n)], y, text=texts)


def test_text_baseline_matches_sklearn_and_reloads_without_pickle(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, val, test = _text_inputs(80, 0), _text_inputs(30, 1), _text_inputs(30, 2)
    base = fit_baseline("binary", ["neg", "pos"], train, val)
    p = base.predict(test)
    c = base.params["strength"]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=50_000)
    ref = LogisticRegression(C=c, max_iter=2000).fit(vec.fit_transform(train.text), train.targets)
    np.testing.assert_allclose(p, ref.predict_proba(vec.transform(test.text))[:, 1], atol=1e-5)
    assert ((p >= 0.5) == test.targets).mean() == 1.0  # the planted words separate the classes
    base.save(tmp_path / "b")
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == ["baseline.json", "baseline.safetensors"]
    np.testing.assert_allclose(load_baseline(tmp_path / "b").predict(test), p, atol=1e-6)


def test_multilabel_constant_label_and_missing_modality_get_the_prior() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.stack([(x[:, 0] > 0), np.zeros(60)], axis=1).astype(np.float32)  # label 2 never positive
    present = np.ones(60, bool)
    present[:5] = False
    inp = BaselineInputs([str(i) for i in range(60)], y, tabular=x, present={"tabular": present})
    base = fit_baseline("multilabel", ["a", "b"], inp, None)
    s = base.predict(inp)
    assert s.shape == (60, 2) and np.all(s[:, 1] < 0.01)
    np.testing.assert_allclose(s[:5], np.tile(y.mean(axis=0), (5, 1)), atol=1e-6)  # rows without it
    assert np.mean((s[5:, 0] >= 0.5) == y[5:, 0]) > 0.9


def test_cox_baseline_ranks_like_lifelines() -> None:
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    t = rng.exponential(np.exp(-(1.0 * x[:, 0] - 0.5 * x[:, 1])))
    e = (rng.random(200) < 0.8).astype(float)
    inp = BaselineInputs([str(i) for i in range(200)], np.stack([t, e], 1), tabular=x)
    base = fit_baseline("survival", None, inp, None)
    risk = base.predict(inp)
    df = pd.DataFrame(x, columns=["a", "b"]).assign(t=t, e=e)
    ref = CoxPHFitter(penalizer=base.params["strength"]).fit(df, "t", "e")
    ours, theirs = concordance_index(t, -risk, e), concordance_index(t, -ref.predict_partial_hazard(df), e)
    assert abs(ours - theirs) < 1e-6 and ours > 0.65


@pytest.mark.parametrize(("mode", "model", "base", "warns"), [
    ("max", 0.90, 0.95, True), ("max", 0.95, 0.95, True), ("max", 0.96, 0.95, False),
    ("min", 40.0, 42.0, False), ("min", 44.0, 42.0, True)])
def test_warning_fires_when_the_model_is_not_better(mode: str, model: float, base: float, warns: bool) -> None:
    cmp = Comparison("x", "test", "m", mode, {"m": model}, {"m": base}, {}, {}, None)
    assert (cmp.warning() is not None) is warns
    if warns:
        assert "the baseline is as good; consider it" in cmp.warning()


def test_backbone_recipe_applies_unless_the_user_set_the_key(tmp_path: Path) -> None:
    from medmm.plugins import get_registry
    from medmm.recipes import annotated_yaml
    from medmm.runner import resolved_config

    spec = get_registry().get("task", "text-cls")
    cfg = resolved_config(spec, None, ["model.backbone=textcnn"])
    assert cfg["engine"]["lr"] == 0.001 and cfg["engine"]["epochs"] == 10  # textcnn's recipe, not the YAML's
    assert "lr: 0.001  # recipe of backbone textcnn" in annotated_yaml(cfg)
    cfg = resolved_config(spec, None, ["model.backbone=textcnn", "engine.lr=0.02"])
    assert cfg["engine"]["lr"] == 0.02 and "engine.lr" not in cfg.provenance  # --set wins
    user = tmp_path / "u.yaml"
    user.write_text("engine: {epochs: 3}\n")
    cfg = resolved_config(spec, user, ["model.backbone=textcnn"])
    assert cfg["engine"]["epochs"] == 3 and cfg["engine"]["lr"] == 0.001  # so does the user's file
    cfg = resolved_config(spec, None, ["engine.lr=3e-5"])  # minilm: the user's lr keeps the encoder scale 1.0
    assert cfg["engine"]["lr"] == 3e-5 and cfg["model"]["encoder_lr_scale"] == 1.0


def test_min_steps_raises_epochs_only_when_the_user_did_not_set_them() -> None:
    from medmm.config import as_config
    from medmm.recipes import apply_min_steps

    cfg = as_config({"engine": {"epochs": 4, "min_steps": 300}})
    cfg.user = set()
    assert apply_min_steps(cfg, 20) == 15 and cfg["engine"]["epochs"] == 15 and "raised from 4" in cfg.provenance["engine.epochs"]
    cfg = as_config({"engine": {"epochs": 4, "min_steps": 300}})
    cfg.user = {"engine.epochs"}
    assert apply_min_steps(cfg, 20) is None and cfg["engine"]["epochs"] == 4
    assert apply_min_steps({"engine": {"epochs": 4, "min_steps": 300}}, 20) is None  # a resumed run's plain config


# --------------------------------------------------------------------------- end to end (CLI)


@pytest.mark.slow
def test_crippled_model_is_flagged_and_baseline_is_everywhere(tmp_path: Path) -> None:
    """lr=0: the model stays at its random init; the run says the baseline is as good, everywhere."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.insert(0, "pid", [f"p{i}" for i in range(len(data))])
    data.to_csv(tmp_path / "bc.csv", index=False)
    run = tmp_path / "run"
    out = cli("run", "tabular-risk", "--data", str(tmp_path / "bc.csv"), "--out", str(run), "--quiet",
              "--set", "data.target=target", "--set", "data.id_column=pid", "--set", "engine.lr=0",
              "--set", "engine.epochs=2", "--set", "engine.device=cpu", "--set", "engine.bootstrap=100")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "classic baseline on the same split: features + logistic regression" in out.stdout
    assert "WARNING: the model is not better than the classic baseline" in out.stdout
    assert "the baseline is as good; consider it" in out.stdout
    summary = json.loads((run / "summary.json").read_text())["baseline"]
    assert summary["baseline"] > 0.97 and summary["model_better"] is False and summary["diff_ci"][1] < 0
    assert "Model vs classic baseline" in (run / "report.html").read_text()
    card = (run / "model_card.md").read_text()
    assert "## Comparison with the classic baseline" in card and "consider it" in card
    base = pd.read_csv(run / "baseline_predictions.csv")
    model = pd.read_csv(run / "predictions.csv")
    assert sorted(base["id"]) == sorted(model["id"])  # same test units
    pred = tmp_path / "p.csv"
    out = cli("predict", str(run), "--data", str(tmp_path / "bc.csv"), "--out", str(pred), "--baseline")
    assert out.returncode == 0, out.stderr[-2000:]
    again = pd.read_csv(pred).set_index("id").loc[base["id"]]
    np.testing.assert_allclose(again.iloc[:, 0].to_numpy(), base.set_index("id").iloc[:, 0].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_text_run_shows_tfidf_baseline_and_recipe(tmp_path: Path) -> None:
    from tests.test_text_cls import synthetic_notes

    synthetic_notes(90, ["normal", "effusion", "pneumonia"]).to_csv(tmp_path / "notes.csv", index=False)
    run = tmp_path / "run"
    out = cli("run", "text-cls", "--data", str(tmp_path / "notes.csv"), "--out", str(run),
              "--set", "model.backbone=textcnn", "--set", "engine.epochs=2", "--set", "engine.device=cpu",
              "--set", "engine.bootstrap=50", "--set", "data.id_column=note_id", "--set", "data.group_column=patient")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "engine.lr=0.001 (recipe of backbone textcnn)" in out.stderr
    config = (run / "config.yaml").read_text()
    assert "lr: 0.001  # recipe of backbone textcnn" in config and "epochs: 2\n" in config
    assert "TF-IDF 1-2-grams + logistic regression" in out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["baseline"]["headline"] == "macro_f1" and summary["baseline"]["baseline"] > 0.9


def test_multilabel_pos_weight_up_weights_rare_labels() -> None:
    import torch

    from medmm.engine.losses import multilabel_pos_weight, problem_loss

    y = np.zeros((100, 3), np.float32)
    y[:50, 0], y[:5, 1], y[:1, 2] = 1, 1, 1  # common, rare, very rare
    w = multilabel_pos_weight(y)
    np.testing.assert_allclose(w, [1.0, 10.0, 10.0])  # 95/5 = 19 and 99/1 clipped at 10
    out = torch.zeros(2, 3)
    t = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    plain, _ = problem_loss("multilabel", out, t)
    weighted, _ = problem_loss("multilabel", out, t, class_weights=torch.tensor(w))
    assert float(weighted) > float(plain)


def test_a_baseline_fitted_before_training_gives_the_same_comparison(tmp_path: Path) -> None:
    """medmm.classic.prefit_baseline (run before training, so the ETA knows its cost) is the same fit as the
    one at the finish: the same numbers; a failed prefit is reported at the finish as a skipped baseline."""
    from types import SimpleNamespace

    from medmm.classic import baseline_for_run, prefit_baseline, run_baseline
    from medmm.engine.trainer import EvalOutput

    splits = {"train": _text_inputs(80, 0), "val": _text_inputs(30, 1), "test": _text_inputs(30, 2)}
    task = SimpleNamespace(problem="binary", label_names=["neg", "pos"], baseline_inputs=splits.get)
    test = splits["test"]
    ev = EvalOutput(list(test.units), np.linspace(0.1, 0.9, 30), np.asarray(test.targets, float), 0.5)
    cfg = SimpleNamespace(engine=SimpleNamespace(baseline="auto", bootstrap=50), seed=0)
    prefit = prefit_baseline(task, cfg, "test")
    assert prefit is not None and prefit.base is not None and prefit.error is None
    args = (task, "test", ev, {"auroc": 0.7}, {}, tmp_path)
    late = run_baseline(*args, n_boot=50, seed=0).to_json()
    early = run_baseline(*args, n_boot=50, seed=0, prefit=prefit).to_json()
    assert early == late
    cfg.engine.baseline = "none"
    assert prefit_baseline(task, cfg, "test") is None
    cfg.engine.baseline = "auto"
    broken = SimpleNamespace(problem="binary", label_names=["neg", "pos"],
                             baseline_inputs=lambda s: BaselineInputs(["a", "b"], np.array([0, 1]), text=["", ""]))
    failed = prefit_baseline(broken, cfg, "test")
    assert failed is not None and failed.base is None and "TF-IDF" in str(failed.error)
    out = baseline_for_run(broken, cfg, ev, "test", {"auroc": 0.7}, {}, tmp_path, prefit=failed)
    assert "TF-IDF" in out.summary["baseline"]["skipped"]


@pytest.mark.parametrize("problem,k", [("binary", 2), ("multiclass", 3), ("regression", 1)])
def test_baseline_predicts_in_blocks_of_rows_bitwise_as_one_pass(monkeypatch: pytest.MonkeyPatch, problem: str,
                                                                  k: int) -> None:
    from medmm import classic

    rng = np.random.default_rng(7)
    x = rng.normal(size=(3001, 13)).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    y = {"binary": (np.nan_to_num(x[:, 0]) > 0).astype(int),
         "multiclass": (np.nan_to_num(x[:, 0]) > 0).astype(int) + (np.nan_to_num(x[:, 1]) > 1),
         "regression": np.nan_to_num(x[:, 0]) * 2.0 + rng.normal(size=len(x))}[problem]
    units = [f"r{i}" for i in range(len(x))]
    base = fit_baseline(problem, ["a", "b", "c"][:k] if k > 1 else None, BaselineInputs(units[:2000], y[:2000],
                        tabular=x[:2000]), None)
    present = np.ones(len(x), bool)
    present[rng.random(len(x)) < 0.1] = False  # rows without the modality get the prior, blocks skip them
    test = BaselineInputs(units, None, tabular=x, present={"tabular": present})
    whole = BaselineInputs(units, None, tabular=x)
    monkeypatch.setattr(classic, "PREDICT_BLOCK", 10**9)
    one, one_whole = base.predict(test), base.predict(whole)
    sizes: list[int] = []
    dense = classic.Baseline._dense
    monkeypatch.setattr(classic.Baseline, "_dense", lambda self, raw: sizes.append(len(raw)) or dense(self, raw))
    for block in (64, 1000, 1024, 3000):
        monkeypatch.setattr(classic, "PREDICT_BLOCK", block)
        sizes.clear()
        assert base.predict(test).tobytes() == one.tobytes()
        assert max(sizes) <= block and sum(sizes) == present.sum()  # never the whole input at once
        assert base.predict(whole).tobytes() == one_whole.tobytes()
    assert np.array_equal(one[~present], np.broadcast_to(one[~present][:1], one[~present].shape))


@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression", "survival", "multilabel"])
def test_fit_sample_is_stratified_seeded_and_none_up_to_the_cap(problem: str) -> None:
    from medmm.classic import fit_sample

    rng = np.random.default_rng(3)
    n = 1000
    y = {"binary": (rng.random(n) < 0.1).astype(int), "multiclass": rng.choice(3, n, p=[0.7, 0.2, 0.1]),
         "regression": rng.normal(size=n), "survival": np.c_[rng.exponential(size=n), rng.random(n) < 0.3],
         "multilabel": (rng.random((n, 2)) < [0.5, 0.1]).astype(int)}[problem]
    assert fit_sample(problem, y, n) is None and fit_sample(problem, y, n + 1) is None
    idx = fit_sample(problem, y, 250)
    assert idx is not None and len(idx) == 250 == len(set(idx.tolist())) and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, fit_sample(problem, y.copy(), 250))  # the same rows at every call
    assert not np.array_equal(idx, fit_sample(problem, y, 250, seed=1))
    if problem in ("binary", "multiclass"):
        assert np.all(np.abs(np.bincount(y[idx], minlength=3) - np.bincount(y, minlength=3) / 4) <= 0.5)
    elif problem == "survival":
        assert abs(int(y[idx, 1].sum()) - y[:, 1].sum() / 4) <= 1
    elif problem == "multilabel":
        assert np.all(np.abs(y[idx].sum(axis=0) - y.sum(axis=0) / 4) <= 2)
    else:
        assert np.all(np.abs(np.histogram(y[idx], np.quantile(y, np.linspace(0, 1, 11)))[0] - 25) <= 1)


def test_tabular_baseline_above_the_cap_fits_a_stratified_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm import classic

    rng = np.random.default_rng(11)
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=1000) > 1).astype(int)
    train = BaselineInputs([f"r{i}" for i in range(1000)], y, tabular=x)
    val = BaselineInputs([f"v{i}" for i in range(200)], (x[:200, 0] > 1).astype(int), tabular=x[:200] + 0.1)
    uncapped = fit_baseline("binary", ["no", "yes"], train, val)
    monkeypatch.setattr(classic, "FIT_ROWS", 1000)  # at the cap: nothing changes, bitwise
    at_cap = fit_baseline("binary", ["no", "yes"], train, val)
    assert at_cap.description == uncapped.description and "sample" not in at_cap.description
    assert all(at_cap.arrays[k].tobytes() == uncapped.arrays[k].tobytes() for k in uncapped.arrays)
    monkeypatch.setattr(classic, "FIT_ROWS", 300)
    a, b = fit_baseline("binary", ["no", "yes"], train, val), fit_baseline("binary", ["no", "yes"], train, val)
    assert a.description.endswith("fitted on a stratified sample of 300 of 1,000 training rows")
    assert all(a.arrays[k].tobytes() == b.arrays[k].tobytes() for k in a.arrays)  # deterministic
    idx = classic.fit_sample("binary", y, 300)
    assert idx is not None and y[idx].sum() == round(y.sum() * 0.3)
    monkeypatch.setattr(classic, "FIT_ROWS", 10**9)
    direct = fit_baseline("binary", ["no", "yes"], BaselineInputs([train.units[i] for i in idx], y[idx],
                          tabular=x[idx]), val)
    for k in ("coef", "intercept", "mean", "scale"):  # the fit of exactly those rows
        assert a.arrays[k].tobytes() == direct.arrays[k].tobytes()
    assert float(a.arrays["prior"]) == pytest.approx(y.mean())  # the prior still from every training row
