"""A run's evaluation report: one self-contained HTML file with embedded PNG figures.

Figures are drawn with matplotlib's object API (no pyplot, no global backend switch) and
embedded as base64 ``data:`` URIs; the page loads no external CSS, JavaScript or fonts.
A figure that cannot be drawn (one class in ``y_true``, empty history, lifelines missing)
is replaced by a one-line note: writing the report never fails because of the data.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmm import __version__
from medmm import metrics as M
from medmm.io import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["best_step", "decision_rule", "figure_html", "figures_drawn", "html_table", "time_figure", "write_report"]

log = logging.getLogger(__name__)

MAX_CURVES = 10
"""At most this many per-class ROC / PR curves are drawn (the most prevalent classes)."""

MAX_POINTS = 5000
"""Scatter plots draw a fixed random subset of at most this many points."""

_Builder = Callable[[], "Figure"]

_SPLIT_STYLE = {"train": "-", "val": "-", "test": "--"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#fff;line-height:1.45}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0;font-size:.95em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.headline td{font-weight:600;background:#fff8c5}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}
.note{color:#57606a;font-style:italic}
"""


class _Skip(Exception):
    """A figure that cannot be drawn for this data; the message says why."""


# --------------------------------------------------------------------------- public API


def write_report(
    path: Path,
    *,
    title: str,
    problem: str,
    history: list[dict[str, Any]],
    y_true: Any,
    y_score: Any,
    label_names: Sequence[str] | None,
    metrics: dict[str, float],
    ci: dict[str, tuple[float, float]] | None = None,
    time: Any = None,
    event: Any = None,
    extra_sections: list[tuple[str, str]] | None = None,
    summary: dict[str, str] | None = None,
) -> Path:
    """Write the HTML report of one evaluated model to ``path`` (atomically) and return it.

    ``history`` holds the rows of ``metrics.jsonl`` (``epoch``, ``split``, ``loss``, ``lr``
    and metric names); ``y_true`` / ``y_score`` / ``time`` / ``event`` follow
    :mod:`medmm.metrics`. ``extra_sections`` are ``(heading, html)`` pairs appended as they
    are: their HTML is trusted and inserted verbatim; every other text is escaped.
    """
    data = M.prepare_inputs(problem, y_true, y_score, time, event)
    names, names_note = _label_names(problem, data, label_names)
    head_metric, head_mode = M.headline(problem)
    parts = [
        page_header(title, problem, len(data)),
        html_section("Summary", kv_table(summary or {})) if summary else "",
        html_section("Metrics", _metrics_table(metrics, ci, head_metric)),
        html_section("Training", _figure(
            "Training curves", lambda: _fig_training(history, head_metric, head_mode))),
        html_section("Evaluation", (html_note(names_note) if names_note else "") + "".join(
            _figure(caption, build) for caption, build in _eval_figures(problem, data, names))),
    ]
    if problem in ("multiclass", "multilabel") and len(data) and data.valid:
        parts.append(html_section("Per-class metrics", _per_class_table(problem, data, names)))
    for heading, body in extra_sections or []:
        parts.append(html_section(heading, body))
    page = html_page(title, "\n".join(p for p in parts if p))
    path = Path(path)
    write_text_atomic(path, page)
    return path


# --------------------------------------------------------------------------- HTML


