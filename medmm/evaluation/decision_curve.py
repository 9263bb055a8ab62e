"""Decision-curve analysis (Vickers & Elkin 2006): is using the model better than treating everyone or no one?

Net benefit at threshold probability ``pt`` (the risk at which a clinician would act):
``NB = TP/n - FP/n * pt / (1 - pt)``; treat-all: ``prevalence - (1 - prevalence) * pt / (1 - pt)``;
treat-none: 0. Figures match ``dcurves`` (checked in ``tests/test_decision_curve.py``); 95% CIs are
percentile bootstrap over units (model and treat-all resampled together). Binary tasks get one
curve, multi-label tasks one per label (each label its own yes / no decision).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TABLE_AT", "THRESHOLDS", "curves_html", "curves_markdown", "decision_curves", "net_benefit"]

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
TABLE_AT = (0.05, 0.1, 0.2, 0.3, 0.5)
MAX_LABELS = 10


def net_benefit(y: Any, p: Any, thresholds: Sequence[float] = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """``(model, treat_all)`` net benefit at each threshold (a unit is treated when ``p >= pt``)."""
    y, p = np.asarray(y).astype(bool).ravel(), np.asarray(p, dtype=float).ravel()
    t = np.asarray(thresholds, dtype=float)
    n = max(len(y), 1)
    odds = t / (1 - t)
    treat = p[None, :] >= t[:, None]
    tp, fp = (treat & y).sum(axis=1), (treat & ~y).sum(axis=1)
    prev = y.mean() if len(y) else math.nan
    return tp / n - fp / n * odds, prev - (1 - prev) * odds


def _one(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    model, all_ = net_benefit(y, p)
    out = {"thresholds": THRESHOLDS.tolist(), "model": model.tolist(), "treat_all": all_.tolist(),
           "prevalence": float(y.mean()) if len(y) else math.nan, "n": len(y)}
    if n_boot and len(y) > 1:
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, len(y), len(y))
            m, a = net_benefit(y[i], p[i])
            boots.append((m, m - np.maximum(a, 0.0)))
        m = np.array([b[0] for b in boots])
        d = np.array([b[1] for b in boots])
        gain = model - np.maximum(all_, 0.0)
        # percentile intervals widened to hold each point estimate, as every medmm CI (medmm.metrics.interval)
        out["model_ci"] = [np.fmin(np.quantile(m, 0.025, axis=0), model).tolist(),
                           np.fmax(np.quantile(m, 0.975, axis=0), model).tolist()]
        out["gain_ci"] = [np.fmin(np.quantile(d, 0.025, axis=0), gain).tolist(),
                          np.fmax(np.quantile(d, 0.975, axis=0), gain).tolist()]
    return out


def decision_curves(problem: str, y: Any, scores: Any, label_names: Sequence[str] | None, *, n_boot: int = 200,
                    seed: int = 0) -> dict[str, Any] | None:
    """``{label: curve}`` (binary: the positive class) or ``None`` for other problems.

    Each curve: ``thresholds``, ``model``, ``treat_all``, ``prevalence``, ``n`` and, with ``n_boot``,
    ``model_ci`` (lower, upper) and ``gain_ci``: the model's net benefit minus the better of
    treat-all and treat-none.
    """
    if problem not in ("binary", "multilabel") or y is None:
        return None
    s, t = np.asarray(scores, dtype=float), np.asarray(y)
    names = [str(n) for n in (label_names or [])]
    if problem == "binary":
        return {names[1] if len(names) == 2 else "1": _one(t.astype(int).ravel(), s.ravel(), n_boot, seed)}
    k = s.shape[1]
    names = names if len(names) == k else [str(i) for i in range(k)]
    return {names[j]: _one((t[:, j] >= 0.5).astype(int), s[:, j], n_boot, seed + j) for j in range(min(k, MAX_LABELS))}


def _rows(curve: Mapping[str, Any]) -> list[list[str]]:
    th = list(curve["thresholds"])
    rows = []
    for pt in TABLE_AT:
        i = min(range(len(th)), key=lambda j: abs(th[j] - pt))
        m, a = curve["model"][i], curve["treat_all"][i]
        ci = curve.get("model_ci")
        g = curve.get("gain_ci")
        cell = f"{m:.4f}" + (f" ({ci[0][i]:.4f} to {ci[1][i]:.4f})" if ci else "")
        gain = m - max(a, 0.0)
        gcell = f"{gain:+.4f}" + (f" ({g[0][i]:+.4f} to {g[1][i]:+.4f})" if g else "")
        avoided = 100 * (m - a) / (pt / (1 - pt))
        rows.append([f"{pt:.2f}", cell, f"{a:.4f}", "0", gcell, f"{avoided:.1f}"])
    return rows


_HEAD = ["threshold probability", "net benefit: model (95% CI)", "treat all", "treat none",
         "model - best default (95% CI)", "net interventions avoided per 100"]
_NOTE = ("Net benefit = TP/n - FP/n x pt/(1 - pt): true positives found per patient, minus false positives "
         "weighted by the odds at the threshold. The model is worth using at a threshold where it beats both "
         "treating everyone and no one (a positive 'model - best default'). 95% bootstrap CIs.")


def _figure(curves: Mapping[str, Mapping[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    top = 0.0
    for name, c in curves.items():
        x = np.asarray(c["thresholds"])
        line, = ax.plot(x, c["model"], lw=1.6, label=f"model: {name}")
        if "model_ci" in c:
            ax.fill_between(x, c["model_ci"][0], c["model_ci"][1], color=line.get_color(), alpha=0.15, lw=0)
        ax.plot(x, c["treat_all"], ls="--", lw=1, color=line.get_color(), alpha=0.7, label=f"treat all: {name}")
        top = max(top, c["prevalence"])
    ax.axhline(0, color="black", lw=1, label="treat none")
    ax.set(xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1),
           ylim=(-0.05 - 0.05 * top, max(top * 1.1, 0.05)), title="Decision curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def curves_html(curves: Mapping[str, Mapping[str, Any]], split: str) -> str:
    """The decision-curve figure and, per label, a table at the usual thresholds."""
    from medmm.report import figure_html, html_table

    parts = [figure_html(f"Decision curves on {split} (shaded: 95% CI of the model's net benefit)",
                         lambda: _figure(curves))]
    for name, c in curves.items():
        parts.append(f"<p><b>{html.escape(name)}</b> (prevalence {c['prevalence']:.3f}, {c['n']} units)</p>")
        parts.append(html_table(_HEAD, _rows(c)))
    parts.append(f'<p class="note">{html.escape(_NOTE)}</p>')
    return "\n".join(parts)


def curves_markdown(curves: Mapping[str, Mapping[str, Any]], split: str) -> str:
    """The model card / TRIPOD form: one table per label."""
    out = [f"Decision-curve analysis on the {split} split. {_NOTE}"]
    for name, c in curves.items():
        out.append(f"\n**{name}** (prevalence {c['prevalence']:.3f}, {c['n']} units)\n")
        out.append("| " + " | ".join(_HEAD) + " |\n|" + "---|" * len(_HEAD))
        out += ["| " + " | ".join(r) + " |" for r in _rows(c)]
    return "\n".join(out)
