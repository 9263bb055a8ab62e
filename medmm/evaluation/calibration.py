"""Recalibration on a new site: temperature scaling (binary, multiclass) or isotonic regression (binary).

A calibrator is plain JSON (``artifacts/calibration.json``); runs that hold one apply it to
their probabilities in ``medmm predict`` and ``medmm evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import MedmmError

__all__ = ["METHODS", "apply_calibrator", "apply_stored_calibration", "fit_calibrator"]

METHODS = ("temperature", "isotonic")
FORMAT = "medmm-calibration"
FILE = "calibration.json"
_EPS = 1e-7


def _logits(problem: str, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)) if problem == "binary" else np.log(p)


def _probs(problem: str, z: np.ndarray) -> np.ndarray:
    if problem == "binary":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(problem: str, y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    if problem == "binary":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def fit_calibrator(problem: str, y: Any, scores: Any, method: str) -> dict[str, Any]:
    """Fit ``method`` on labels ``y`` and probabilities ``scores``; returns the JSON form."""
    if problem not in ("binary", "multiclass"):
        raise MedmmError(f"--recalibrate works for binary and multiclass tasks, not {problem}")
    if method not in METHODS:
        raise MedmmError(f"--recalibrate must be one of {', '.join(METHODS)}, got {method!r}")
    y, s = np.asarray(y).astype(int), np.asarray(scores, dtype=float)
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        z = _logits(problem, s)
        res = minimize_scalar(lambda lt: _nll(problem, y, _probs(problem, z / np.exp(lt))), bounds=(-4.0, 4.0),
                              method="bounded")
        return {"format": FORMAT, "version": 1, "method": method, "problem": problem,
                "temperature": float(np.exp(res.x))}
    if problem != "binary":
        raise MedmmError("--recalibrate isotonic works for binary tasks; use temperature for multiclass")
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return {"format": FORMAT, "version": 1, "method": method, "problem": problem,
            "x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def apply_calibrator(problem: str, scores: Any, cal: Mapping[str, Any]) -> np.ndarray:
    """Calibrated probabilities (same shape as ``scores``)."""
    s = np.asarray(scores, dtype=float)
    if cal["method"] == "temperature":
        return _probs(problem, _logits(problem, s) / float(cal["temperature"])).astype(np.float32)
    return np.interp(s, np.asarray(cal["x"]), np.asarray(cal["y"])).astype(np.float32)


def load_calibrator(run_dir: Path) -> dict[str, Any] | None:
    """The run's stored calibrator, or ``None``."""
    from medmm.io import read_json

    path = Path(run_dir) / "artifacts" / FILE
    return read_json(path, format=FORMAT) if path.exists() else None


def apply_stored_calibration(run_dir: Path, problem: str, ev: Any) -> Any:
    """``ev`` with its scores recalibrated when the run holds a calibrator (else unchanged)."""
    cal = load_calibrator(run_dir)
    if cal is not None and problem in ("binary", "multiclass"):
        ev.scores = apply_calibrator(problem, ev.scores, cal)
    return ev
