"""Multi-label operating point (#14): one threshold per label, chosen on val, used for the calls.

A planted problem where the best thresholds differ per label (a rare label whose scores all sit
far below 0.5) is checked against a brute-force search over each label's sklearn ROC curve.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medmm.evaluation.threshold import choose_operating_point, decisions, f1_at, stats_at
from medmm.predictions import write_predictions

NAMES = ["common", "middle", "rare"]


def _planted(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores: ``common`` separates near 0.5, ``middle`` near 0.7, ``rare`` (5%) near 0.08."""
    rng = np.random.default_rng(seed)
    prev, centre, spread = [0.5, 0.3, 0.05], [0.5, 0.7, 0.08], [0.15, 0.1, 0.03]
    y = np.stack([rng.random(n) < p for p in prev], 1).astype(int)
    s = np.stack([np.clip(c + (2 * y[:, k] - 1) * sp + rng.normal(0, sp, n), 0, 1)
                  for k, (c, sp) in enumerate(zip(centre, spread))], 1)
    return y, s


def _brute_youden(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the largest sensitivity + specificity - 1 (highest on ties), by trying every score."""
    from sklearn.metrics import roc_curve

    _, _, thr = roc_curve(y, p, drop_intermediate=False)
    best, best_t = -np.inf, None
    for t in sorted(set(p.tolist()), reverse=True):
        call = p >= t
        j = call[y == 1].mean() - call[y == 0].mean()
        if j > best + 1e-12:
            best, best_t = j, t
    assert best_t in thr  # every candidate is one of sklearn's ROC thresholds
    return float(best_t)


def test_per_label_thresholds_match_brute_force_and_differ() -> None:
    y, s = _planted()
    op = choose_operating_point("multilabel", y, s, NAMES, rule="youden", target=0.9, fixed=0.5, chosen_on="val")
    assert op["classes"] == NAMES and set(op["thresholds"]) == set(NAMES)
    for k, name in enumerate(NAMES):
        assert op["thresholds"][name] == pytest.approx(_brute_youden(y[:, k], s[:, k]))
    thr = op["thresholds"]
    assert thr["rare"] < 0.2 and 0.35 < thr["common"] < 0.65 < thr["middle"]  # far from 0.5 where planted so


def test_target_sensitivity_per_label() -> None:
    y, s = _planted(seed=1)
    op = choose_operating_point("multilabel", y, s, NAMES, rule="target_sensitivity", target=0.9, fixed=0.5,
                                chosen_on="val")
    for k, name in enumerate(NAMES):
        t = op["thresholds"][name]
        pos = s[y[:, k] == 1, k]
        assert (pos >= t).mean() >= 0.9  # the target is kept
        higher = np.unique(s[:, k])[np.unique(s[:, k]) > t]
        assert not higher.size or (pos >= higher.min()).mean() < 0.9  # and it is the highest such threshold


def test_decisions_stats_and_f1_at_the_operating_point() -> None:
    from sklearn.metrics import f1_score

    yv, sv = _planted(seed=2)
    yt, st = _planted(seed=3)
    op = choose_operating_point("multilabel", yv, sv, NAMES, rule="youden", target=0.9, fixed=0.5, chosen_on="val")
    calls = decisions("multilabel", st, op)
    thr = np.asarray([op["thresholds"][n] for n in NAMES])
    assert np.array_equal(calls, (st >= thr).astype(int))
    stats = stats_at("multilabel", yt, st, op, n_boot=0, seed=0)
    assert stats["rare"]["tp"] == int(((yt[:, 2] == 1) & (calls[:, 2] == 1)).sum())
    f1 = f1_at(yt, st, op, n_boot=200, seed=0)
    assert f1["micro_f1"] == pytest.approx(f1_score(yt, calls, average="micro"))
    assert f1["macro_f1"] == pytest.approx(f1_score(yt, calls, average="macro"))
    assert f1["ci"]["macro_f1"][0] <= f1["macro_f1"] <= f1["ci"]["macro_f1"][1]
    at_half = f1_score(yt, (st >= 0.5).astype(int), average="macro", zero_division=0)
    assert f1["macro_f1"] > at_half + 0.15  # the rare label is never called at 0.5


def test_predictions_csv_decision_columns_use_the_per_label_thresholds(tmp_path: Path) -> None:
    y, s = _planted(n=80, seed=4)
    op = choose_operating_point("multilabel", y, s, NAMES, rule="youden", target=0.9, fixed=0.5, chosen_on="val")
    ev = SimpleNamespace(units=[f"u{i}" for i in range(len(y))], scores=s, targets=y.astype(float), loss=0.0)
    pred = pd.read_csv(write_predictions(tmp_path / "p.csv", ev, "multilabel", NAMES, operating_point=op))
    for k, name in enumerate(NAMES):
        assert pred[f"decision_{name}"].tolist() == (s[:, k] >= op["thresholds"][name]).astype(int).tolist()
    assert pred["decision_rare"].sum() > 0 and not (pred["prob_rare"] >= 0.5).any()


@pytest.mark.slow
def test_multilabel_run_stores_thresholds_and_uses_them(tmp_path: Path) -> None:
    from tests.conftest import cli
    from tests.test_text_cls import FAST, _ok, note

    rng = random.Random(3)
    names = ["cardiomegaly", "effusion", "pneumonia"]
    rows = []
    for i in range(120):
        labels = sorted(rng.sample(names, rng.randint(1, 2)))
        rows.append({"text": note(rng, labels), "findings": ";".join(labels)})
    pd.DataFrame(rows).to_csv(tmp_path / "ml.csv", index=False)
    run = tmp_path / "ml"
    proc = cli("run", "text-cls", "--data", str(tmp_path / "ml.csv"), "--out", str(run), *FAST,
               "--set", "model.backbone=bigru", "--set", "data.label_column=findings",
               "--set", "data.label_delimiter=;", "--set", "model.vocab_min_freq=1",
               "--set", "engine.lr=0.003", "--set", "engine.epochs=1", "--set", "engine.min_steps=0",
               "--set", "eval.threshold=target_sensitivity")
    _ok(proc)
    op = json.loads((run / "artifacts" / "operating_point.json").read_text())
    assert op["problem"] == "multilabel" and op["rule"] == "target_sensitivity" and set(op["thresholds"]) == set(names)
    pred = pd.read_csv(run / "predictions.csv")
    for n in names:
        assert pred[f"decision_{n}"].tolist() == (pred[f"prob_{n}"] >= op["thresholds"][n] - 5e-7).astype(int).tolist()
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["metrics"])[0] == "auroc"  # macro AUROC is the headline
    assert set(summary["operating_point"]) == set(names) and "macro_f1" in summary["operating_point_f1"]
    assert "at the per-label thresholds chosen on val" in proc.stdout
    proc = cli("predict", str(run), "--data", str(tmp_path / "ml.csv"), "--out", str(tmp_path / "p.csv"))
    _ok(proc)
    assert [c for c in pd.read_csv(tmp_path / "p.csv").columns if c.startswith("decision_")] == \
        [f"decision_{n}" for n in names]
