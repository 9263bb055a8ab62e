"""medmm.metrics against scikit-learn, lifelines and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from medmm import metrics as M

RNG = np.random.default_rng(0)


def _binary(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1).round(2)  # rounding makes ties
    return y, score


def _multiclass(n: int = 300, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits)
    return y, prob / prob.sum(axis=1, keepdims=True)


def _multilabel(n: int = 200, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, k))
    return y, np.clip(0.3 * y + 0.7 * rng.random((n, k)), 0, 1)


def _survival(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = np.ceil(rng.exponential(np.exp(-risk)) * 10)  # integer times: many ties
    event = rng.random(n) < 0.7
    return time, event, risk + rng.normal(size=n)


# --------------------------------------------------------------------------- point values


def test_binary_matches_sklearn() -> None:
    y, s = _binary()
    got = M.compute_metrics("binary", y, s)
    pred = (s >= 0.5).astype(int)
    assert list(got) == list(M.METRICS["binary"])
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y, s))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, s))
    assert got["ece"] == pytest.approx(M.expected_calibration_error(y, s))


def test_binary_accepts_two_column_probabilities() -> None:
    y, s = _binary()
    two = np.column_stack([1 - s, s])
    assert M.compute_metrics("binary", y, two) == M.compute_metrics("binary", y, s)


def test_multiclass_matches_sklearn() -> None:
    y, p = _multiclass()
    got = M.compute_metrics("multiclass", y, p)
    onehot = np.eye(p.shape[1])[y]
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(onehot, p))
    assert got["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean())


def test_multiclass_macro_skips_a_class_absent_from_y_true() -> None:
    y, p = _multiclass(k=4)
    keep = y != 3
    y, p = y[keep], p[keep]
    got = M.compute_metrics("multiclass", y, p)
    per_class = [skm.roc_auc_score(y == k, p[:, k]) for k in range(3)]
    assert got["auroc"] == pytest.approx(np.mean(per_class))


def test_multilabel_matches_sklearn_and_skips_single_class_labels() -> None:
    y, p = _multilabel()
    y[:, 4] = 0  # label 4 never positive: left out of the AUROC / AUPRC macro average
    got = M.compute_metrics("multilabel", y, p)
    pred = (p >= 0.5).astype(int)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y[:, :4], p[:, :4]))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y[:, :4], p[:, :4]))
    assert got["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", zero_division=np.nan))
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


def test_regression_matches_sklearn() -> None:
    y = RNG.normal(size=100)
    pred = y + RNG.normal(size=100) * 0.5
    got = M.compute_metrics("regression", y, pred)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))


@pytest.mark.parametrize("risk_column", ["prio", "age", "fin"])
def test_c_index_matches_lifelines_on_rossi(risk_column: str) -> None:
    lifelines = pytest.importorskip("lifelines")
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    risk = rossi[risk_column].to_numpy(float)  # prio and fin: many tied risks
    expected = lifelines.utils.concordance_index(rossi.week, -risk, rossi.arrest)
    assert M.harrell_c_index(rossi.week, rossi.arrest, risk) == pytest.approx(expected, abs=1e-12)
    got = M.compute_metrics("survival", None, risk, time=rossi.week, event=rossi.arrest)
    assert got["c_index"] == pytest.approx(expected, abs=1e-12)


def test_c_index_hand_computed_ties() -> None:
    time = [1, 2, 2, 3]
    event = [1, 1, 0, 0]
    risk = [3, 2, 2, 1]
    # comparable (earlier event first): (0,1) (0,2) (0,3) (1,2: tied time, 2 censored) (1,3)
    # concordant: (0,1) (0,2) (0,3) (1,3); tied risk: (1,2) -> (4 + 0.5) / 5
    assert M.harrell_c_index(time, event, risk) == pytest.approx(0.9)
    assert M.harrell_c_index(time, event, [-r for r in risk]) == pytest.approx(0.1)


def test_c_index_against_lifelines_on_synthetic_ties() -> None:
    lifelines = pytest.importorskip("lifelines")
    time, event, risk = _survival(n=400)
    risk = risk.round(1)
    expected = lifelines.utils.concordance_index(time, -risk, event)
    assert M.harrell_c_index(time, event, risk) == pytest.approx(expected, abs=1e-12)


def _brute_force_counts(t: np.ndarray, e: np.ndarray, r: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Harrell's pair rules written out pair by pair (the O(N^2) definition)."""
    num = den = 0.0
    for i in range(t.size):
        for j in range(t.size):
            if e[i] and (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0)
    return num, den


