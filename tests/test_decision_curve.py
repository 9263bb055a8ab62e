"""Decision-curve analysis: net benefit against dcurves, planted extremes, CIs, the HTML / Markdown views."""

from __future__ import annotations

import numpy as np
import pytest

from medmm.evaluation.decision_curve import (THRESHOLDS, curves_html, curves_markdown, decision_curves,
                                             net_benefit)


@pytest.mark.slow  # importing dcurves (statsmodels, lifelines) takes seconds
def test_net_benefit_equals_dcurves_including_ties() -> None:
    dcurves = pytest.importorskip("dcurves")
    import pandas as pd

    rng = np.random.default_rng(0)
    p = np.round(rng.random(400), 2)  # ties exactly at the thresholds
    y = (rng.random(400) < p).astype(int)
    ref = dcurves.dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"], thresholds=THRESHOLDS)
    model, treat_all = net_benefit(y, p)
    np.testing.assert_allclose(model, ref[ref.model == "p"].net_benefit.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(treat_all, ref[ref.model == "all"].net_benefit.to_numpy(), atol=1e-12)


def test_planted_extremes() -> None:
    y = np.array([1] * 30 + [0] * 70)
    perfect, treat_all = net_benefit(y, y.astype(float))
    np.testing.assert_allclose(perfect, 0.3)  # finds every case, treats no one else
    t = THRESHOLDS
    np.testing.assert_allclose(treat_all, 0.3 - 0.7 * t / (1 - t))
    everyone, _ = net_benefit(y, np.ones(100))  # a model that calls everyone positive is treat-all
    np.testing.assert_allclose(everyone, treat_all)


def test_curves_have_cis_around_the_estimate_and_views_render() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    curves = decision_curves("binary", y, p, ["no", "yes"], n_boot=100, seed=0)
    c = curves["yes"]
    lo, hi = np.asarray(c["model_ci"])
    assert (lo <= np.asarray(c["model"]) + 1e-12).all() and (np.asarray(c["model"]) <= hi + 1e-12).all()
    html = curves_html(curves, "test")
    assert "<img" in html and "net interventions avoided" in html
    assert "| 0.10 |" in curves_markdown(curves, "test")
    ml = decision_curves("multilabel", np.stack([y, 1 - y], 1), np.stack([p, 1 - p], 1), ["a", "b"], n_boot=0)
    assert list(ml) == ["a", "b"] and "model_ci" not in ml["a"]
    assert decision_curves("multiclass", y, np.stack([1 - p, p], 1), ["a", "b"]) is None
