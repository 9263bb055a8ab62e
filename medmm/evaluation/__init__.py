"""Evaluation the way a clinical validation study reports it.

- :mod:`~medmm.evaluation.threshold`: operating point chosen on the validation split;
- :mod:`~medmm.evaluation.subgroups`: subgroup audit (fairlearn), small-cell suppression;
- :mod:`~medmm.evaluation.calibration`: temperature / isotonic recalibration;
- :mod:`~medmm.evaluation.shift`: distribution shift against the training data;
- :mod:`~medmm.evaluation.external`: ``medmm evaluate RUN --data labelled``.

:func:`training_evaluation` is what a training run adds to its report, summary and card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["NOT_AUDITED", "check_subgroup_columns", "f1_line", "training_evaluation"]

NOT_AUDITED = "Not audited: no subgroup columns were given (set `data.subgroup_columns`)."


def check_subgroup_columns(data: Path, cfg: Any) -> None:
    """Before training: every ``data.subgroup_columns`` entry exists (a table column or an allowed DICOM attribute)."""
    from medmm.config import as_config
    from medmm.errors import DataError
    from medmm.evaluation.attributes import DICOM_ATTRIBUTES, table_columns
    from medmm.evaluation.subgroups import parse_bands, require_fairlearn

    cfg = as_config(cfg)
    columns = list(cfg.data.subgroup_columns or [])
    if cfg.eval.conformal.group_column and cfg.eval.conformal.group_column not in columns:  # (#32)
        columns.append(cfg.eval.conformal.group_column)
    parse_bands(cfg.eval.bands)
    if not columns:
        return
    require_fairlearn()
    known = list(DICOM_ATTRIBUTES) if Path(data).is_dir() else table_columns(Path(data))
    absent = [c for c in columns if c not in known]
    if absent:
        where = "an allowed DICOM header attribute" if Path(data).is_dir() else f"a column of {Path(data).name}"
        key = "data.subgroup_columns" if absent[0] in (cfg.data.subgroup_columns or []) else \
            "eval.conformal.group_column"
        raise DataError(f"{key}: {absent[0]!r} is not {where}; choose from {known[:20]}")


def f1_line(f1: dict[str, Any], split_name: str) -> str:
    """``micro F1 0.81 (95% CI ...), macro F1 ... at the per-label thresholds chosen on val (test)``."""
    import math

    def one(k: str) -> str:
        lo, hi = f1["ci"].get(k, (float("nan"),) * 2)
        return f"{k.replace('_f1', ' F1')} {f1[k]:.4f}" + (f" (95% CI {lo:.4f}-{hi:.4f})" if math.isfinite(lo) and math.isfinite(hi) else "")

    return f"{one('micro_f1')}, {one('macro_f1')} on {split_name} at the per-label thresholds chosen on val"


def training_evaluation(task: Any, trainer: Any, model: Any, bundle: Any, test_ev: Any, split_name: str,
                        data: Path, cfg: Any, run_dir: Path, *, main: bool) -> dict[str, Any]:
    """Operating point (chosen on val, reported on ``test_ev``), subgroup audit and the training profile.

    Call on every rank (it evaluates the validation split); only ``main`` writes. Returns
    ``{"sections": [(heading, html)], "card": markdown, "operating_point": op | None, "summary": {...}}``.
    """
    from medmm.evaluation.attributes import unit_attributes
    from medmm.evaluation.shift import write_training_profile
    from medmm.evaluation.subgroups import audit, audit_html, audit_markdown, group_labels, parse_bands
    from medmm.evaluation.threshold import choose_operating_point, f1_at, save_operating_point, stats_at, stats_table

    e = cfg.eval  # a medmm.config.TaskConfig
    problem = task.problem
    out: dict[str, Any] = {"sections": [], "card": NOT_AUDITED, "operating_point": None, "summary": {}}
    n_boot, seed = cfg.engine.bootstrap, cfg.seed
    classify = problem in ("binary", "multiclass", "multilabel")  # multilabel: one threshold per label
    (y_true, y_score), kw = trainer.metric_inputs(test_ev) if test_ev.targets is not None else ((None, None), {})
    val = None
    if classify and bundle.val is not None and len(bundle.val.dataset) and test_ev.targets is not None:
        val = trainer.evaluate(model, bundle.val, bundle.collate_fn)
        (vy, vs), _ = trainer.metric_inputs(val)
        op = choose_operating_point(problem, vy, vs, task.label_names, rule=e.threshold,
                                    target=e.target, fixed=e.fixed_value,
                                    chosen_on="val")
        stats = stats_at(problem, y_true, y_score, op, n_boot=n_boot, seed=seed)
        html, _ = stats_table(stats, op)
        if problem == "multilabel":  # the F1 figures at the per-label thresholds, next to the 0.5 ones
            import html as _html

            f1 = f1_at(y_true, y_score, op, n_boot=n_boot, seed=seed)
            out["summary"]["operating_point_f1"] = f1
            html += "\n<p>" + _html.escape(f1_line(f1, split_name)) + "</p>"
        out["sections"].append((f"Operating point (on {split_name})", html))
        out["operating_point"] = op
        out["summary"]["operating_point"] = {c: {k: s[k] for k in ("threshold", "sensitivity", "specificity",
                                                                    "ppv", "npv", "ci")} for c, s in stats.items()}
        if main:
            save_operating_point(run_dir / "artifacts", op)
    from medmm.evaluation.conformal import training_conformal  # sets / intervals calibrated on val (#32)

    conf = training_conformal(task, trainer, model, bundle, val, test_ev, split_name, data, cfg, run_dir, main=main)
    out["sections"] += conf["sections"]
    out["summary"].update(conf["summary"])
    out.update(conformal=conf["conformal"], conformal_card=conf["card"], conformal_set_groups=conf["set_groups"])
    from medmm.evaluation.decision_curve import curves_html, curves_markdown, decision_curves  # (#32)

    curves = decision_curves(problem, y_true, y_score, task.label_names, n_boot=min(n_boot, 200), seed=seed)
    if curves:
        out["sections"].append((f"Decision curves (on {split_name})", curves_html(curves, split_name)))
        out["decision_curve_card"] = curves_markdown(curves, split_name)
    columns = list(cfg.data.subgroup_columns or [])
    if columns and test_ev.targets is not None:
        attrs = unit_attributes(Path(data), cfg.data, test_ev.units, columns)
        groups = {c: group_labels(v, c, parse_bands(e.bands)) for c, v in attrs.items()}
        y_a = test_ev.targets if problem == "survival" else y_true
        result = audit(problem, y_a, y_score, groups, op=out["operating_point"],
                       min_group_size=e.min_group_size, n_boot=n_boot, seed=seed)
        out["sections"].append((f"Subgroups (on {split_name})", audit_html(result)))
        out["card"] = f"Audited on the {split_name} split.\n\n" + audit_markdown(result)
        out["summary"]["subgroups_flagged"] = {c: v["flagged"] for c, v in result["columns"].items()}
    if main:
        try:
            write_training_profile(Path(data), cfg.data, run_dir / "artifacts")
        except Exception as exc:  # a shift profile must never cost a finished run its outputs
            import logging

            logging.getLogger("medmm").warning("no data profile for shift checks: %s", exc)
    return out
