"""HTML sections of the evaluation report (and of a training run's report): operating point, subgroups, shift."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["evaluation_sections", "recalibration_html"]


def recalibration_html(recal: Mapping[str, Any]) -> str:
    """Before / after metrics of a recalibration on the held-out part of the new data."""
    names = [k for k in recal["before"] if k in ("ece", "brier", "auroc", "accuracy", "macro_f1", "f1")]

    def f(v: Any) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=\"num\">{f(recal['before'][k])}</td>"
                   f"<td class=\"num\">{f(recal['after'][k])}</td></tr>" for k in names)
    cal = recal["calibrator"]
    how = f"temperature {cal['temperature']:.3f}" if cal["method"] == "temperature" else "isotonic regression"
    note = (f"{how}, fitted on {recal['fit_units']} units of the new data and checked on the other "
            f"{recal['held_out_units']}; the recalibrated model is a new run directory (recalibrated-run/), "
            "the original run is unchanged.")
    return (f"<table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>"
            f'<p class="note">{html.escape(note)}</p>')


def evaluation_sections(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(heading, html)`` sections of ``evaluation.html``."""
    from medmm.evaluation.shift import shift_html
    from medmm.evaluation.subgroups import audit_html
    from medmm.evaluation.threshold import stats_table

    out: list[tuple[str, str]] = []
    if result.get("operating_stats"):
        out.append(("Operating point", stats_table(result["operating_stats"], result["operating_point"])[0]))
    elif result["problem"] in ("binary", "multiclass"):
        out.append(("Operating point", '<p class="note">This run stores no operating point (trained by an '
                                       'older medmm).</p>'))
    out.append(("Subgroups", audit_html(result["subgroups"]) if result.get("subgroups") else
                '<p class="note">Not audited: no subgroup columns were given (--subgroups or '
                'data.subgroup_columns).</p>'))
    out.append(("Distribution shift vs training data", shift_html(result["shift"])))
    if result.get("conformal"):  # prediction sets and decision curves (#32)
        from medmm.evaluation.conformal import coverage_html

        out.append(("Prediction sets and referral", coverage_html(result["conformal"], result["conformal_sets"],
                                                                  "new data")))
    if result.get("decision_curve"):
        from medmm.evaluation.decision_curve import curves_html

        out.append(("Decision curves", curves_html(result["decision_curve"], "the new data")))
    if result.get("recalibration") and result["recalibration"]["method"] == "conformal":
        from medmm.evaluation.conformal import recalibration_html as conformal_recalibration_html

        out.append(("Conformal re-calibration", conformal_recalibration_html(result["recalibration"])))
    elif result.get("recalibration"):
        out.append(("Recalibration", recalibration_html(result["recalibration"])))
    return out
