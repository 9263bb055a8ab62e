"""Split-conformal prediction sets (classification) and intervals (regression), and the refer flag.

Calibrated once on the validation split at training time, stored as plain JSON
(``artifacts/conformal.json``), applied with numpy only: the torch-free ONNX runtime, ``medmm
serve`` and the DICOM SR carry the same sets as ``medmm predict``.

Scores and rules (the ones MAPIE 1.x uses, checked set-for-set in ``tests/test_conformal.py`` and
``bench/conformal.py``):

- classification: the LAC score ``1 - p_y``. A class ``k`` is in the set when
  ``1 - p_k <= q_k + 1e-8``, where ``q_k`` is the ``ceil((n_k + 1)(1 - alpha))``-th smallest score of
  the ``n_k`` calibration units of class ``k`` (``mondrian: class``, the default: coverage holds in
  every class) or of all units (``mondrian: none``: coverage holds on average only). Too few units
  for the order statistic (``ceil((n + 1)(1 - alpha)) > n``) -> the class is always included.
  Binary problems are two-class problems; multi-label problems get one binary set per label.
  With ``group_column``, thresholds are per (group, class); a unit with no value in that column, or
  with a group unseen at calibration, uses the per-class (pooled) ones, and the ``set_thresholds``
  column says which were used. A numeric group column is banded with edges fixed at calibration
  (``group_edges``), so a one-row request bands as the validation split did.
- regression: the absolute residual; the interval is ``prediction +- q``.
- survival: no sets. The risk score is a relative log hazard, and a coverage guarantee for event
  times under censoring needs censoring-aware methods that medmm does not implement.

The guarantee is marginal over exchangeable units: ``P(y in set) >= 1 - alpha`` for a new unit
drawn like the calibration units. It does not hold per patient, nor on a site whose data differ
(re-calibrate there: ``medmm evaluate --recalibrate conformal``).

Refer rule (``eval.conformal.refer``): ``not_single`` (default) refers a unit whose set is not
exactly one class (ambiguous or empty); ``ambiguous`` refers only sets of two or more classes.
Multi-label: a unit is referred when any label is. Regression: referred when the interval is wider
than ``eval.conformal.max_width`` (never, when unset).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import DataError, MedmmError

__all__ = ["FILE", "FORMAT", "PROBLEMS", "REFER_RULES", "ReferralCount", "StreamedGroups", "apply_sets", "calibrate", "coverage_report", "group_values",
           "load_calibration_units", "load_conformal", "prediction_columns", "recalibrate", "save_calibration_units",
           "save_conformal", "set_groups_of", "threshold_sources", "weighted_threshold"]

FORMAT = "medmm-conformal"
FILE = "conformal.json"
UNITS_FILE = "conformal_calibration.json"
UNITS_FORMAT = "medmm-conformal-calibration"
PROBLEMS = ("binary", "multiclass", "multilabel", "regression")
REFER_RULES = ("not_single", "ambiguous")
TOL = 1e-8  # MAPIE's machine-precision tolerance on the LAC comparison


# --------------------------------------------------------------------------- calibration


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores``; ``inf`` when that exceeds ``n``."""
    s = np.sort(np.asarray(scores, dtype=float).ravel())
    k = math.ceil((len(s) + 1) * (1 - alpha) - 1e-12)
    return float(s[k - 1]) if 1 <= k <= len(s) else (math.inf if k > len(s) else -math.inf)


