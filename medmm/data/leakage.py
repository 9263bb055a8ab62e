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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LEAK_THRESHOLD", "feature_scores", "warn_leaky_features"]

log = logging.getLogger(__name__)

LEAK_THRESHOLD = 0.95
"""Score above which a single feature is reported as possible leakage."""
_MIN_ROWS = 20  # fewer rows with a value (or fewer than 5 of a class / event): not scored
_MAX_ROWS = {"binary": 50_000, "regression": 50_000, "survival": 5_000}  # subsample above (C-index is O(N^2))
_METRIC = {"binary": "AUROC", "regression": "|Spearman rho|", "survival": "C-index"}


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
                        threshold: float = LEAK_THRESHOLD) -> list[tuple[str, float]]:
    """Log one warning per feature scoring above ``threshold``; returns ``[(column, score)]``."""
    found = sorted(((c, s) for c, s in feature_scores(frame, types, problem, y).items() if s > threshold),
                   key=lambda cs: -cs[1])
    for col, score in found:
        log.warning("possible leakage: feature %r alone predicts the target almost perfectly (%s %.3f on the "
                    "training rows); if its value is known only after the outcome, leave it out with "
                    "data.exclude=[%s]", col, _METRIC[problem], score, col)
    return found


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