def esc_html(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes too)."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):  # e.g. examples per split: "train 35 · val 12 · test 11", never raw JSON
        return " · ".join(f"{esc_html(k)} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return esc_html(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "n/a" if not math.isfinite(float(value)) else f"{float(value):.4f}"


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page (medmm's style sheet inline) around ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc_html(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def page_header(title: str, problem: str, n: int) -> str:
    """The page heading: title, problem, number of examples and the UTC time of writing."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{problem} problem · {n} evaluated rows · medmm {__version__} · {stamp}"
    return f"<h1>{esc_html(title)}</h1>\n<p class=\"meta\">{esc_html(meta)}</p>"


def html_section(heading: str, body: str) -> str:
    """A ``<section>`` with an escaped ``<h2>`` heading."""
    return f"<section>\n<h2>{esc_html(heading)}</h2>\n{body}\n</section>"


def html_note(text: str) -> str:
    """An escaped explanatory note paragraph."""
    return f'<p class="note">{esc_html(text)}</p>'


def kv_table(rows: dict[str, Any]) -> str:
    """A two-column key / value table (values formatted as the report formats numbers)."""
    body = "".join(f"<tr><th>{esc_html(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table for a report section: a header row, then one row per sequence of cells.

    Text is escaped; numbers are printed as the report prints them (4 decimals, ``n/a`` when
    undefined) and right-aligned.
    """
    head = "".join(f"<th>{esc_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        return f'<td class="num">{_fmt(value)}</td>'
    return f"<td>{_fmt(value)}</td>"


def _metrics_table(
    metrics: dict[str, float], ci: dict[str, tuple[float, float]] | None, head: str
) -> str:
    if not metrics:
        return html_note("No metrics were computed.")
    has_ci = bool(ci)
    rows = []
    for name, value in metrics.items():
        cls = ' class="headline"' if name == head else ""
        low, high = (ci or {}).get(name, (math.nan, math.nan))
        defined = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
        shown = M.format_estimate(value, (low, high) if defined else None, style="[{lo}, {hi}]")
        figure, _, interval = shown.partition(" ")
        cells = f"<td>{esc_html(name)}</td><td class=\"num\">{esc_html(figure)}</td>"
        if has_ci:
            cells += f'<td class="num">{esc_html(interval)}</td>'
        rows.append(f"<tr{cls}>{cells}</tr>")
    header = "<tr><th>metric</th><th>value</th>" + ("<th>95% CI</th>" if has_ci else "") + "</tr>"
    foot = html_note(f"Headline metric: {head}. n/a = undefined for these data (e.g. one class only). Figures are "
                 "rounded to two significant digits of their CI's width" + (f"; CIs: {M.CI_METHOD}." if has_ci else "."))
    return f"<table>{header}{''.join(rows)}</table>\n{foot}"


def _per_class_table(problem: str, data: Any, names: list[str]) -> str:
    pred = _hard_predictions(problem, data).astype(bool)
    truth = data.y.astype(bool)
    rule = decision_rule(problem)
    rows = []
    for k, name in enumerate(names):
        y, p = truth[:, k], pred[:, k]
        tp, fp, fn, tn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum()), int((~y & ~p).sum())
        none = "n/a (no positives)" if not y.any() else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else "n/a (no positives, no calls)"
        rows.append((str(name), int(y.sum()), none or M.auroc(data.y[:, k], data.s[:, k]),
                     none or M.auprc(data.y[:, k], data.s[:, k]), none or tp / (tp + fn),
                     tn / (tn + fp) if tn + fp else "n/a (no negatives)", f1, tp, fp, fn))
    head = ["class", "positives", "AUROC", "AUPRC", f"sensitivity ({rule})", f"specificity ({rule})",
            f"F1 ({rule})", "TP", "FP", "FN"]
    return html_table(head, rows) + html_note(
        f"Calls by {rule}, the rule of the confusion matrix and of predictions.csv's 'predicted' column.")


def decision_rule(problem: str) -> str:
    """The name of the default decision of ``problem``'s hard calls (``predicted``, confusion matrix)."""
    return "arg-max" if problem == "multiclass" else f"P >= {M.THRESHOLD:g}"


def figures_drawn(problem: str) -> int:
    """How many figures a run's finish draws for ``problem``: the report's training curves and evaluation
    figures, and the decision curves the evaluation adds for binary and multilabel tasks (the ETA times
    them with :func:`time_figure`)."""
    return {"binary": 5, "multiclass": 4, "multilabel": 3}.get(problem, 2)


def time_figure(clock: Callable[[], float]) -> float:
    """Seconds to draw and embed one report figure on this machine now: a two-panel training-curves
    figure of 30 epochs (the report's figures hold 1-3 panels), drawn and PNG-encoded as the report does. It is drawn twice and the second is
    timed: matplotlib's import and the first figure's one-offs (fonts, the PNG writer; 2.4x a later
    figure in the image demo at load 3) are not what each of the finish's figures costs, and the
    finish no longer pays them."""
    history = [{"epoch": e, "split": split, "loss": 1.0 / e, "auroc": 1.0 - 0.5 / e}
               for e in range(1, 31) for split in ("train", "val")]
    _figure("probe", lambda: _fig_training(history, "auroc", "max"))
    started = clock()
    _figure("probe", lambda: _fig_training(history, "auroc", "max"))
    return clock() - started


def figure_html(caption: str, build: _Builder) -> str:
    """Public form of the report's figure embedding (an ``<figure>`` with a PNG, or a note) for sections."""
    return _figure(caption, build)


def _figure(caption: str, build: _Builder) -> str:
    """Render ``build()`` as an embedded PNG, or a note saying why it was skipped."""
    try:
        fig = build()
    except _Skip as skip:
        return html_note(f"{caption}: not shown ({skip}).")
    except Exception as exc:  # a figure must never cost a finished run its report
        log.warning("report figure %r failed", caption, exc_info=True)
        return html_note(f"{caption}: not shown (drawing failed: {type(exc).__name__}: {exc}).")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{png}" alt="{esc_html(caption)}">'
            f"<figcaption>{esc_html(caption)}</figcaption></figure>")


# --------------------------------------------------------------------------- data helpers


def _label_names(problem: str, data: Any, given: Sequence[str] | None) -> tuple[list[str], str]:
    """Class names for the figures and a note when ``given`` did not fit (then indices)."""
    if problem in ("regression", "survival"):
        return [], ""
    k = 2 if problem == "binary" else data.s.shape[1]
    default = [f"label {i}" for i in range(k)] if problem == "multilabel" else \
        [str(i) for i in range(k)]
    if given is None:
        return default, ""
    names = [str(n) for n in given]
    if len(names) == k:
        return names, ""
    log.warning("report: %d label names for %d classes; using indices", len(names), k)
    return default, f"{len(names)} label names were given for {k} classes; indices are shown."


def _hard_predictions(problem: str, data: Any) -> np.ndarray:
    if problem == "multiclass":
        return np.eye(data.s.shape[1], dtype=int)[np.argmax(data.s, axis=1)]
    return (data.s >= M.THRESHOLD).astype(int)


def _as_columns(problem: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C]`` one-vs-rest targets and scores (binary: the positive class only)."""
    if problem == "binary":
        return data.y[:, None], data.s[:, None]
    return data.y, data.s


def _eval_figures(problem: str, data: Any, names: list[str]) -> list[tuple[str, _Builder]]:
    """``(caption, builder)`` of each evaluation figure of ``problem``."""
    if len(data) == 0:
        return [("Evaluation figures", _raise("no evaluated rows"))]
    if not data.valid:
        return [("Evaluation figures", _raise("predictions contain NaN or infinity"))]
    if problem == "regression":
        return [("Predicted vs true and residuals", lambda: _fig_regression(data.y, data.s))]
    if problem == "survival":
        return [("Kaplan-Meier curves by predicted risk (median split)",
                 lambda: _fig_km(data.time, data.event, data.s))]
    y_cols, s_cols = _as_columns(problem, data)
    curve_names = [names[1]] if problem == "binary" else names
    kind = {"binary": f"Positive class {names[1]!r}: ", "multiclass": "One-vs-rest ",
            "multilabel": "Per-label "}[problem]
    curves = (f"{kind}ROC and precision-recall curves",
              lambda: _fig_roc_pr(y_cols, s_cols, curve_names))
    if problem == "multilabel":
        return [curves]
    rule = decision_rule(problem)
    if problem == "binary":
        y, pred, calib, positive = data.y, (data.s >= M.THRESHOLD).astype(int), \
            f"positive class {names[1]!r}", names[1]
    else:
        y, pred, calib, positive = np.argmax(data.y, axis=1), np.argmax(data.s, axis=1), "top label", None
    return [
        (f"Confusion matrix (calls by {rule}, as predictions.csv's 'predicted' column)",
         lambda: _fig_confusion(y, pred, names)),
        curves,
        (f"Reliability diagram ({calib})", lambda: _fig_calibration(y, data.s, positive)),
    ]


def _raise(reason: str) -> _Builder:
    def build() -> Figure:
        raise _Skip(reason)

    return build


# --------------------------------------------------------------------------- figures


def _new_figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, **kw: Any
) -> tuple[Figure, np.ndarray]:
    """A figure not attached to pyplot (no global state) and its axes, flattened."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()


def _epoch_series(history: list[dict[str, Any]], key: str) -> dict[str, tuple[list, list]]:
    """``{split: (epochs, values)}`` for ``key``; the last row logged per split and epoch wins."""
    last: dict[str, dict[float, float]] = {}
    for row in history:
        epoch, value = row.get("epoch"), row.get(key)
        if epoch is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        last.setdefault(str(row.get("split", "train")), {})[float(epoch)] = float(value)
    return {split: (sorted(v), [v[e] for e in sorted(v)]) for split, v in last.items()}


def _fig_training(history: list[dict[str, Any]], head: str, mode: str) -> Figure:
    panels = [(key, _epoch_series(history, key)) for key in ("loss", head, "lr")]
    panels = [(k, {sp: v for sp, v in series.items() if sp == "train"} if k == "lr" else series)
              for k, series in panels]  # val rows repeat the training learning rate
    panels = [(key, series) for key, series in panels if series]
    if not panels:
        raise _Skip("no per-epoch history was logged")
    fig, axes = _new_figure(4.2 * len(panels), 3.4, 1, len(panels))
    for ax, (key, series) in zip(axes, panels):
        for split, (epochs, values) in sorted(series.items()):
            ax.plot(epochs, values, _SPLIT_STYLE.get(split, ":"), marker="o", ms=3, label=split)
        ax.set(xlabel="epoch", title=key if key != "lr" else "learning rate")
        if key == head and "val" in series:
            epochs, values = series["val"]
            best = (np.argmax if mode == "max" else np.argmin)(values)  # the first best, as the engine keeps it
            step = best_step(history, mode, head)
            ax.axvline(epochs[best], color="grey", ls=":", lw=1,
                       label=f"best val (epoch {epochs[best]:g}" + (f", step {step})" if step is not None else ")"))
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def best_step(history: list[dict[str, Any]], mode: str, metric: str) -> int | None:
    """The step of the first best validation ``metric`` in ``history`` (the checkpoint the engine keeps)."""
    rows = [r for r in history if r.get("split") == "val" and isinstance(r.get(metric), (int, float))
            and math.isfinite(r[metric])]
    if not rows:
        return None
    best = (max if mode == "max" else min)(r[metric] for r in rows)
    return next((int(r["step"]) for r in rows if r[metric] == best and "step" in r), None)


def _fig_confusion(y: np.ndarray, pred: np.ndarray, names: list[str]) -> Figure:
    from sklearn.metrics import confusion_matrix

    k = len(names)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(3.0 + 0.45 * k, 12.0)
    fig, (ax,) = _new_figure(side + 1.0, side)
    image = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of true class", shrink=0.8)
    ticks = np.arange(k)
    labels = [_short(n) for n in names]
    tilt = max(map(len, labels)) * k > 40
    ax.set_xticks(ticks, labels, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true")
    if k <= 20:
        for i, j in np.ndindex(cm.shape):
            ax.text(j, i, f"{cm[i, j]}\n{rate[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if rate[i, j] > 0.5 else "black")
    return fig


def _fig_roc_pr(y: np.ndarray, s: np.ndarray, names: list[str]) -> Figure:
    from sklearn.metrics import precision_recall_curve, roc_curve

    defined = [k for k in range(y.shape[1]) if M.has_both_classes(y[:, k])]
    if not defined:
        raise _Skip("y_true has a single class, so ROC and PR curves are undefined")
    shown = sorted(defined, key=lambda k: -int(y[:, k].sum()))[:MAX_CURVES]
    fig, (roc_ax, pr_ax) = _new_figure(11.0 if len(shown) > 1 else 10.0, 4.4, 1, 2)
    styles = ("-", "--", "-.", ":")
    for i, k in enumerate(shown):  # earlier curves wider, dashed and below: a curve under another shows round it
        style = {"lw": 1.5 + 2.5 * (len(shown) - 1 - i) / max(1, len(shown) - 1), "ls": styles[i % 4],
                 "zorder": 2 + i}
        fpr, tpr, _ = roc_curve(y[:, k], s[:, k])
        precision, recall, _ = precision_recall_curve(y[:, k], s[:, k])
        auc, ap = M.auroc(y[:, k], s[:, k]), M.auprc(y[:, k], s[:, k])
        roc_ax.plot(fpr, tpr, **style, label=f"{_short(names[k])}: AUC {auc:.3f}, AP {ap:.3f}")
        pr_ax.step(recall, precision, where="post", **style)
    roc_ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    if len(shown) == 1:
        pr_ax.axhline(y[:, shown[0]].mean(), color="grey", ls="--", lw=1, label="prevalence")
        pr_ax.legend(fontsize=8, loc="lower left")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title="ROC" + (f" (positive class {_short(names[shown[0]])})" if len(shown) == 1 else ""))
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.3)
    if len(shown) == 1:
        roc_ax.legend(fontsize=8, loc="lower right")
    else:  # one legend for both panels, beside them: curves share colours
        fig.legend(*roc_ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    if len(shown) < y.shape[1]:
        fig.suptitle(f"{len(shown)} of {y.shape[1]} classes shown: the most prevalent "
                     "with both outcomes present", fontsize=9)
    return fig


def _fig_calibration(y: np.ndarray, prob: np.ndarray, positive: str | None = None) -> Figure:
    if not M.is_probability(prob):
        raise _Skip("scores are not probabilities in [0, 1]")
    mean_pred, observed, _ = M.reliability_curve(y, prob, n_bins=10)
    ece = M.expected_calibration_error(y, prob)
    fig, (ax, hist) = _new_figure(5.2, 6.0, 2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfectly calibrated")
    ax.plot(mean_pred, observed, marker="o", lw=1.5, label=f"model (ECE {ece:.3f}, 15 bins)")
    ax.set(ylabel=f"observed fraction {_short(positive or 'positive')}" if prob.ndim == 1 else "accuracy",
           xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _, confidence = M.calibration_pairs(y, prob)
    hist.hist(confidence, bins=np.linspace(0.0, 1.0, 11), color="#4c72b0", edgecolor="white")
    what = f"predicted P({_short(positive or 'positive')})" if prob.ndim == 1 else \
        "confidence (top-label probability)"
    hist.set(xlabel=what, ylabel="count", xlim=(0, 1))
    return fig


def _fig_regression(y: np.ndarray, s: np.ndarray) -> Figure:
    n = len(y)
    keep = _subsample(n)
    y, s = y[keep], s[keep]
    fig, (ax, res) = _new_figure(10.0, 4.4, 1, 2)
    lo, hi = float(min(y.min(), s.min())), float(max(y.max(), s.max()))
    ax.scatter(y, s, s=8, alpha=0.5)
    ax.plot([lo, hi], [lo, hi], color="black", ls="--", lw=1, label="y = x")
    ax.set(xlabel="true", ylabel="predicted", title="Predicted vs true")
    ax.legend(fontsize=8)
    res.scatter(s, y - s, s=8, alpha=0.5)
    res.axhline(0, color="black", ls="--", lw=1)
    res.set(xlabel="predicted", ylabel="residual (true - predicted)", title="Residuals")
    for a in (ax, res):
        a.grid(alpha=0.3)
    if len(keep) < n:
        fig.suptitle(f"random subset of {len(keep)} of {n} points", fontsize=9)
    return fig


def _fig_km(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> Figure:
    try:
        from lifelines import KaplanMeierFitter
        from lifelines.statistics import logrank_test
    except ImportError:
        raise _Skip("lifelines is not installed") from None
    high = risk > np.median(risk)
    if high.all() or not high.any():
        raise _Skip("all predicted risks are equal, so there is no median split")
    fig, (ax,) = _new_figure(6.4, 4.4)
    for mask, label in ((~high, "low risk (≤ median)"), (high, "high risk (> median)")):
        km = KaplanMeierFitter().fit(time[mask], event[mask])  # drawn here: lifelines'
        curve = km.survival_function_.iloc[:, 0]  # own plotting would import pyplot
        band = km.confidence_interval_survival_function_
        (line,) = ax.step(curve.index, curve.to_numpy(), where="post",
                          label=f"{label}, n={int(mask.sum())}")
        ax.fill_between(band.index, band.iloc[:, 0], band.iloc[:, 1], step="post", alpha=0.2,
                        color=line.get_color(), lw=0)
    p = logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02),
           title=f"Kaplan-Meier by predicted risk (log-rank p = {p:.3g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _subsample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
