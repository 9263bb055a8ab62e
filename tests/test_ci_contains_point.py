"""Every point estimate medmm reports lies inside its confidence interval (issue #27).

A property test over many random data sets (hypothesis): small and skewed sets, one class only,
ties, over-confident scores (the ECE's upward bootstrap bias put it outside its percentile CI),
for every metric of every problem, the operating-point figures and the multi-label F1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmm import metrics as M
from medmm.evaluation.threshold import f1_at, operating_stats

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _data(problem: str, n: int, k: int, sharp: float, prevalence: float, seed: int) -> dict:
    """A random labelled set; ``sharp`` pushes probabilities to 0 / 1 (over-confident models)."""
    rng = np.random.default_rng(seed)

    def probs(shape: tuple[int, ...]) -> np.ndarray:
        p = rng.random(shape)
        return np.round(p ** sharp / (p ** sharp + (1 - p) ** sharp), 2)  # rounding makes ties

    if problem == "binary":
        return {"y_true": (rng.random(n) < prevalence).astype(int), "y_score": probs((n,))}
    if problem == "multiclass":
        logits = rng.normal(size=(n, k)) * sharp
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return {"y_true": rng.integers(0, k, n) if prevalence > 0.2 else np.zeros(n, int), "y_score": p}
    if problem == "multilabel":
        return {"y_true": (rng.random((n, k)) < prevalence).astype(int), "y_score": probs((n, k))}
    if problem == "regression":
        y = rng.normal(size=n)
        return {"y_true": y, "y_score": y + rng.normal(size=n) * sharp}
    time = rng.integers(1, 20, n).astype(float)
    return {"y_true": None, "y_score": rng.normal(size=n), "time": time, "event": rng.random(n) < prevalence}


@settings(SETTINGS, max_examples=20)
@given(problem=st.sampled_from(M.PROBLEMS), n=st.integers(2, 40), k=st.integers(2, 4),
       sharp=st.floats(0.2, 6.0), prevalence=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_every_metric_lies_inside_its_ci(problem: str, n: int, k: int, sharp: float, prevalence: float,
                                         seed: int) -> None:
    inputs = _data(problem, n, k, sharp, prevalence, seed)
    point = M.compute_metrics(problem, **inputs)
    cis = M.bootstrap_cis(problem, **inputs, n_boot=20, seed=seed % 1000)
    for name in M.METRICS[problem]:
        low, high = cis[name]
        if math.isfinite(point[name]):
            if math.isfinite(low):
                assert low <= point[name] <= high, (name, point[name], low, high)
                d = M.decimals((low, high))  # the figures as printed: rounding keeps it inside too
                shown = [float(f"{v:.{d}f}") for v in (low, point[name], high)]
                assert shown[0] <= shown[1] <= shown[2], (name, shown)
        else:  # an undefined figure never gets an interval
            assert math.isnan(low) and math.isnan(high), name


def test_ece_of_a_calibrated_set_lies_inside_its_ci() -> None:
    """The fault seen in the image demo (ECE 0.0245, CI 0.0246-0.0459): a resample is never better
    calibrated than a set calibrated bin by bin, so the plain percentile interval misses the estimate."""
    s = np.repeat([0.2, 0.6, 0.8], 5)
    y = np.array([1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0])  # 1/5, 3/5, 4/5 positive: ECE 0
    point = M.compute_metrics("binary", y, s)["ece"]
    values = M._bootstrap_values("binary", "ece", M.prepare_inputs("binary", y, s, None, None), 500, 0)
    assert point == 0.0 and np.quantile(values, 0.025) > 0.0  # the percentile interval misses it ...
    low, high = M.bootstrap_ci("binary", "ece", y, s, n_boot=500)
    assert low == 0.0 and high == pytest.approx(np.quantile(values, 0.975))  # ... the reported one holds it


@SETTINGS
@given(n=st.integers(1, 40), prevalence=st.floats(0.0, 1.0), call_rate=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_operating_point_figures_lie_inside_their_ci(n: int, prevalence: float, call_rate: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, call = (rng.random(n) < prevalence).astype(int), (rng.random(n) < call_rate).astype(int)
    out = operating_stats(y, call, n_boot=80, seed=seed % 1000)
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        low, high = out["ci"][name]
        if math.isfinite(out[name]):
            assert low <= out[name] <= high, (name, out[name], low, high)
        else:
            assert math.isnan(low) and math.isnan(high)


@SETTINGS
@given(n=st.integers(1, 30), k=st.integers(1, 4), prevalence=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_multilabel_f1_at_the_operating_point_lies_inside_its_ci(n: int, k: int, prevalence: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s = (rng.random((n, k)) < prevalence).astype(int), rng.random((n, k))
    op = {"classes": [f"l{j}" for j in range(k)], "thresholds": {f"l{j}": float(rng.random()) for j in range(k)}}
    out = f1_at(y, s, op, n_boot=60, seed=seed % 1000)
    for name in ("micro_f1", "macro_f1"):
        low, high = out["ci"][name]
        if math.isfinite(out[name]):
            assert low <= out[name] <= high, (name, out[name], low, high)


def test_interval_rules() -> None:
    assert M.interval([0.3, 0.4, 0.5], 0.1) == (0.1, pytest.approx(0.495))  # widened down to the point
    assert all(math.isnan(v) for v in M.interval([0.3, 0.4], float("nan")))  # no point, no interval
    assert all(math.isnan(v) for v in M.interval([float("nan")], 0.2))  # no finite resample
    assert M.decimals((0.80, 0.99)) == 2 and M.decimals((0.91, 0.915)) == 4 and M.decimals(None) == 4
    assert M.format_estimate(0.91098, (0.8, 0.99)) == "0.91 (0.80-0.99)"
    assert M.format_estimate(float("nan"), (0.1, 0.2), undefined="n/a (no positives)") == "n/a (no positives)"
