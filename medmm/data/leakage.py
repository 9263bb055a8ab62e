"""Warn about features that alone predict the target almost perfectly (possible leakage).

A follow-up time in a mortality table, a discharge status, a lab value measured after the
outcome: such a column makes validation look excellent and the model useless (or unusable:
the column is absent when predicting). Nothing is dropped here; each suspect column is named
in a warning (console and ``train.log``) with its own score, so the user decides and leaves
it out with ``data.exclude``.

Scores, on the training rows, of each feature alone (direction-free, so 0.5 / 0 = no signal):

- binary: AUROC of the value, ``max(auc, 1 - auc)``;
- regression: ``|Spearman rho|`` between value and target;
- survival: Harrell's C-index of the value as a risk score, ``max(c, 1 - c)``.

A categorical feature is scored through its category means of the target (event for survival)
learnt on one half of the rows and scored on the other half, so an identifier-like column
(one category per row) scores as no signal rather than as a perfect separator.

A leak need not be perfect on its own: a follow-up time beside a death outcome scored AUROC
0.84 alone yet lifted a model's test AUROC from 0.88 to 0.95. Given the validation rows, two
more checks name such a column as possible leakage, with their evidence:

- drop-column importance on a classic baseline (logistic / ridge regression on the run's fitted
  preprocessor, out of fold over the training + validation rows, cheap): a feature whose removal
  lowers the score by at least ``DROP_MIN`` and ``DROP_RATIO`` times more than any other's;
- names and values: beside a binary or survival target, a column named like a follow-up,
  duration, outcome or date (``time``, ``days``, ``follow_up``, ``los``, ``death``,
  ``discharge`` ...) with some signal of its own (score >= ``NAME_MIN_SCORE``), or a column whose
  values are dates. Warnings name columns and figures, never values.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LEAK_THRESHOLD", "drop_column_importance", "feature_scores", "outcome_like_columns",
           "warn_leaky_features"]

log = logging.getLogger(__name__)

LEAK_THRESHOLD = 0.95
"""Score above which a single feature is reported as possible leakage."""
_MIN_ROWS = 20  # fewer rows with a value (or fewer than 5 of a class / event): not scored
_MAX_ROWS = {"binary": 50_000, "regression": 50_000, "survival": 5_000}  # subsample above (C-index is O(N^2))
_METRIC = {"binary": "AUROC", "regression": "|Spearman rho|", "survival": "C-index"}
DROP_MIN = 0.05
"""A feature is a drop-column suspect when removing it lowers the val score by at least this ..."""
DROP_RATIO = 3.0
"""... and this many times more than removing any other feature (or 0.01, whichever is larger)."""
NAME_MIN_SCORE = 0.65
"""A follow-up / duration / outcome name is reported when the column alone scores at least this."""
_DROP_METRIC = {"binary": "AUROC", "regression": "R^2"}
_OUTCOME_WORDS = {
    "time", "times", "day", "days", "month", "months", "year", "years", "duration", "followup", "follow", "fu",
    "fup", "los", "stay", "survival", "surv", "tte", "censor", "censored", "cens", "death", "died", "dead",
    "deceased", "mortality", "dod", "discharge", "discharged", "outcome", "exit", "end", "readmission", "readmitted",
    "date", "dt",
}


def feature_scores(frame: pd.DataFrame, types: Mapping[str, str], problem: str, y: Any) -> dict[str, float]:
    """Each feature's score alone (see the module docstring); features that cannot be scored are left out.

    ``y`` is the target per row: 0/1 (binary), numbers (regression) or ``[N, 2]`` time, event
    (survival). Other problems (multiclass, multilabel) return ``{}``.
    """
    import pandas as pd

    if problem not in _METRIC or len(frame) < _MIN_ROWS:
        return {}
    y = np.asarray(y, dtype=np.float64)
    if len(frame) > _MAX_ROWS[problem]:
        keep = np.sort(np.random.default_rng(0).choice(len(frame), _MAX_ROWS[problem], replace=False))
        frame, y = frame.iloc[keep], y[keep]
    scores: dict[str, float] = {}
    for col, kind in types.items():
        if col not in frame.columns:
            continue
        if kind == "numeric":
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            rows = np.flatnonzero(np.isfinite(values))
        else:
            values, rows = _held_out_category_means(frame[col], y[:, 1] if problem == "survival" else y)
        score = _score(problem, values[rows], y[rows])
        if score is not None:
            scores[col] = score
    return scores


def warn_leaky_features(frame: pd.DataFrame, types: Mapping[str, str], problem: str, y: Any,
                        threshold: float = LEAK_THRESHOLD, *, val: tuple[pd.DataFrame, Any] | None = None,
                        preprocessor: Any = None) -> list[tuple[str, float]]:
    """Log one warning per suspect feature; returns ``[(column, score alone)]`` (``nan`` when unscored).

    Without ``val``: features scoring above ``threshold`` alone. With ``val`` (validation rows and
    targets) and the fitted ``preprocessor``: also drop-column suspects and follow-up / outcome
    names and dates (see the module docstring).
    """
    scores = feature_scores(frame, types, problem, y)
    evidence: dict[str, list[str]] = {}
    for col, score in sorted(scores.items(), key=lambda cs: -cs[1]):
        if score > threshold:
            evidence[col] = [(f"alone it predicts the target almost perfectly ({_METRIC[problem]} {score:.3f} on "
                              "the training rows)")]
    if val is not None and preprocessor is not None:
        drops = drop_column_importance(preprocessor, frame, y, val[0], val[1], problem)
        for col, why in _drop_suspects(drops, problem).items():
            evidence.setdefault(col, []).append(why)
    for col, why in outcome_like_columns(frame, types, problem, scores).items():
        evidence.setdefault(col, []).append(why)
    found = []
    for col, reasons in evidence.items():
        alone = "" if col not in scores or reasons[0].startswith("alone") else \
            f"; alone {_METRIC[problem]} {scores[col]:.3f} on the training rows"
        log.warning("possible leakage: feature %r: %s%s. If its value is known only after the outcome (follow-up, "
                    "outcome dates, discharge status), leave it out with data.exclude=[%s]",
                    col, "; ".join(reasons), alone, col)
        found.append((col, scores.get(col, float("nan"))))
    return found


def drop_column_importance(preprocessor: Any, train: pd.DataFrame, y_train: Any, val: pd.DataFrame, y_val: Any,
                           problem: str) -> dict[str, float]:
    """Score of a classic baseline with every feature, minus its score without each one.

    ``{"": full score, column: drop, ...}``; binary: AUROC of a logistic regression, regression:
    R^2 of a ridge regression, both on ``preprocessor``'s columns. Scored out of fold over the
    training + validation rows (5 folds; one validation split above ``_CV_MAX_FEATURES`` features),
    so a small validation split's noise does not pass for a feature's importance. Other problems,
    or too few rows (or one class), return ``{}``.
    """
    if problem not in _DROP_METRIC or len(train) < _MIN_ROWS or len(val) < 10:
        return {}
    yt, yv = np.asarray(y_train, dtype=np.float64), np.asarray(y_val, dtype=np.float64)
    if problem == "binary" and (min(yt.sum(), len(yt) - yt.sum()) < 5 or min(yv.sum(), len(yv) - yv.sum()) < 2):
        return {}
    names = preprocessor.feature_names
    groups = {col: [i for i, n in enumerate(names) if not (n == col or n == f"{col}__missing" or n.startswith(f"{col}="))]
              for col in preprocessor.columns}
    groups = {col: keep for col, keep in groups.items() if len(keep) < len(names)}
    if len(groups) <= _CV_MAX_FEATURES:
        x, y = _drop_rows(preprocessor, train, val), np.concatenate([yt, yv])
        if len(y) > _DROP_MAX_ROWS:
            y = y[np.sort(np.random.default_rng(0).choice(len(y), _DROP_MAX_ROWS, replace=False))]
        folds = _folds(problem, y)

        def score(cols: list[int] | None) -> float:
            return _oof_score(problem, x if cols is None else x[:, cols], y, folds)
    else:
        xt, xv = preprocessor.transform(train), preprocessor.transform(val)

        def score(cols: list[int] | None) -> float:
            return _baseline_score(problem, xt if cols is None else xt[:, cols], yt,
                                   xv if cols is None else xv[:, cols], yv)
    full = score(None)
    out = {"": full}
    for col, keep in groups.items():
        out[col] = full - (score(keep) if keep else _chance(problem))
    return out


_CV_MAX_FEATURES = 40  # above: one fit per feature on the validation split (cost)
_DROP_MAX_ROWS = 20_000


def _drop_rows(preprocessor: Any, train: pd.DataFrame, val: pd.DataFrame) -> np.ndarray:
    """The encoded training + validation rows, or the ``_DROP_MAX_ROWS`` of them drawn at random above that:
    only the drawn rows are encoded (the same values as drawing from the whole encoded matrix, #30)."""
    n = len(train) + len(val)
    if n <= _DROP_MAX_ROWS:
        return np.concatenate([preprocessor.transform(train), preprocessor.transform(val)])
    keep = np.sort(np.random.default_rng(0).choice(n, _DROP_MAX_ROWS, replace=False))
    with warnings.catch_warnings():  # unseen categories: the run's own transform of every row counts them
        warnings.simplefilter("ignore", UserWarning)
        return np.concatenate([preprocessor.transform(train, rows=keep[keep < len(train)]),
                               preprocessor.transform(val, rows=keep[keep >= len(train)] - len(train))])


def _folds(problem: str, y: np.ndarray, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    split = StratifiedKFold(k, shuffle=True, random_state=0) if problem == "binary" else KFold(k, shuffle=True,
                                                                                                random_state=0)
    return list(split.split(np.zeros(len(y)), y.astype(int) if problem == "binary" else None))


def _oof_score(problem: str, x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The baseline's score on out-of-fold predictions pooled over ``folds``."""
    from sklearn.metrics import r2_score, roc_auc_score

    pred = np.zeros(len(y))
    for fit, held in folds:
        pred[held] = _baseline_predict(problem, x[fit], y[fit], x[held])
    return float(roc_auc_score(y.astype(int), pred) if problem == "binary" else r2_score(y, pred))


def _baseline_predict(problem: str, xt: np.ndarray, yt: np.ndarray, xv: np.ndarray) -> np.ndarray:
    import warnings

    from sklearn.linear_model import LogisticRegression, Ridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on a throw-away model
        if problem == "binary":
            model = LogisticRegression(C=1.0, max_iter=1000, solver="liblinear")  # fast on small tables
            return model.fit(xt, yt.astype(int)).decision_function(xv)
        return Ridge(alpha=1.0).fit(xt, yt).predict(xv)


def _chance(problem: str) -> float:
    return 0.5 if problem == "binary" else 0.0


def _baseline_score(problem: str, xt: np.ndarray, yt: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> float:
    from sklearn.metrics import r2_score, roc_auc_score

    pred = _baseline_predict(problem, xt, yt, xv)
    return float(roc_auc_score(yv.astype(int), pred) if problem == "binary" else r2_score(yv, pred))


def _drop_suspects(drops: Mapping[str, float], problem: str) -> dict[str, str]:
    """Features whose removal costs far more than any other's, with the evidence in words."""
    if len(drops) < 3:  # the full score and at least two features
        return {}
    full = drops[""]
    ranked = sorted(((c, d) for c, d in drops.items() if c), key=lambda cd: -cd[1])
    out = {}
    for i, (col, drop) in enumerate(ranked):
        others = [d for j, (_, d) in enumerate(ranked) if j != i]
        if drop >= DROP_MIN and drop >= DROP_RATIO * max(max(others), 0.01):
            metric = _DROP_METRIC[problem]
            out[col] = (f"removing it lowers a classic baseline's {metric} from {full:.3f} to "
                        f"{full - drop:.3f} (the next largest drop from any feature: {max(others):.3f})")
    return out


def outcome_like_columns(frame: pd.DataFrame, types: Mapping[str, str], problem: str,
                         scores: Mapping[str, float]) -> dict[str, str]:
    """Beside a binary or survival target: columns named like follow-up / duration / outcome with a signal
    of their own (``scores``), and columns holding dates; ``{column: evidence}`` (never a value)."""
    import re

    if problem not in ("binary", "survival"):
        return {}
    out = {}
    for col, kind in types.items():
        if col not in frame.columns:
            continue
        words = {w for w in re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"_", str(col)).lower()) if w}
        hits = sorted(words & _OUTCOME_WORDS)
        if hits and scores.get(col, 0.0) >= NAME_MIN_SCORE:
            out[col] = (f"its name looks like a follow-up / duration / outcome ({', '.join(repr(h) for h in hits)}) "
                        f"beside a {problem} target, and it carries signal alone")
        elif kind != "numeric" and _looks_like_dates(frame[col]):
            out[col] = f"its values are dates (e.g. of follow-up or outcome) beside a {problem} target"
    return out


def _looks_like_dates(series: pd.Series) -> bool:
    import warnings

    import pandas as pd

    values = series.dropna().astype(str).str.strip()
    values = values[values != ""].head(200)
    if len(values) < 5 or not values.str.contains(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", regex=True).mean() >= 0.9:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values, errors="coerce")
    return bool(parsed.notna().mean() >= 0.9)


def _held_out_category_means(series: pd.Series, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category -> mean target learnt on alternate rows, applied to the others (and vice versa)."""
    import pandas as pd

    codes = pd.factorize(series, use_na_sentinel=True)[0]
    out = np.full(len(codes), np.nan)
    half = np.arange(len(codes)) % 2
    for fit in (0, 1):
        src = (half == fit) & (codes >= 0)
        sums = np.bincount(codes[src], weights=target[src], minlength=codes.max() + 1)
        counts = np.bincount(codes[src], minlength=codes.max() + 1)
        dst = np.flatnonzero((half != fit) & (codes >= 0))
        seen = counts[codes[dst]] > 0
        out[dst[seen]] = sums[codes[dst[seen]]] / counts[codes[dst[seen]]]
    return out, np.flatnonzero(np.isfinite(out))


def _score(problem: str, x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < _MIN_ROWS or np.all(x == x[0]):
        return None
    if problem == "binary":
        from sklearn.metrics import roc_auc_score

        if min(int(y.sum()), int(len(y) - y.sum())) < 5:
            return None
        auc = float(roc_auc_score(y, x))
        return max(auc, 1.0 - auc)
    if problem == "regression":
        from scipy.stats import spearmanr

        if np.all(y == y[0]):
            return None
        rho = float(spearmanr(x, y).statistic)
        return abs(rho) if np.isfinite(rho) else None
    from medmm.metrics import harrell_c_index

    if y[:, 1].sum() < 5:
        return None
    c = float(harrell_c_index(y[:, 0], y[:, 1].astype(bool), x))
    return max(c, 1.0 - c) if np.isfinite(c) else None