@pytest.mark.parametrize("n", [1, 2, 7, 33, 64, 65])
def test_c_index_counts_equal_the_pairwise_definition_with_weights(n: int) -> None:
    rng = np.random.default_rng(n)
    t = rng.integers(0, 6, n).astype(float)  # many tied times and tied risks
    e = rng.random(n) < 0.5
    r = rng.integers(0, 4, n).astype(float)
    w = rng.poisson(1.0, size=(3, n)).astype(float)  # bootstrap multiplicities
    num, den = M._concordance_counts(t, e, r, w)
    for k in range(3):
        ref_num, ref_den = _brute_force_counts(t, e, r, w[k])
        assert (num[k], den[k]) == pytest.approx((ref_num, ref_den))


def test_c_index_scores_a_100k_survival_set() -> None:
    """100k subjects: equal to lifelines' O(n log n) value, in bounded memory (O(N^2) pairs would
    need 10^10 cells); speed is measured in bench/bootstrap_vs_scipy.py, never asserted here."""
    import tracemalloc

    lifelines_utils = pytest.importorskip("lifelines.utils")
    rng = np.random.default_rng(1)
    n = 100_000
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk))  # higher risk -> earlier event: C-index well above 0.5
    event = rng.random(n) < 0.7
    tracemalloc.start()
    c = M.harrell_c_index(time, event, risk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6
    assert 0.65 < c < 0.8
    assert c == pytest.approx(lifelines_utils.concordance_index(time, -risk, event), abs=1e-9)
    assert M.harrell_c_index(time, event, -risk) == pytest.approx(1 - c)


def test_ece_hand_computed() -> None:
    # bins of width 0.1: {0.1, 0.1} has frequency 1/2, {0.9, 0.9} has frequency 1
    prob, y = [0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]
    assert M.expected_calibration_error(y, prob, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    # top label: confidences 0.8 (right), 0.6 (wrong), 0.7 (right), each alone in its bin
    prob2 = [[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]
    expected = (0.2 + 0.6 + 0.3) / 3
    assert M.expected_calibration_error([0, 1, 1], prob2, n_bins=10) == pytest.approx(expected)
    assert M.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_reliability_curve_matches_sklearn() -> None:
    y, s = _binary(n=500)
    mean_pred, observed, counts = M.reliability_curve(y, s, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10)
    np.testing.assert_allclose(mean_pred, prob_pred)
    np.testing.assert_allclose(observed, prob_true)
    assert counts.sum() == len(y)
    empty = M.reliability_curve(np.zeros(0, dtype=int), np.zeros(0))  # no rows: no bins, as before sklearn
    assert [len(a) for a in empty] == [0, 0, 0]


# --------------------------------------------------------------------------- undefined


def _no_warnings(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_single_class_gives_nan_without_warnings() -> None:
    got = _no_warnings(M.compute_metrics, "binary", [1, 1, 1], [0.2, 0.6, 0.9])
    assert math.isnan(got["auroc"]) and math.isnan(got["auprc"])
    assert got["accuracy"] == pytest.approx(2 / 3)
    got = _no_warnings(M.compute_metrics, "binary", [0, 0], [0.1, 0.2])
    assert math.isnan(got["f1"])  # no positive in truth nor prediction
    got = _no_warnings(M.compute_metrics, "multilabel", [[0, 1], [0, 1]], [[0.2, 0.7], [0.4, 0.1]])
    assert math.isnan(got["auroc"])


@pytest.mark.parametrize("problem", M.PROBLEMS)
def test_empty_input_is_all_nan(problem: str) -> None:
    shapes = {"multiclass": (0, 3), "multilabel": (0, 3)}
    y = np.zeros(shapes.get(problem, (0,)))
    s = np.zeros(shapes.get(problem, (0,)))
    extra = {"time": [], "event": []} if problem == "survival" else {}
    got = _no_warnings(M.compute_metrics, problem, y[:, 0] if problem == "multiclass" else y, s,
                       **extra)
    assert set(got) == set(M.METRICS[problem])
    assert all(math.isnan(v) for v in got.values())


def test_other_undefined_cases() -> None:
    assert math.isnan(M.compute_metrics("regression", [1.0, 1.0], [1.0, 2.0])["r2"])
    assert math.isnan(M.harrell_c_index([1, 2], [0, 0], [0.1, 0.2]))  # nothing comparable
    nan_scores = M.compute_metrics("binary", [0, 1], [np.nan, 0.3])
    assert all(math.isnan(v) for v in nan_scores.values())
    logits = M.compute_metrics("binary", [0, 1], [-2.0, 3.0])  # not probabilities
    assert logits["auroc"] == 1.0 and math.isnan(logits["brier"]) and math.isnan(logits["ece"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown problem"):
        M.compute_metrics("ranking", [0], [0.1])
    with pytest.raises(ValueError, match="length mismatch"):
        M.compute_metrics("binary", [0, 1], [0.1])
    with pytest.raises(ValueError, match="0/1"):
        M.compute_metrics("binary", [0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be in"):
        M.compute_metrics("multiclass", [0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="time= and event="):
        M.compute_metrics("survival", None, [0.1])
    with pytest.raises(ValueError, match="no metric"):
        M.bootstrap_ci("binary", "c_index", [0, 1], [0.1, 0.9])


def test_headline_and_modes() -> None:
    assert M.headline("binary") == ("auroc", "max")
    assert M.headline("regression") == ("mae", "min")
    for problem in M.PROBLEMS:
        name, mode = M.headline(problem)
        assert name in M.METRICS[problem]
        assert mode == M.metric_mode(name)
    assert M.metric_mode("loss") == "min" and M.metric_mode("brier") == "min"
    with pytest.raises(ValueError):
        M.headline("nope")


# --------------------------------------------------------------------------- bootstrap


def _inputs(problem: str, n: int = 120, seed: int = 0) -> dict:
    if problem == "binary":
        y, s = _binary(n, seed)
    elif problem == "multiclass":
        y, s = _multiclass(n, seed=seed)
    elif problem == "multilabel":
        y, s = _multilabel(n, seed=seed)
    elif problem == "regression":
        rng = np.random.default_rng(seed)
        y = rng.normal(size=n)
        s = y + rng.normal(size=n)
    else:
        time, event, s = _survival(n, seed)
        return {"y_true": None, "y_score": s, "time": time, "event": event}
    return {"y_true": y, "y_score": s}


@pytest.mark.parametrize("problem", M.PROBLEMS)
def test_bootstrap_ci_brackets_the_estimate(problem: str) -> None:
    inputs = _inputs(problem)
    point = M.compute_metrics(problem, **inputs)
    cis = M.bootstrap_cis(problem, **inputs, n_boot=300)
    assert set(cis) == set(M.METRICS[problem])
    for name, (low, high) in cis.items():
        assert low <= point[name] <= high, name
        assert low < high, name


@pytest.mark.parametrize(("problem", "metric"), [
    (p, m) for p in M.PROBLEMS for m in M.METRICS[p] if m in M._BATCHED[p]])
def test_batched_bootstrap_equals_resampling_loop(
    problem: str, metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _inputs(problem, n=60)
    data = M.prepare_inputs(problem, inputs["y_true"], inputs["y_score"], inputs.get("time"),
                      inputs.get("event"))
    with M._quiet():
        fast = M._bootstrap_values(problem, metric, data, 30, seed=3)
        monkeypatch.setitem(M._BATCHED, problem, {})
        slow = M._bootstrap_values(problem, metric, data, 30, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_bootstrap_narrows_with_more_data_and_is_seeded() -> None:
    small = M.bootstrap_ci("binary", "auroc", *_binary(100).__iter__(), n_boot=400)
    large = M.bootstrap_ci("binary", "auroc", *_binary(2000).__iter__(), n_boot=400)
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])
    y, s = _binary(100)
    assert M.bootstrap_ci("binary", "auroc", y, s, seed=1) == M.bootstrap_ci(
        "binary", "auroc", y, s, seed=1)
    assert M.bootstrap_ci("binary", "auroc", y, s, seed=1) != M.bootstrap_ci(
        "binary", "auroc", y, s, seed=2)


def test_bootstrap_skips_undefined_resamples() -> None:
    y = np.zeros(30, dtype=int)
    y[0] = 1  # a resample holds the positive with probability 1 - (29/30)^30 ~ 0.64
    s = np.linspace(0, 1, 30)
    low, high = _no_warnings(M.bootstrap_ci, "binary", "auroc", y, s, n_boot=200)
    assert 0.0 <= low <= high <= 1.0
    nan_ci = _no_warnings(M.bootstrap_ci, "binary", "auroc", np.zeros(30, int), s)
    assert all(math.isnan(v) for v in nan_ci)


def test_bootstrap_chunks_do_not_change_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    y, s = _binary(200)
    whole = M.bootstrap_ci("binary", "auroc", y, s, n_boot=500)
    monkeypatch.setattr(M, "BOOT_CELLS", 200 * 7)  # 7 resamples per chunk
    chunked = M.bootstrap_ci("binary", "auroc", y, s, n_boot=500)
    assert chunked == whole  # numpy draws the same resamples in any block size


@pytest.mark.parametrize(("problem", "metric"), [
    ("binary", "auroc"), ("multiclass", "accuracy"), ("survival", "c_index")])
def test_batched_bootstrap_agrees_with_scipy_percentile_bootstrap(problem: str, metric: str) -> None:
    """Independent draws (scipy on another seed): endpoints within 0.5 bootstrap SE (~4 Monte-Carlo SEs
    of the difference of two 2.5% / 97.5% quantiles of 1000 resamples; see bench/bootstrap_vs_scipy.py)."""
    from scipy import stats

    inputs = _inputs(problem, n=300, seed=4)
    ci = M.bootstrap_ci(problem, metric, **inputs, n_boot=1000, seed=0)
    if problem == "survival":
        data, stat = (inputs["time"], inputs["event"], inputs["y_score"]), M.harrell_c_index
    elif problem == "binary":
        data, stat = (inputs["y_true"], inputs["y_score"]), skm.roc_auc_score
    else:
        y, s = inputs["y_true"], inputs["y_score"]
        data = (np.arange(len(y)),)  # [N, K] scores: resample row indices

        def stat(i: np.ndarray) -> float:
            return skm.accuracy_score(y[i], s[i].argmax(axis=1))

    ref = stats.bootstrap(data, stat, n_resamples=1000, paired=True, vectorized=False, method="percentile",
                          rng=np.random.default_rng(12345))
    tol = 0.5 * ref.standard_error
    assert ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=tol)
    assert ci[1] - ci[0] > 4 * tol  # the tolerance is small against the interval itself


def test_paired_difference_ci_holds_the_difference_and_sees_which_model_is_better() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.uniform(0, 0.4, 400), 0, 1)  # separates the classes (AUROC 1)
    noise = rng.uniform(0, 1, 400)  # AUROC about 0.5
    ci = M.paired_difference_ci("binary", "auroc", y, good, noise, n_boot=200, seed=1)
    point = M.compute_metrics("binary", y, good)["auroc"] - M.compute_metrics("binary", y, noise)["auroc"]
    assert ci is not None and ci[0] <= point <= ci[1] and ci[0] > 0.3
    flipped = M.paired_difference_ci("binary", "auroc", y, noise, good, n_boot=200, seed=1)
    assert flipped is not None and flipped[1] < -0.3
    assert M.paired_difference_ci("binary", "auroc", y, good, good, n_boot=50, seed=1) == (0.0, 0.0)
    assert M.paired_difference_ci("binary", "auroc", y, np.full(400, np.nan), good, n_boot=50) is None


def test_every_bootstrap_holds_at_most_boot_cells_indices_and_gives_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operating point's, multi-label F1's and conformal coverage's CIs resample in blocks of at most
    ``BOOT_CELLS`` indices (bounded memory on a large test split) and give the same figures at any block size."""
    from medmm.evaluation import conformal, threshold

    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 301), rng.uniform(0, 1, 301)
    ym, sm = rng.integers(0, 2, (301, 3)), rng.uniform(0, 1, (301, 3))
    op = {"classes": ["a", "b", "c"], "thresholds": {"a": 0.5, "b": 0.4, "c": 0.6}}
    conf = conformal.calibrate("binary", y[:150], s[:150], alpha=0.1)

    def figures() -> tuple:
        return (threshold.operating_stats(y, s > 0.5, n_boot=300, seed=1)["ci"],
                threshold.f1_at(ym, sm, op, n_boot=300, seed=1)["ci"],
                conformal.coverage_report(conf, y[150:], s[150:], n_boot=300, seed=1))

    whole = figures()
    blocks: dict[str, list[tuple[int, ...]]] = {"threshold": [], "conformal": []}
    original = M.bootstrap_resamples

    def recording(caller: str):  # noqa: ANN202
        def draw(rng: np.random.Generator, n: int, n_boot: int, cells: int | None = None):  # noqa: ANN202
            for idx in original(rng, n, n_boot, cells):
                blocks[caller].append(idx.shape)
                yield idx
        return draw

    monkeypatch.setattr(M, "BOOT_CELLS", 301 * 7)  # 7 resamples of 301 rows a block
    monkeypatch.setattr(threshold, "bootstrap_resamples", recording("threshold"))
    monkeypatch.setattr(M, "bootstrap_resamples", recording("conformal"))  # conformal imports it when it runs
    assert figures() == whole
    assert sum(b[0] for b in blocks["threshold"]) == 600 and blocks["conformal"]
    assert max(b[0] * b[1] for b in blocks["threshold"] + blocks["conformal"]) <= 301 * 7
