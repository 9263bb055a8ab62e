"""Subgroup audit: per-group metrics with fairlearn's ``MetricFrame``, gaps, flags, small-cell suppression.

Per group: n, prevalence, the headline metric with a bootstrap CI, sensitivity / specificity /
PPV / NPV at the operating point and the ECE. Across groups: the largest headline gap, fairlearn's
equalized-odds and demographic-parity differences. The flag rule (:data:`FLAG_RULE`, written on
every page that shows the audit): a group is flagged when its headline CI lies wholly on the bad
side of the overall CI, or when one of its operating-point figures is more than :data:`MAX_GAP`
below the overall figure; a column is flagged when a fairlearn difference exceeds :data:`MAX_GAP`.
Groups with fewer than ``min_group_size`` units are shown
as ``< min_group_size`` with no figure at all, and left out of every across-group figure, so
no table singles out a patient.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medmm import metrics as M
from medmm.errors import MedmmError

__all__ = ["MAX_GAP", "MISSING", "audit", "audit_html", "audit_markdown", "band_edges", "flag_rule", "group_labels",
           "label_values", "parse_bands", "require_fairlearn"]

MISSING = "missing"
AGE_BANDS = (0.0, 40.0, 65.0, 80.0)
"""Default bands of a column named ``age`` / ``PatientAge`` (other numeric columns: quartiles)."""
MAX_LEVELS = 10
"""A numeric column with more distinct values than this is banded."""
MAX_GAP = 0.10
"""An operating-point figure this far below the overall one, or a fairlearn difference above it, is flagged."""
OP_FIGURES = ("sensitivity", "specificity", "ppv", "npv")


def flag_rule(mode: str, metric: str) -> str:
    """The flag rule in words, for the pages that show the audit."""
    side = "below" if mode == "max" else "above"
    return (f"Flag rule: a group is flagged when its {metric} 95% CI lies wholly {side} the overall CI, or when its "
            f"sensitivity, specificity, PPV or NPV at the operating point is more than {MAX_GAP:.2f} below the overall "
            f"figure; a column is flagged when fairlearn's equalized-odds or demographic-parity difference exceeds "
            f"{MAX_GAP:.2f}.")


def require_fairlearn() -> Any:
    """``fairlearn.metrics``, or a one-line error naming the extra."""
    try:
        import fairlearn.metrics as fm
    except ImportError:
        raise MedmmError("the subgroup audit needs fairlearn: pip install 'medmm[evaluate]'") from None
    return fm


# --------------------------------------------------------------------------- grouping


def parse_bands(value: Any) -> dict[str, list[float]]:
    """``eval.bands`` (a mapping, or its YAML text from ``--set``) as ``{column: [edges]}``."""
    from medmm.errors import ConfigError

    if value in (None, ""):
        return {}
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            value = None
    try:
        return {str(k): sorted(float(x) for x in v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        raise ConfigError("eval.bands must map columns to lists of numbers, e.g. {age: [0, 40, 65, 80]}") from None


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()) \
        or str(v) in ("nan", "NaT", "<NA>")


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _g(x: float) -> str:
    return f"{x:.3g}"


def _band(x: float, edges: Sequence[float]) -> str:
    if x < edges[0]:
        return f"< {_g(edges[0])}"
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= x < hi:
            return f"[{_g(lo)}, {_g(hi)})"
    return f"≥ {_g(edges[-1])}"


def band_edges(values: Sequence[Any], column: str, bands: Mapping[str, Sequence[float]] | None = None,
               ) -> list[float] | None:
    """The band edges :func:`group_labels` uses for ``values`` (given, the age defaults or the quartiles of a
    numeric column with more than :data:`MAX_LEVELS` values); ``None`` when the values are kept as they are."""
    present = [v for v in values if not _missing(v)]
    nums = [_number(v) for v in present]
    numeric = bool(present) and all(x is not None for x in nums)
    edges = (bands or {}).get(column)
    if edges is None and numeric and column.lower() in ("age", "patientage"):
        edges = AGE_BANDS  # an exact age is never a group of its own
    elif edges is None and numeric and len(set(nums)) > MAX_LEVELS:
        q = np.unique(np.round(np.quantile(np.asarray(nums, float), [0.25, 0.5, 0.75]), 6))
        edges = [float(_g(e)) for e in q]
    return None if edges is None else sorted(float(e) for e in edges)


def label_values(values: Sequence[Any], edges: Sequence[float] | None) -> np.ndarray:
    """One string label per value: its band of ``edges`` (numeric values), or the value itself when ``edges``
    is ``None``; a missing value (or a non-number to band) is :data:`MISSING`."""
    if edges is not None:
        edges = sorted(float(e) for e in edges)
        return np.asarray([MISSING if _missing(v) or _number(v) is None else _band(_number(v), edges)  # type: ignore[arg-type]
                           for v in values], dtype=object)

    def plain(v: Any) -> str:
        if _missing(v):
            return MISSING
        x = _number(v)
        return str(int(x)) if x is not None and x == int(x) and not isinstance(v, str) else str(v).strip()

    return np.asarray([plain(v) for v in values], dtype=object)


def group_labels(values: Sequence[Any], column: str, bands: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    """One string label per value: bands for numeric columns (given, age defaults or quartiles of ``values``
    themselves), else the value."""
    return label_values(values, band_edges(values, column, bands))


# --------------------------------------------------------------------------- audit


def _ovr(problem: str, y: np.ndarray, k: int) -> np.ndarray:
    return y.astype(int).reshape(-1, 1) if problem == "binary" else np.eye(k, dtype=int)[y.astype(int)]


def audit(problem: str, y: Any, scores: Any, groups: Mapping[str, Any], *, op: Mapping[str, Any] | None,
          min_group_size: int = 10, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The subgroup audit of one evaluated set; ``groups`` maps a column to one label per unit.

    ``y`` is what :mod:`medmm.metrics` takes (survival: ``[N, 2]`` time, event).
    """
    fm = require_fairlearn()
    from medmm.evaluation.threshold import decisions

    y, s = np.asarray(y), np.asarray(scores, dtype=float)
    head, mode = M.headline(problem)
    classify = problem in ("binary", "multiclass")
    k = s.shape[1] if s.ndim == 2 else 2
    calls = decisions(problem, s, op) if (classify and op) else None
    truth = _ovr(problem, y, k) if classify else None

    def args(yt: np.ndarray, st: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if problem == "survival":
            return (None, st), {"time": yt[:, 0], "event": yt[:, 1].astype(bool)}
        return (yt.astype(int) if classify else yt, st), {}

    def headline_ci(yt: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
        a, kw = args(yt, s[idx])
        value = M.compute_metrics(problem, *a, **kw)[head]
        lo, hi = M.bootstrap_ci(problem, head, *a, **kw, n_boot=n_boot, seed=seed) if n_boot else (math.nan, math.nan)
        return value, lo, hi

    def rate(idx: np.ndarray, positive: int, by_call: bool = False) -> float:
        """Macro over classes (one-vs-rest): sensitivity / specificity (``by_call=False``: among units whose
        truth is ``positive``, the share called so) or PPV / NPV (``by_call=True``: among the calls)."""
        if calls is None:
            return math.nan
        t, c = truth[idx], calls[idx]
        given, hit = (c, t) if by_call else (t, c)
        vals = [float((hit[:, j][given[:, j] == positive] == positive).mean()) for j in range(t.shape[1])
                if (given[:, j] == positive).any()]
        return float(np.mean(vals)) if vals else math.nan

    def ece(yt: np.ndarray, idx: np.ndarray) -> float:
        if not classify:
            return math.nan
        return M.expected_calibration_error(yt.astype(int), s[idx]) if M.is_probability(s[idx]) else math.nan

    funcs = {
        "n": lambda yt, idx: len(idx),
        "prevalence": lambda yt, idx: float(yt.astype(int).mean()) if problem == "binary" else math.nan,
        "headline": headline_ci,
        "sensitivity": lambda yt, idx: rate(idx, 1),
        "specificity": lambda yt, idx: rate(idx, 0),
        "ppv": lambda yt, idx: rate(idx, 1, by_call=True),
        "npv": lambda yt, idx: rate(idx, 0, by_call=True),
        "ece": ece,
    }
    index = np.arange(len(s))
    overall_value, overall_lo, overall_hi = headline_ci(y, index)
    overall_op = {k: _num(funcs[k](y, index)) for k in OP_FIGURES}
    out: dict[str, Any] = {"problem": problem, "metric": head, "mode": mode, "min_group_size": int(min_group_size),
                           "overall": {"n": len(s), "value": overall_value, "ci": [overall_lo, overall_hi],
                                       **overall_op},
                           "max_gap": MAX_GAP, "rule": flag_rule(mode, head), "columns": {}}
    for column, labels in groups.items():
        labels = np.asarray(labels, dtype=object)
        frame = fm.MetricFrame(metrics=funcs, y_true=y, y_pred=index, sensitive_features={column: labels})
        table = frame.by_group
        rows, kept = [], []
        for g in table.index:
            r = table.loc[g]
            n = int(r["n"])
            if n < min_group_size:
                rows.append({"group": str(g), "n": f"< {min_group_size}", "suppressed": True})
                continue
            value, lo, hi = r["headline"]
            worse = (hi < overall_lo) if mode == "max" else (lo > overall_hi)
            why = [f"{head} 95% CI wholly {'below' if mode == 'max' else 'above'} the overall CI"] \
                if math.isfinite(lo) and math.isfinite(hi) and worse else []
            ops = {k: _num(r[k]) for k in OP_FIGURES}
            why += [f"{_LABEL[k]} {ops[k]:.3f} vs {overall_op[k]:.3f} overall" for k in OP_FIGURES
                    if ops[k] is not None and overall_op[k] is not None and overall_op[k] - ops[k] > MAX_GAP]
            rows.append({"group": str(g), "n": n, "prevalence": _num(r["prevalence"]), "value": _num(value),
                         "ci": [_num(lo), _num(hi)], **ops, "ece": _num(r["ece"]),
                         "flagged": bool(why), "reasons": why})
            kept.append(str(g))
        col: dict[str, Any] = {"groups": rows, "flagged": [r["group"] for r in rows if r.get("flagged")],
                               "suppressed": sum(1 for r in rows if r.get("suppressed"))}
        values = [r["value"] for r in rows if not r.get("suppressed") and r["value"] is not None]
        col["largest_gap"] = float(max(values) - min(values)) if len(values) > 1 else None
        col["equalized_odds_difference"], col["demographic_parity_difference"] = \
            _fairness(fm, truth, calls, labels, kept) if calls is not None and len(kept) > 1 else (None, None)
        col["column_flags"] = [f"{name} difference {col[key]:.3f} > {MAX_GAP:.2f}" for key, name in
                               (("equalized_odds_difference", "equalized-odds"),
                                ("demographic_parity_difference", "demographic-parity"))
                               if col[key] is not None and col[key] > MAX_GAP]
        out["columns"][column] = col
    return out


_LABEL = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV"}


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fairness(fm: Any, truth: np.ndarray, calls: np.ndarray, labels: np.ndarray,
              kept: list[str]) -> tuple[float | None, float | None]:
    """fairlearn's differences over the reported groups; multiclass: the largest over classes (one-vs-rest)."""
    import warnings

    m = np.isin(labels, kept)
    eod, dpd = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(truth.shape[1]):
            yt, yp, g = truth[m, j], calls[m, j], labels[m]
            eod.append(float(fm.equalized_odds_difference(yt, yp, sensitive_features=g)))
            dpd.append(float(fm.demographic_parity_difference(yt, yp, sensitive_features=g)))
    return _num(np.nanmax(eod)) if eod else None, _num(np.nanmax(dpd)) if dpd else None


# --------------------------------------------------------------------------- rendering


def _f(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _classify(result: Mapping[str, Any]) -> bool:
    return result.get("problem") in ("binary", "multiclass")


def _rows(result: Mapping[str, Any], column: str) -> list[list[str]]:
    rows = []
    width = len(_head(result))
    for r in result["columns"][column]["groups"]:
        if r.get("suppressed"):
            rows.append([r["group"], r["n"], "suppressed", *[""] * (width - 3)])
            continue
        lo, hi = r["ci"]
        value, _, ci = M.format_estimate(r["value"], (lo, hi) if lo is not None and hi is not None else None,
                                         style="{lo}–{hi}").partition(" ")  # rounded to what its CI supports
        ci = ci or "n/a"
        flag = ("**FLAGGED**: " + "; ".join(r.get("reasons") or [])).rstrip(": ") if r["flagged"] else ""
        if _classify(result):
            rows.append([r["group"], str(r["n"]), _f(r["prevalence"]), value, ci, _f(r["sensitivity"]),
                         _f(r["specificity"]), _f(r.get("ppv")), _f(r.get("npv")), _f(r["ece"]), flag])
        else:
            rows.append([r["group"], str(r["n"]), value, ci, flag])
    return rows


def _head(result: Mapping[str, Any]) -> list[str]:
    if not _classify(result):
        return ["group", "n", result["metric"], "95% CI", "flag"]
    return ["group", "n", "prevalence", result["metric"], "95% CI", "sensitivity", "specificity", "PPV", "NPV", "ECE",
            "flag"]


def _summary(result: Mapping[str, Any], column: str) -> str:
    col = result["columns"][column]
    parts = [f"largest {result['metric']} gap {_f(col['largest_gap'])}"]
    if _classify(result):
        parts += [f"equalized-odds difference {_f(col['equalized_odds_difference'])}",
                  f"demographic-parity difference {_f(col['demographic_parity_difference'])}"]
    flagged = ", ".join(col["flagged"]) or "none"
    text = "; ".join(parts) + f"; flagged groups: {flagged}"
    if col.get("column_flags"):
        text += "; column FLAGGED: " + "; ".join(col["column_flags"])
    return text + "."


def _intro(result: Mapping[str, Any]) -> str:
    o = result["overall"]
    lo, hi = o["ci"]
    ops = ", ".join(f"{_LABEL[k]} {_f(o[k])}" for k in OP_FIGURES if o.get(k) is not None)
    ci = (_num(lo), _num(hi)) if _num(lo) is not None and _num(hi) is not None else None
    return (f"Overall {result['metric']} " + M.format_estimate(_num(o["value"]), ci, style="(95% CI {lo}–{hi})")
            + (f"; at the operating point {ops}" if ops else "") + ", "
            f"{o['n']} units. Groups with fewer than {result['min_group_size']} units are suppressed and left "
            "out of the gaps." + (" Sensitivity, specificity, PPV and NPV at the stored operating point"
                                  + (" (macro over classes, one-vs-rest)" if result.get("problem") == "multiclass"
                                     else "") + "; fairness differences from fairlearn." if _classify(result) else "")
            + " " + result.get("rule", flag_rule(result["mode"], result["metric"])))


def audit_html(result: Mapping[str, Any]) -> str:
    """The audit as report HTML (one table per column)."""
    e = html.escape
    parts = [f'<p class="note">{e(_intro(result))}</p>']
    for column in result["columns"]:
        head = "".join(f"<th>{e(h)}</th>" for h in _head(result))
        body = "".join(
            "<tr" + (' class="headline"' if "FLAGGED" in r[-1] else "") + ">"
            + "".join(f"<td>{e(c.replace('**FLAGGED**', 'FLAGGED'))}</td>" for c in r) + "</tr>"
            for r in _rows(result, column))
        parts.append(f"<h3>{e(column)}</h3><table><tr>{head}</tr>{body}</table>"
                     f'<p class="note">{e(_summary(result, column))}</p>')
    return "\n".join(parts)


def audit_markdown(result: Mapping[str, Any]) -> str:
    """The audit as Markdown for the model card."""
    parts = [_intro(result)]
    for column in result["columns"]:
        head = _head(result)
        lines = [f"**{column}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in _rows(result, column)]
        parts.append("\n".join(lines) + "\n\n" + _summary(result, column))
    return "\n\n".join(parts)