def _probs2(problem: str, scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if problem == "binary":
        s = s.reshape(-1)
        return np.stack([1 - s, s], axis=1)
    return s.reshape(len(s), -1)


def _class_thresholds(p: np.ndarray, y: np.ndarray, alpha: float, mondrian: bool) -> list[float]:
    score = 1.0 - p[np.arange(len(y)), y]
    if not mondrian:
        return [conformal_quantile(score, alpha)] * p.shape[1]
    return [conformal_quantile(score[y == k], alpha) for k in range(p.shape[1])]


def _thresholds(problem: str, y: np.ndarray, scores: Any, alpha: float, mondrian: bool) -> Any:
    if problem == "regression":
        return conformal_quantile(np.abs(np.asarray(y, float).ravel() - np.asarray(scores, float).ravel()), alpha)
    if problem == "multilabel":
        s, t = np.asarray(scores, float), (np.asarray(y) >= 0.5).astype(int)
        return [_class_thresholds(_probs2("binary", s[:, j]), t[:, j], alpha, mondrian) for j in range(s.shape[1])]
    return _class_thresholds(_probs2(problem, scores), np.asarray(y).astype(int).ravel(), alpha, mondrian)


def calibrate(problem: str, y: Any, scores: Any, *, alpha: float = 0.1, mondrian: str = "class",
              classes: Sequence[str] | None = None, groups: Sequence[Any] | None = None,
              group_column: str | None = None, group_edges: Sequence[float] | None = None, refer: str = "not_single",
              max_width: float | None = None, calibrated_on: str = "val") -> dict[str, Any]:
    """The JSON form of split-conformal thresholds fitted on labels ``y`` and scores ``scores``.

    ``scores`` follow :mod:`medmm.metrics` (binary: P(positive); multiclass / multi-label:
    ``[N, C]`` probabilities; regression: predictions). ``groups`` are the units' labels of
    ``group_column`` (banded with ``group_edges`` when it is numeric, as :func:`group_values` labels
    new units); units with no value get no group thresholds of their own.
    """
    if problem not in PROBLEMS:
        raise MedmmError(f"conformal sets apply to {', '.join(PROBLEMS)} tasks, not {problem}")
    if not 0.0 < alpha < 1.0:
        raise MedmmError(f"eval.conformal.alpha must be in (0, 1), got {alpha}")
    if refer not in REFER_RULES:
        raise MedmmError(f"eval.conformal.refer must be one of {', '.join(REFER_RULES)}, got {refer!r}")
    if mondrian not in ("class", "none"):
        raise MedmmError(f"eval.conformal.mondrian must be 'class' or 'none', got {mondrian!r}")
    y = np.asarray(y)
    by_class = mondrian == "class" and problem != "regression"
    out: dict[str, Any] = {
        "format": FORMAT, "version": 1, "problem": problem, "alpha": float(alpha),
        "score": "absolute residual" if problem == "regression" else "lac (1 - p of the class)",
        "mondrian": "class" if by_class else "none", "refer": refer,
        "max_width": None if max_width is None else float(max_width),
        "classes": [str(c) for c in classes] if classes is not None else None,
        "thresholds": _thresholds(problem, y, scores, alpha, by_class),
        "calibrated_on": calibrated_on, "n": len(y),
        # the calibration units' labels and scores (no ids): the weighted re-calibration reweights them
        "calibration_units": {"y": np.round(np.asarray(y, float), 6).tolist(),
                              "scores": np.round(np.asarray(scores, float), 6).tolist()},
    }
    if problem in ("binary", "multiclass"):
        out["n_per_class"] = np.bincount(y.astype(int).ravel(), minlength=_probs2(problem, scores).shape[1]).tolist()
    if groups is not None:
        from medmm.evaluation.subgroups import MISSING

        g = np.asarray([str(v) for v in groups])
        s = np.asarray(scores)
        seen = sorted(set(g.tolist()) - {MISSING})  # no value: the per-class thresholds, never a group of its own
        out["group_column"] = group_column
        out["group_edges"] = None if group_edges is None else [float(e) for e in group_edges]
        out["group_thresholds"] = {v: _thresholds(problem, y[g == v], s[g == v], alpha, by_class) for v in seen}
        out["n_per_group"] = {v: int((g == v).sum()) for v in seen}
    return out


def weighted_threshold(scores: Any, weights: Any, test_weight: float, alpha: float) -> float:
    """Weighted split-conformal quantile (Tibshirani et al. 2019) for one test point.

    The ``1 - alpha`` quantile of the calibration ``scores`` weighted by ``weights`` (density ratios
    w(x) = dP_new / dP_cal) plus a point mass at +inf of weight ``test_weight``; ``inf`` when the
    calibration mass is too small.
    """
    s, w = np.asarray(scores, float).ravel(), np.asarray(weights, float).ravel()
    order = np.argsort(s)
    s, w = s[order], w[order]
    total = w.sum() + float(test_weight)
    cum = np.cumsum(w) / total
    i = int(np.searchsorted(cum, 1 - alpha - 1e-12))
    return float(s[i]) if i < len(s) else math.inf


# --------------------------------------------------------------------------- application


def _finite(q: Any) -> float:
    return math.inf if q is None else float(q)


def _thr_rows(conf: Mapping[str, Any], n: int, groups: Sequence[Any] | None) -> list[Any]:
    """The thresholds per unit: the group's when it was calibrated, else the pooled ones."""
    pooled = conf["thresholds"]
    table = conf.get("group_thresholds") or {}
    if groups is None or not table:
        return [pooled] * n
    return [table.get(str(g), pooled) for g in groups]


def threshold_sources(conf: Mapping[str, Any], groups: Sequence[Any] | None, n: int) -> list[str]:
    """Per unit, which thresholds made its set (grouped runs): ``site=A``, ``per class (no site value)`` or
    ``per class (site group not calibrated)``. Only calibrated group labels are written (they are in
    ``conformal.json`` already); an unseen value is never echoed."""
    from medmm.evaluation.subgroups import MISSING

    col, table = conf.get("group_column") or "group", conf.get("group_thresholds") or {}
    if groups is None:
        return [f"per class (no {col} value)"] * n
    return [f"{col}={g}" if str(g) in table else
            f"per class (no {col} value)" if str(g) == MISSING else f"per class ({col} group not calibrated)"
            for g in groups]


def _sets_from(p: np.ndarray, thr: Sequence[Any]) -> np.ndarray:
    q = np.asarray([[_finite(v) for v in t] for t in thr], dtype=float)
    return (1.0 - p) - q <= TOL


def apply_sets(conf: Mapping[str, Any], scores: Any, groups: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """Sets (or intervals) and the refer flag for ``scores``.

    Returns ``{"sets": bool [N, C] (multi-label [N, L, 2]), "size": [N], "abstain": bool [N]}`` for
    classification and ``{"lower", "upper", "width", "abstain"}`` for regression.
    """
    problem = conf["problem"]
    s = np.asarray(scores, dtype=float)
    n = len(s)
    thr = _thr_rows(conf, n, groups)
    if problem == "regression":
        q = np.asarray([_finite(t) for t in thr], dtype=float)
        pred = s.reshape(-1)
        width = 2 * q
        mw = conf.get("max_width")
        abstain = width > mw if mw is not None else np.zeros(n, bool)
        return {"lower": pred - q, "upper": pred + q, "width": width, "abstain": abstain}
    if problem == "multilabel":
        s = s.reshape(n, -1)
        sets = np.stack([_sets_from(_probs2("binary", s[:, j]), [t[j] for t in thr]) for j in range(s.shape[1])],
                        axis=1) if n else np.zeros((0, s.shape[1] if s.ndim == 2 else 0, 2), bool)
        size = sets.sum(axis=2)  # [N, L]
        bad = size != 1 if conf["refer"] == "not_single" else size > 1
        return {"sets": sets, "size": size, "abstain": bad.any(axis=1) if n else np.zeros(0, bool)}
    p = _probs2(problem, s)
    sets = _sets_from(p, thr) if n else np.zeros((0, p.shape[1]), bool)
    size = sets.sum(axis=1)
    abstain = size != 1 if conf["refer"] == "not_single" else size > 1
    return {"sets": sets, "size": size, "abstain": abstain}


def prediction_columns(conf: Mapping[str, Any], scores: Any, names: Sequence[str],
                       groups: Sequence[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Extra ``predictions.csv`` columns: ``set`` (class names joined by ``;``; multi-label: one
    ``set_<label>`` column of ``0`` / ``1`` / ``0;1``) or ``lower`` / ``upper``, then ``abstain``; a run
    with group thresholds adds ``set_thresholds`` (:func:`threshold_sources`)."""
    head, rows = _set_columns(conf, apply_sets(conf, scores, groups), names)
    if conf.get("group_thresholds"):
        head.append("set_thresholds")
        for r, src in zip(rows, threshold_sources(conf, groups, len(rows))):
            r.append(src)
    return head, rows


def _set_columns(conf: Mapping[str, Any], out: Mapping[str, np.ndarray],
                 names: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    pct = f"{100 * (1 - conf['alpha']):g}"
    if conf["problem"] == "regression":
        return ([f"lower_{pct}", f"upper_{pct}", "abstain"],
                [[f"{lo:.6g}", f"{hi:.6g}", int(a)] for lo, hi, a in zip(out["lower"], out["upper"], out["abstain"])])
    names = [str(n) for n in names]
    if conf["problem"] == "multilabel":
        rows = [[";".join(str(v) for v in (0, 1) if out["sets"][i, j, v]) for j in range(len(names))]
                + [int(out["abstain"][i])] for i in range(len(out["abstain"]))]
        return [*(f"set_{n}" for n in names), "abstain"], rows
    rows = [[";".join(n for n, inc in zip(names, out["sets"][i]) if inc), int(out["abstain"][i])]
            for i in range(len(out["abstain"]))]
    return [f"set_{pct}", "abstain"], rows


# --------------------------------------------------------------------------- evaluation


def _covered(conf: Mapping[str, Any], out: Mapping[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    """Per unit 0/1 (multi-label: ``[N, L]``): the truth is in the set / interval."""
    problem = conf["problem"]
    if problem == "regression":
        yy = y.astype(float).ravel()
        return (yy >= out["lower"] - TOL) & (yy <= out["upper"] + TOL)
    if problem == "multilabel":
        t = (y >= 0.5).astype(int)
        return np.take_along_axis(out["sets"], t[:, :, None], axis=2)[:, :, 0]
    return out["sets"][np.arange(len(y)), y.astype(int).ravel()]


def _ci(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    if not n_boot or len(values) < 2:
        return (math.nan, math.nan)
    from medmm.metrics import bootstrap_resamples, interval

    m = np.concatenate([values[idx].mean(axis=1) for idx in bootstrap_resamples(rng, len(values), n_boot)])

    return interval(m, float(np.mean(values)))  # holds the point estimate, as every medmm CI (#27)


def _cell(cov: np.ndarray, size: np.ndarray, refer: np.ndarray, n_boot: int, rng: np.random.Generator,
          nominal: float) -> dict[str, Any]:
    c = cov.astype(float)
    lo, hi = _ci(c, n_boot, rng)
    return {"n": len(c), "coverage": float(c.mean()) if len(c) else math.nan, "coverage_ci": [lo, hi],
            "mean_size": float(size.mean()) if len(size) else math.nan,
            "mean_size_ci": list(_ci(size.astype(float), n_boot, rng)),
            "referred": float(refer.mean()) if len(refer) else math.nan,
            "below_nominal": bool(math.isfinite(hi) and hi < nominal)}


def coverage_report(conf: Mapping[str, Any], y: Any, scores: Any, *, label_names: Sequence[str] | None = None,
                    groups: Mapping[str, Sequence[Any]] | None = None, set_groups: Sequence[Any] | None = None,
                    min_group_size: int = 10, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Empirical coverage, mean set size (interval width) and share referred, with 95% bootstrap CIs:
    overall, per class (per label), and per subgroup of each ``groups`` column. A cell whose coverage
    CI lies wholly below ``1 - alpha`` is flagged; cells under ``min_group_size`` units are suppressed.
    """
    y = np.asarray(y)
    out = apply_sets(conf, scores, set_groups)
    cov = _covered(conf, out, y)
    problem, nominal = conf["problem"], 1 - float(conf["alpha"])
    size = out["width"] if problem == "regression" else out["size"]
    if problem == "multilabel":  # per label (the guarantee): a unit's share of labels covered, mean set size
        per_label = cov
        cov, size = per_label.mean(axis=1), size.mean(axis=1)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"alpha": conf["alpha"], "nominal": nominal, "problem": problem,
                              "size_name": {"regression": "interval width", "multilabel": "set size per label"}.get(
                                  problem, "set size"),
                              "refer_rule": conf.get("refer"), "min_group_size": int(min_group_size),
                              "overall": _cell(cov, size, out["abstain"], n_boot, rng, nominal), "classes": {},
                              "groups": {}}
    names = [str(n) for n in (label_names or [])]
    if problem in ("binary", "multiclass"):
        for k, name in enumerate(names):
            m = y.astype(int).ravel() == k
            if m.any():
                report["classes"][name] = _cell(cov[m], size[m], out["abstain"][m], n_boot, rng, nominal)
    elif problem == "multilabel":
        report["all_labels_covered"] = float(per_label.all(axis=1).mean()) if len(per_label) else math.nan
        for j, name in enumerate(names):
            report["classes"][name] = _cell(per_label[:, j], out["size"][:, j], out["abstain"], n_boot, rng, nominal)
    for col, labels in (groups or {}).items():
        g = np.asarray([str(v) for v in labels])
        cells = {}
        for v in sorted(set(g.tolist())):
            m = g == v
            cells[v] = ({"n": int(m.sum()), "suppressed": True} if m.sum() < min_group_size
                        else _cell(cov[m], size[m], out["abstain"][m], n_boot, rng, nominal))
        report["groups"][col] = {"cells": cells,
                                 "flagged": [v for v, c in cells.items() if c.get("below_nominal")]}
    return report


# --------------------------------------------------------------------------- storage and views


def save_conformal(directory: Path, conf: Mapping[str, Any]) -> Path:
    """``artifacts/conformal.json``: the thresholds only (atomic, strict JSON: an infinite threshold is
    ``null``). The calibration units never go there: artifacts/ travels with an export."""
    from medmm.io import write_json_atomic

    return write_json_atomic(Path(directory) / FILE, {k: v for k, v in conf.items() if k != "calibration_units"})


def save_calibration_units(run_dir: Path, conf: Mapping[str, Any]) -> Path | None:
    """``RUN_DIR/conformal_calibration.json``: the calibration units' labels and scores (no ids), which the
    weighted re-calibration reweights; kept in the run directory, out of ``artifacts/`` and so out of exports."""
    from medmm.io import write_json_atomic

    units = conf.get("calibration_units")
    if not units:
        return None
    return write_json_atomic(Path(run_dir) / UNITS_FILE, {"format": UNITS_FORMAT, "version": 1, **units})


def load_calibration_units(run_dir: Path) -> dict[str, Any] | None:
    """What :func:`save_calibration_units` wrote, or ``None``."""
    from medmm.io import read_json

    path = Path(run_dir) / UNITS_FILE
    return read_json(path, format=UNITS_FORMAT) if path.exists() else None


def load_conformal(run_dir: Path) -> dict[str, Any] | None:
    """The run's stored conformal thresholds, or ``None`` (runs trained without them)."""
    from medmm.io import read_json

    path = Path(run_dir) / "artifacts" / FILE
    return read_json(path, format=FORMAT) if path.exists() else None


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _row(name: str, c: Mapping[str, Any], min_n: int) -> list[str]:
    if c.get("suppressed"):
        return [name, f"< {min_n}", "", "", "", ""]
    lo, hi = c["coverage_ci"]
    slo, shi = c["mean_size_ci"]
    cov = _f(c["coverage"]) + (f" ({_f(lo)}–{_f(hi)})" if math.isfinite(lo) else "")
    size = _f(c["mean_size"]) + (f" ({_f(slo)}–{_f(shi)})" if math.isfinite(slo) else "")
    return [name, str(c["n"]), cov, size, _f(c["referred"]), "below nominal" if c["below_nominal"] else ""]


def coverage_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the coverage table (overall, classes, subgroup cells)."""
    head = ["", "units", "coverage (95% CI)", f"mean {report['size_name']} (95% CI)", "referred", "flag"]
    m = report["min_group_size"]
    rows = [_row("overall", report["overall"], m)]
    rows += [_row(f"class {k}", c, m) for k, c in report["classes"].items()]
    for col, g in report["groups"].items():
        rows += [_row(f"{col} = {v}", c, m) for v, c in g["cells"].items()]
    return head, rows


def describe(conf: Mapping[str, Any]) -> str:
    """One sentence: what the sets are, how they were calibrated and the refer rule."""
    level = f"{100 * (1 - conf['alpha']):g}%"
    if conf["problem"] == "regression":
        rule = (f"referred when the interval is wider than {conf['max_width']:g}" if conf.get("max_width") is not None
                else "never referred (eval.conformal.max_width unset)")
        return (f"Split-conformal {level} intervals (prediction +- q, absolute-residual score) calibrated on "
                f"{conf['n']} {conf['calibrated_on']} units; {rule}.")
    by = "per class (Mondrian)" if conf["mondrian"] == "class" else "marginal (all classes pooled)"
    grp = f", and per {conf['group_column']} group" if conf.get("group_column") else ""
    rule = ("a unit is referred to a clinician when its set is not exactly one class (ambiguous or empty)"
            if conf["refer"] == "not_single" else "a unit is referred when its set holds two or more classes")
    per = " (one set per label; referred when any label is)" if conf["problem"] == "multilabel" else ""
    return (f"Split-conformal {level} prediction sets{per}, LAC score, thresholds {by}{grp}, calibrated on "
            f"{conf['n']} {conf['calibrated_on']} units; {rule}. Coverage holds on average over units drawn "
            "like the calibration units, not per patient and not on a shifted site.")


def coverage_html(report: Mapping[str, Any], conf: Mapping[str, Any], split: str) -> str:
    """The report / evaluation page section."""
    import html

    from medmm.report import html_table

    head, rows = coverage_rows(report)
    note = (f"{describe(conf)} Figures on the {split} split; 95% bootstrap CIs; a row is flagged when its "
            f"coverage CI lies wholly below the nominal {report['nominal']:.2f}.")
    if "all_labels_covered" in report:  # the guarantee is per label; every label at once is lower
        note += (f" Coverage is per label (overall: the mean over labels); every label of a unit covered at once: "
                 f"{report['all_labels_covered']:.3f}.")
    return html_table(head, rows) + f'\n<p class="note">{html.escape(note)}</p>'


def coverage_markdown(report: Mapping[str, Any], conf: Mapping[str, Any], split: str) -> str:
    """The model card / TRIPOD form of :func:`coverage_html`."""
    head, rows = coverage_rows(report)
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "\n".join(
        "| " + " | ".join(r) + " |" for r in rows)
    return f"{describe(conf)} On the {split} split:\n\n{md}"


# --------------------------------------------------------------------------- training run


def group_values(conf: Mapping[str, Any], values: Sequence[Any]) -> list[str]:
    """Labels of the thresholds' ``group_column`` for raw ``values``: banded with the edges fixed at
    calibration (``group_edges``; a run calibrated before they were stored bands ``values`` themselves)."""
    from medmm.evaluation.subgroups import group_labels, label_values

    if "group_edges" in conf:
        return label_values(values, conf["group_edges"]).tolist()
    return group_labels(values, str(conf.get("group_column"))).tolist()


def unit_groups(data: Path, cfg: Any, units: Sequence[str], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Subgroup labels (banded as the audit bands them) of ``units`` for each of ``columns``."""
    from medmm.evaluation.attributes import unit_attributes
    from medmm.evaluation.subgroups import group_labels, parse_bands

    if not columns:
        return {}
    attrs = unit_attributes(Path(data), cfg.data, list(units), list(columns))
    return {c: group_labels(v, c, parse_bands(cfg.eval.bands)) for c, v in attrs.items()}


def training_conformal(task: Any, trainer: Any, model: Any, bundle: Any, val: Any, test_ev: Any, split_name: str,
                       data: Path, cfg: Any, run_dir: Path, *, main: bool) -> dict[str, Any]:
    """Calibrate on val (``val``: its evaluation when already made), report coverage on ``test_ev``;
    only ``main`` writes ``artifacts/conformal.json``."""
    c = cfg.eval.conformal
    out: dict[str, Any] = {"sections": [], "summary": {}, "conformal": None, "card": None, "set_groups": None}
    if not c.enabled or task.problem not in PROBLEMS or bundle.val is None or not len(bundle.val.dataset):
        return out
    if val is None:
        val = trainer.evaluate(model, bundle.val, bundle.collate_fn)
    if val.targets is None:
        return out
    (vy, vs), _ = trainer.metric_inputs(val)
    gcol = c.group_column
    vgroups = edges = None
    if gcol:  # band edges fixed here, on val, and stored: every later predict bands a unit the same way
        from medmm.evaluation.attributes import unit_attributes
        from medmm.evaluation.subgroups import band_edges, label_values, parse_bands

        raw = unit_attributes(Path(data), cfg.data, list(val.units), [gcol])[gcol]
        edges = band_edges(raw, gcol, parse_bands(cfg.eval.bands))
        vgroups = label_values(raw, edges)
    conf = calibrate(task.problem, vy, vs, alpha=c.alpha, mondrian=c.mondrian, classes=task.label_names,
                     groups=vgroups, group_column=gcol, group_edges=edges, refer=c.refer, max_width=c.max_width)
    if main:
        save_conformal(Path(run_dir) / "artifacts", conf)
        save_calibration_units(run_dir, conf)
    out["conformal"] = conf
    if test_ev.targets is not None and len(test_ev.units):
        (y, s), _ = trainer.metric_inputs(test_ev)
        cols = list(cfg.data.subgroup_columns or [])
        groups = unit_groups(data, cfg, test_ev.units, cols)
        if gcol:  # the thresholds' groups, banded with the calibration's edges
            groups[gcol] = np.asarray(set_groups_of(conf, data, cfg, test_ev.units), dtype=object)
        out["set_groups"] = groups.get(gcol).tolist() if gcol else None
        rep = coverage_report(conf, y, s, label_names=task.label_names, groups=groups,
                              set_groups=groups.get(gcol) if gcol else None, min_group_size=cfg.eval.min_group_size,
                              n_boot=cfg.engine.bootstrap, seed=cfg.seed)
        where = split_name + (" (the calibration split itself: in-sample)" if split_name == "val" else "")
        out["sections"].append((f"Prediction sets and referral (on {split_name})", coverage_html(rep, conf, where)))
        out["card"] = coverage_markdown(rep, conf, where)
        o = rep["overall"]
        out["summary"]["conformal"] = {"alpha": conf["alpha"], "coverage": o["coverage"],
                                       "coverage_ci": o["coverage_ci"], "mean_size": o["mean_size"],
                                       "referred": o["referred"], "size_name": rep["size_name"],
                                       "flagged": [f"class {k}" for k, v in rep["classes"].items() if v["below_nominal"]]
                                       + [f"{col} = {v}" for col, g in rep["groups"].items() for v in g["flagged"]]}
    return out


def summary_line(s: Mapping[str, Any], split: str) -> str:
    """``conformal 90% sets on test: coverage 0.91 (95% CI ..), mean set size 1.2, referred 18%``."""
    lo, hi = s["coverage_ci"]
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and math.isfinite(lo) else ""
    line = (f"conformal {100 * (1 - s['alpha']):g}% on {split}: coverage {s['coverage']:.3f}{ci}, mean "
            f"{s['size_name']} {s['mean_size']:.3g}, referred {100 * s['referred']:.1f}%")
    return line + (f"; below nominal: {', '.join(s['flagged'])}" if s.get("flagged") else "")


def set_groups_of(conf: Mapping[str, Any] | None, data: Path, cfg: Any, units: Sequence[str]) -> list[str] | None:
    """The units' labels of the thresholds' ``group_column`` in ``data`` (:func:`group_values`; ``None`` when
    the sets are not grouped)."""
    from medmm.evaluation.attributes import unit_attributes

    col = (conf or {}).get("group_column")
    if not col:
        return None
    return group_values(conf, unit_attributes(Path(data), cfg.data, list(units), [col])[col])  # type: ignore[arg-type]


class StreamedGroups:
    """The units' labels of the thresholds' ``group_column`` for a table predicted block by block
    (streaming ``medmm predict``): the id and group columns are read in blocks alongside, and the units of
    each block, in table order (a skipped row is passed over), take their rows' values, as
    :func:`set_groups_of` finds them in the whole table. Only the current block of those two columns is held.

    A unit matches its row's id as text, or as a number equal to it (a task that reads ids as numbers);
    without an id column (or one the table lacks) the unit is the row number."""

    def __init__(self, conf: Mapping[str, Any], data: Path, cfg: Any, rows: int) -> None:
        from medmm.data.readers import read_table_chunks

        self.conf, self.column = conf, str(conf["group_column"])
        header = next(read_table_chunks(data, 1)).columns
        if self.column not in header:
            raise DataError(f"subgroup column {self.column!r} is not in {Path(data).name}; the table has "
                            f"{[str(c) for c in header][:20]}")
        id_col = cfg.data.get("id_column")
        self.id_col = id_col if id_col and id_col in header else None
        self._rows = self._read(read_table_chunks(data, rows, columns=[c for c in (self.id_col, self.column) if c],
                                                  string_columns=[self.id_col] if self.id_col else []))

    def _read(self, blocks: Any) -> Iterator[tuple[str, Any]]:
        for df in blocks:
            ids = (df[self.id_col].astype(str).tolist() if self.id_col
                   else [str(i) for i in range(int(df.index[0]), int(df.index[0]) + len(df))])
            yield from zip(ids, df[self.column].tolist())

    @staticmethod
    def _same(unit: str, key: str) -> bool:
        if unit == key:
            return True
        try:
            return float(unit) == float(key)
        except ValueError:
            return False

    def labels(self, units: Sequence[str]) -> list[str]:
        """Group labels of the next ``units`` (:func:`group_values`)."""
        values = []
        for u in units:
            value = None
            for key, v in self._rows:
                if self._same(str(u), key):
                    value = v
                    break
            values.append(value)
        return group_values(self.conf, values)


# --------------------------------------------------------------------------- re-calibration on a new site


def _features(problem: str, scores: Any) -> np.ndarray:
    """What the shift classifier sees: the model's outputs (log-odds / log-probabilities / predictions)."""
    s = np.asarray(scores, dtype=float)
    if problem == "regression":
        return s.reshape(-1, 1)
    p = np.clip(s.reshape(len(s), -1), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)) if problem in ("binary", "multilabel") else np.log(p)


def shift_weights(problem: str, cal_scores: Any, new_scores: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Density ratios w = dP_new / dP_cal of the calibration and the new units, from a logistic regression
    telling the two apart on the model's outputs (clipped to [0.05, 20])."""
    from sklearn.linear_model import LogisticRegression

    a, b = _features(problem, cal_scores), _features(problem, new_scores)
    x, d = np.vstack([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x, d)
    ratio = len(a) / len(b)
    w = np.exp(clf.decision_function(x)) * ratio
    w = np.clip(w, 0.05, 20.0)
    return w[: len(a)], w[len(a):]


def _weighted_sets(conf: Mapping[str, Any], scores: np.ndarray, w_cal: np.ndarray, w_new: np.ndarray) -> dict[str, Any]:
    """Per-unit weighted thresholds from the stored calibration units (classification and regression)."""
    problem, alpha = conf["problem"], float(conf["alpha"])
    cal = conf["calibration_units"]
    cy, cs = np.asarray(cal["y"]), np.asarray(cal["scores"], float)
    if problem == "regression":
        res = np.abs(cy - cs.ravel())
        q = np.array([weighted_threshold(res, w_cal, wi, alpha) for wi in w_new])
        pred = scores.ravel()
        mw = conf.get("max_width")
        return {"lower": pred - q, "upper": pred + q, "width": 2 * q,
                "abstain": (2 * q > mw) if mw is not None else np.zeros(len(q), bool)}
    if problem == "multilabel":
        raise MedmmError("the weighted conformal variant covers binary, multiclass and regression runs")
    pc, pn = _probs2(problem, cs), _probs2(problem, scores)
    yc = cy.astype(int)
    sc = 1.0 - pc[np.arange(len(yc)), yc]
    by_class = conf["mondrian"] == "class"
    thr = np.empty_like(pn)
    for k in range(pn.shape[1]):
        m = (yc == k) if by_class else np.ones(len(yc), bool)
        thr[:, k] = [weighted_threshold(sc[m], w_cal[m], wi, alpha) for wi in w_new]
    sets = (1.0 - pn) - thr <= TOL
    size = sets.sum(axis=1)
    return {"sets": sets, "size": size, "abstain": size != 1 if conf["refer"] == "not_single" else size > 1}


def _summary(conf: Mapping[str, Any], out: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    cov = _covered(conf, out, y)
    cov = cov.mean(axis=1) if cov.ndim == 2 else cov  # multi-label: per label
    size = out["width"] if conf["problem"] == "regression" else out["size"]
    size = size.mean(axis=1) if size.ndim == 2 else size
    return {"coverage": float(cov.mean()), "mean_size": float(size.mean()), "referred": float(out["abstain"].mean()),
            "n": len(y)}


def recalibrate(conf: Mapping[str, Any], y: Any, scores: Any, *, fraction: float, seed: int,
                weighted: bool, calibration_units: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``medmm evaluate --recalibrate conformal``: fit new thresholds on a ``fraction`` of the new site's
    units (stratified by class), and compare on the rest: the run's sets, the re-calibrated ones and, when
    ``weighted`` (the shift check fired), the run's own calibration units reweighted to the new site.

    The weighted variant (Tibshirani et al. 2019) assumes covariate shift only (P(y | x) unchanged) and a
    density ratio that depends on x through the model's outputs alone; it needs no labels at the new site.
    """
    from sklearn.model_selection import train_test_split

    from medmm.errors import DataError

    y, s = np.asarray(y), np.asarray(scores, dtype=float)
    idx = np.arange(len(y))
    strat = y.astype(int).ravel() if conf["problem"] in ("binary", "multiclass") else None
    try:
        fit, held = train_test_split(idx, train_size=fraction, stratify=strat, random_state=seed)
    except ValueError:
        raise DataError(f"too few units per class to split {len(y)} units for --recalibrate conformal") from None
    new = calibrate(conf["problem"], y[fit], s[fit], alpha=float(conf["alpha"]), mondrian=conf["mondrian"],
                    classes=conf.get("classes"), refer=conf["refer"], max_width=conf.get("max_width"),
                    calibrated_on="external calibration part")
    out = {"method": "conformal", "conformal": new, "fit_units": len(fit), "held_out_units": len(held),
           "alpha": float(conf["alpha"]),
           "before": _summary(conf, apply_sets(conf, s[held]), y[held]),
           "after": _summary(new, apply_sets(new, s[held]), y[held]), "weighted": None}
    units = calibration_units or conf.get("calibration_units")
    if weighted and units and conf["problem"] != "multilabel":
        conf = {**conf, "calibration_units": units}
        w_cal, w_new = shift_weights(conf["problem"], units["scores"], s, seed)
        ws = _weighted_sets(conf, s[held], w_cal, w_new[held])
        out["weighted"] = {**_summary(conf, ws, y[held]),
                           "assumption": "covariate shift only (P(y | x) unchanged), density ratio a function of "
                                         "the model's outputs; the run's calibration units reweighted, no new labels "
                                         "used", "effective_calibration_units": float(w_cal.sum() ** 2 /
                                                                                        (w_cal ** 2).sum())}
    return out


def recalibration_html(recal: Mapping[str, Any]) -> str:
    """Before / after coverage on the held-out part of the new site's units."""
    from medmm.report import html_table

    rows = [["run's sets (calibrated on val)", *_three(recal["before"])],
            [f"re-calibrated on {recal['fit_units']} new-site units", *_three(recal["after"])]]
    if recal.get("weighted"):
        rows.append(["run's calibration units, weighted to the new site", *_three(recal["weighted"])])
    note = (f"Coverage of the {100 * (1 - recal['alpha']):g}% sets on the other {recal['held_out_units']} units of the "
            "new data. The re-calibrated thresholds are stored in recalibrated-run/artifacts/conformal.json; the "
            "original run is unchanged." + (f" Weighted variant: {recal['weighted']['assumption']}."
                                            if recal.get("weighted") else ""))
    import html

    return html_table(["sets", "coverage", "mean size / width", "referred"], rows) + \
        f'\n<p class="note">{html.escape(note)}</p>'


def _three(c: Mapping[str, Any]) -> list[str]:
    return [_f(c["coverage"]), _f(c["mean_size"]), _f(c["referred"])]


def referred_line(conf: Mapping[str, Any] | None, scores: Any, groups: Sequence[Any] | None = None) -> str:
    """``\n  referred (abstain = 1): 36 of 569 units (90% conformal sets, rule not_single)``, or ``""``."""
    count = ReferralCount(conf)
    count.add(scores, groups)
    return count.line()


class ReferralCount:
    """The counts of :func:`referred_line`, added block by block: a streamed prediction keeps no unit's set
    or thresholds (at 1M units the whole-input sets were the prediction's peak memory)."""

    def __init__(self, conf: Mapping[str, Any] | None) -> None:
        self.conf, self.units, self.referred, self.pooled = conf, 0, 0, 0

    def add(self, scores: Any, groups: Sequence[Any] | None = None) -> None:
        """Count one block's units (``groups``: their labels of the thresholds' group column)."""
        conf = self.conf
        if conf is None or not len(np.asarray(scores)):
            return
        a = apply_sets(conf, scores, groups)["abstain"]
        self.units, self.referred = self.units + len(a), self.referred + int(a.sum())
        if conf.get("group_thresholds"):
            self.pooled += sum(s.startswith("per class") for s in threshold_sources(conf, groups, len(a)))

    def line(self) -> str:
        conf = self.conf
        if conf is None or not self.units:
            return ""
        what = "intervals" if conf["problem"] == "regression" else "sets"
        line = (f"\n  referred (abstain = 1): {self.referred} of {self.units} units ({100 * (1 - conf['alpha']):g}% "
                f"conformal {what}, rule {conf['refer'] if conf['problem'] != 'regression' else 'max_width'})")
        if conf.get("group_thresholds"):
            col, pooled = conf["group_column"], self.pooled
            line += (f"; thresholds per {col} group" + (f", {pooled} unit(s) with no {col} value or an uncalibrated "
                                                        f"group used the per-class ones (set_thresholds)" if pooled else ""))
        return line
