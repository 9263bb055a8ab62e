"""``medmm evaluate``: score a trained run on new labelled data, the way a validation study reports it.

The data is read by the run's own task (``Task.build_predict_data``) and scored by
``Trainer.evaluate``, exactly as ``medmm predict`` does, so evaluating a run on its own test
rows gives its test metrics. Every check runs before anything is written, and the outputs are
written into a temporary folder renamed into place at the end: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from medmm.errors import DataError, MedmmError
from medmm.io import current_umask

__all__ = ["append_validation", "evaluate_run", "validation_markdown"]


def _label_columns(problem: str, data_cfg: Mapping[str, Any]) -> list[str]:
    if problem == "survival":
        return [c for c in (data_cfg.get("time"), data_cfg.get("event")) if c]
    col = data_cfg.get("target") or data_cfg.get("label_column")
    return [] if not col else ([col] if isinstance(col, str) else [str(c) for c in col])


def _norm_label(v: Any) -> str:
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v).strip()


def _precheck_table(path: Path, task: Any, data_cfg: Mapping[str, Any], extra: Mapping[str, str]) -> None:
    """Label column present, every label known to the model, ``extra`` columns (name -> role) present."""
    from medmm.data.readers import is_missing

    cols = _label_columns(task.problem, data_cfg)
    df = _columns_of(path, [*cols, *extra])  # only the columns checked (a CSV / TSV read in blocks)
    for c, role in [*((c, "label") for c in cols), *extra.items()]:
        if c not in df.columns:
            raise DataError(f"{path.name} has no {role} column {c!r}; the table has {df.attrs['header'][:20]}")
    if task.problem in ("binary", "multiclass") and len(cols) == 1 and task.label_names and not data_cfg.get(
            "label_delimiter"):
        values = [_norm_label(v) for v in df[cols[0]] if not is_missing(v)]
        unseen = sorted(set(values) - {str(n) for n in task.label_names})
        if unseen:
            rows = sum(1 for v in values if v in set(unseen))  # values of the data are never echoed
            raise DataError(f"label column {cols[0]!r} holds {len(unseen)} value(s) the model was never trained on, "
                            f"in {rows} row(s) (trained on {list(task.label_names)})")
        missing = sum(1 for v in df[cols[0]] if is_missing(v))
        if missing:
            raise DataError(f"label column {cols[0]!r} is empty in {missing} row(s); evaluate needs a label "
                            "for every row (drop unlabelled rows, or use medmm predict)")


def _default_out(run_dir: Path, data: Path) -> Path:
    return run_dir / "evaluations" / f"{data.stem or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_out(out: Path, overwrite: bool = False) -> None:
    """``out`` is new or empty; with ``overwrite``, also an earlier evaluation (its files only, nothing else)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise MedmmError(f"--out {out} already exists and is not empty; medmm never overwrites files: give a new "
                         "folder, or add --overwrite to replace an earlier evaluation there")
    if not out.is_dir() or out.is_symlink() or not (out / "evaluation.json").is_file():
        raise MedmmError(f"--out {out} is not an earlier medmm evaluation (no evaluation.json); --overwrite replaces "
                         "only those: give a new folder")


def _columns_of(path: Path, columns: Sequence[str]) -> Any:
    """``path`` with only ``columns`` (those it has), and every column name in ``.attrs["header"]``: a table
    that streams (CSV / TSV, JSON Lines, Parquet) is read in blocks of those columns, so a wide table is never
    held whole; plugin formats are read whole."""
    import pandas as pd

    from medmm.data.readers import chunk_rows, read_table, read_table_chunks, streams

    if not streams(path):
        df = read_table(path)
        df.attrs["header"] = [str(c) for c in df.columns]
        return df
    header = [str(c) for c in next(read_table_chunks(path, 1)).columns]
    wanted = [c for c in dict.fromkeys(columns) if c in header]
    df = (pd.concat(list(read_table_chunks(path, chunk_rows(), columns=wanted))) if wanted
          else pd.DataFrame(index=pd.RangeIndex(0)))
    df.attrs["header"] = header
    return df


def _date_range(path: Path, column: str | None) -> list[str] | None:
    if not column or path.is_dir():
        return None
    import pandas as pd

    dates = pd.to_datetime(_columns_of(path, [column])[column], errors="coerce").dropna()
    return [dates.min().date().isoformat(), dates.max().date().isoformat()] if len(dates) else None


def _scored(run: Any, task: Any, data: Path, trainer: Any, model: Any) -> tuple[Any, list[tuple[str, str]]]:
    """The model's pooled scores on ``data`` and the inputs it skipped. A table that the task reads in blocks
    (``predict_chunks``) is scored block by block, so only each unit's id, scores and targets are held, never
    the table's features, tokens or pixels; each block is whole eval batches ending between units, so the
    scores are one pass's. Other inputs are read whole (``build_predict_data``)."""
    from medmm.data.readers import chunk_rows, streams
    from medmm.engine.trainer import EvalOutput

    chunks = getattr(task, "predict_chunks", None)
    if chunks is None or not streams(data):
        split, collate = run.predict_data(task, data)
        return trainer.evaluate(model, split, collate), list(getattr(split, "skipped", None) or [])
    batch = max(int(trainer.e.eval_batch_size), 1)
    rows = -(-chunk_rows() // batch) * batch
    units: list[str] = []
    scores, targets, skipped = [], [], []
    loss, n, labelled = 0.0, 0, True
    for split, collate in chunks(Path(data), rows):
        ev = trainer.evaluate(model, split, collate)
        units += ev.units
        scores.append(np.asarray(ev.scores))
        labelled = labelled and ev.targets is not None
        if ev.targets is not None:
            targets.append(np.asarray(ev.targets))
        loss, n = loss + float(ev.loss) * len(ev.units), n + len(ev.units)
        skipped += list(getattr(split, "skipped", None) or [])
    return EvalOutput(units, np.concatenate(scores), np.concatenate(targets) if labelled and targets else None,
                      loss / max(n, 1)), skipped


def evaluate_run(run_dir: Path, data: Path, *, registry: Any, out: Path | None = None,
                 subgroups: Sequence[str] | None = None, site: str | None = None, date_column: str | None = None,
                 recalibrate: str | None = None, calibration_fraction: float = 0.5, checkpoint: str = "best",
                 card: bool = True, echo: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``run_dir`` on labelled ``data``; writes ``evaluation.html``/``.json`` and ``predictions.csv``.

    ``out`` must be new or empty, or (``overwrite``) an earlier evaluation, replaced once the new one is written."""
    from medmm.engine import Trainer
    from medmm.evaluation.attributes import unit_attributes
    from medmm.evaluation.calibration import apply_stored_calibration
    from medmm.evaluation.shift import shift_report
    from medmm.evaluation.subgroups import audit, group_labels, parse_bands, require_fairlearn
    from medmm.evaluation.threshold import load_operating_point, stats_at
    from medmm.metrics import bootstrap_cis
    from medmm.run import Run

    data = Path(data)
    run = Run.open(run_dir, registry=registry)
    run_dir, cfg = run.path, run.cfg
    ecfg = cfg.eval
    columns = list(subgroups) if subgroups is not None else list(cfg.data.subgroup_columns or [])
    if columns:
        require_fairlearn()
    if recalibrate and not 0.0 < calibration_fraction < 1.0:
        raise MedmmError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    out = Path(out) if out is not None else _default_out(run_dir, data)
    _check_out(out, overwrite)

    task = run.task()
    from medmm.evaluation.conformal import load_conformal

    conf = load_conformal(run_dir)  # the run's prediction sets (#32)
    if recalibrate == "conformal" and conf is None:
        raise MedmmError("--recalibrate conformal: this run stores no conformal sets (a survival run, one trained "
                         "with eval.conformal.enabled=false, or by an older medmm)")
    if recalibrate and recalibrate != "conformal" and (task.problem not in ("binary", "multiclass") or
                        (recalibrate == "isotonic" and task.problem != "binary")):
        raise MedmmError(f"--recalibrate {recalibrate} does not apply to this {task.problem} run "
                         "(temperature: binary or multiclass; isotonic: binary)")
    if not data.is_dir():
        _precheck_table(data, task, cfg.data, {**{c: "subgroup" for c in columns},
                                                   **({date_column: "date"} if date_column else {})})
    model = run.model(task, checkpoint)
    trainer = Trainer(task, cfg, run_dir, quiet=True)
    model.to(trainer.device)
    ev, skipped_inputs = _scored(run, task, data, trainer, model)
    ev = apply_stored_calibration(run_dir, task.problem, ev)
    if ev.targets is None or len(ev.units) == 0:
        label = ", ".join(repr(c) for c in _label_columns(task.problem, cfg.data)) or "sub-folder names"
        raise DataError(f"{data.name}: no usable label for every unit (labels from {label}, classes "
                        f"{task.label_names}); evaluate needs labelled data")
    attrs = unit_attributes(data, cfg.data, ev.units, columns)
    groups = {c: group_labels(v, c, parse_bands(ecfg.bands)) for c, v in attrs.items()}

    problem, seed, n_boot = task.problem, cfg.seed, cfg.engine.bootstrap
    metrics = trainer.metrics_of(ev)
    (y_true, y_score), kw = trainer.metric_inputs(ev)
    ci = bootstrap_cis(problem, y_true, y_score, n_boot=n_boot, seed=seed, **kw) if n_boot else {}
    op = load_operating_point(run_dir)
    classify = problem in ("binary", "multiclass", "multilabel")  # multilabel: per-label thresholds
    op_stats = stats_at(problem, y_true, y_score, op, n_boot=n_boot, seed=seed) if (op and classify) else None
    y_for_audit = ev.targets if problem == "survival" else y_true
    sub = audit(problem, y_for_audit, y_score, groups, op=op if classify else None,
                min_group_size=ecfg.min_group_size, n_boot=n_boot, seed=seed) if groups else None
    shift = shift_report(task, data, cfg.data, run_dir)
    from medmm.evaluation.conformal import coverage_report, set_groups_of
    from medmm.evaluation.conformal import recalibrate as recalibrate_conformal
    from medmm.evaluation.decision_curve import decision_curves

    set_groups = set_groups_of(conf, data, cfg, ev.units) if conf else None
    cover_groups = dict(groups)
    if set_groups is not None and conf.get("group_column") in cover_groups:  # bands of the thresholds' edges
        cover_groups[conf["group_column"]] = np.asarray(set_groups, dtype=object)
    conformal = coverage_report(conf, y_true, y_score, label_names=task.label_names, groups=cover_groups,
                                set_groups=set_groups, min_group_size=ecfg.min_group_size, n_boot=n_boot,
                                seed=seed) if conf else None
    curves = decision_curves(problem, y_true, y_score, task.label_names, n_boot=min(n_boot, 200), seed=seed)
    recal = None
    if recalibrate == "conformal":  # weighted variant too when the shift check fired
        from medmm.evaluation.conformal import load_calibration_units

        recal = recalibrate_conformal(conf, y_true, y_score, fraction=calibration_fraction, seed=seed,
                                      weighted=bool(shift["warnings"]), calibration_units=load_calibration_units(run_dir))
    elif recalibrate:
        recal = _recalibrate(problem, np.asarray(y_true), np.asarray(y_score), recalibrate, calibration_fraction,
                             seed, op, task.label_names, ecfg)
    skipped = len(skipped_inputs)
    provenance = {"data": data.name, "units": len(ev.units), "skipped": skipped, "site": site,
                  "date_column": date_column, "date_range": _date_range(data, date_column),
                  "evaluated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "run": run_dir.name, "checkpoint": checkpoint}
    from medmm.evaluation.overlap import caveat, seen_splits

    provenance["units_in_run_splits"] = seen_splits(run_dir, ev.units, data)  # rows the run trained / tuned on
    provenance["caveat"] = caveat(provenance["units_in_run_splits"], len(ev.units))
    result = {"format": "medmm-evaluation", "version": 1, "task": run.spec.name, "problem": problem,
              "provenance": provenance, "metrics": metrics, "ci": ci, "operating_point": op,
              "operating_stats": op_stats, "subgroups": sub, "shift": shift, "recalibration": recal,
              "conformal": conformal, "conformal_sets": {k: v for k, v in (conf or {}).items()
                                                         if k != "calibration_units"} or None,
              "decision_curve": curves}

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_mkparent(out)))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the folder gets a plain mkdir's mode
    try:
        _write_outputs(tmp, result, ev, task, run.spec, run_dir, trainer, y_true, y_score, kw, op,
                       conformal=conf, set_groups=set_groups)
        if recal is not None:
            _write_recalibrated_run(tmp / "recalibrated-run", run_dir, recal)
        if out.exists():
            if any(out.iterdir()):  # an earlier evaluation (--overwrite, checked above): swapped out, then removed
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                os.replace(out, old / out.name)
                shutil.rmtree(old, ignore_errors=True)
            else:
                out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if card and (run_dir / "model_card.md").exists():
        append_validation(run_dir / "model_card.md", validation_markdown(result))
        if sub:  # the card's Subgroups section always shows the latest audit
            from medmm.evaluation.subgroups import audit_markdown
            from medmm.model_card import set_section

            set_section(run_dir / "model_card.md", "Subgroups",
                        f"Latest audit: `medmm evaluate` on {provenance['evaluated'][:10]} ({provenance['data']}, "
                        f"{provenance['units']} units); its entry under Validation holds the other figures.\n\n"
                        + audit_markdown(sub))
    if echo:
        click.echo(_console(result, out))
    return {**result, "out": str(out)}


def _mkparent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


# --------------------------------------------------------------------------- recalibration


def _recalibrate(problem: str, y: np.ndarray, s: np.ndarray, method: str, fraction: float, seed: int,
                 op: Mapping[str, Any] | None, label_names: Sequence[str], ecfg: Any) -> dict[str, Any]:
    """Fit on a stratified ``fraction`` of the units, report before/after on the rest."""
    from sklearn.model_selection import train_test_split

    from medmm.evaluation.calibration import apply_calibrator, fit_calibrator
    from medmm.evaluation.threshold import choose_operating_point
    from medmm.metrics import compute_metrics

    idx = np.arange(len(y))
    try:
        fit_idx, held = train_test_split(idx, train_size=fraction, stratify=y, random_state=seed)
    except ValueError:
        raise DataError(f"too few units per class to split {len(y)} units for --recalibrate") from None
    cal = fit_calibrator(problem, y[fit_idx], s[fit_idx], method)
    before = compute_metrics(problem, y[held], s[held])
    after = compute_metrics(problem, y[held], apply_calibrator(problem, s[held], cal))
    new_op = None
    if op is not None:
        new_op = choose_operating_point(problem, y[fit_idx], apply_calibrator(problem, s[fit_idx], cal), label_names,
                                        rule=op["rule"], target=op["target"], fixed=ecfg.fixed_value,
                                        chosen_on="external calibration part")
    return {"method": method, "calibrator": cal, "fit_units": int(len(fit_idx)), "held_out_units": int(len(held)),
            "before": before, "after": after, "operating_point": new_op}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_recalibrated_run(dest: Path, run_dir: Path, recal: Mapping[str, Any]) -> None:
    """A new run dir: the original's config, artifacts and best weights plus ``calibration.json``."""
    from medmm.evaluation.calibration import FILE as CAL_FILE
    from medmm.evaluation.threshold import save_operating_point
    from medmm.io import write_json_atomic

    dest.mkdir(parents=True)
    shutil.copy2(run_dir / "config.yaml", dest / "config.yaml")
    info = json.loads((run_dir / "run.json").read_text())
    info.update({"recalibrated_from": str(run_dir.resolve()), "recalibration": recal["method"]})
    write_json_atomic(dest / "run.json", info)
    shutil.copytree(run_dir / "artifacts", dest / "artifacts", copy_function=_link_or_copy)
    shutil.copytree(run_dir / "checkpoints" / "best", dest / "checkpoints" / "best", copy_function=_link_or_copy)
    if recal["method"] == "conformal":  # new thresholds, same probabilities (#32)
        from medmm.evaluation.conformal import FILE as CONF_FILE
        from medmm.evaluation.conformal import save_calibration_units, save_conformal

        (dest / "artifacts" / CONF_FILE).unlink(missing_ok=True)  # a hard link: never write through it
        save_conformal(dest / "artifacts", recal["conformal"])
        save_calibration_units(dest, recal["conformal"])
    else:
        write_json_atomic(dest / "artifacts" / CAL_FILE, dict(recal["calibrator"]))
    if recal.get("operating_point") is not None:
        (dest / "artifacts" / "operating_point.json").unlink(missing_ok=True)  # a hard link: never write through it
        save_operating_point(dest / "artifacts", recal["operating_point"])
    if (run_dir / "model_card.md").exists():
        shutil.copy2(run_dir / "model_card.md", dest / "model_card.md")
        if recal["method"] == "conformal":
            b, a = recal["before"], recal["after"]
            append_validation(dest / "model_card.md", (
                f"### {datetime.now(timezone.utc).strftime('%Y-%m-%d')}: conformal sets re-calibrated\n\nThis run is "
                f"`{run_dir.name}` with its prediction-set thresholds re-fitted on {recal['fit_units']} units of the "
                f"evaluation data (same model, same probabilities). Coverage on the other {recal['held_out_units']} "
                f"units: {b['coverage']:.3f} -> {a['coverage']:.3f} (nominal {1 - recal['alpha']:.2f}); mean set "
                f"size {b['mean_size']:.3f} -> {a['mean_size']:.3f}."))
            return
        cal = recal["calibrator"]
        how = f"temperature scaling (T = {cal['temperature']:.4f})" if cal["method"] == "temperature" else \
            "isotonic regression"
        append_validation(dest / "model_card.md", (
            f"### {datetime.now(timezone.utc).strftime('%Y-%m-%d')}: recalibrated\n\nThis run is `{run_dir.name}` "
            f"with {how} fitted on {recal['fit_units']} units of the evaluation data; its probabilities (and the "
            "threshold, re-chosen on those units) differ from the original run's. Figures before / after on the "
            f"other {recal['held_out_units']} units: ECE {recal['before'].get('ece', math.nan):.4f} -> "
            f"{recal['after'].get('ece', math.nan):.4f}."))


# --------------------------------------------------------------------------- outputs


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN -> null, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_outputs(out: Path, result: Mapping[str, Any], ev: Any, task: Any, spec: Any, run_dir: Path,
                   trainer: Any, y_true: Any, y_score: Any, kw: Mapping[str, Any], op: Mapping[str, Any] | None,
                   conformal: Mapping[str, Any] | None = None, set_groups: Any = None) -> None:
    from medmm.evaluation.report_sections import evaluation_sections
    from medmm.io import write_json_atomic
    from medmm.predictions import write_predictions
    from medmm.report import write_report

    write_predictions(out / "predictions.csv", ev, task.problem, task.label_names,
                      task.unit_columns, operating_point=op, conformal=conformal,
                      set_groups=set_groups)
    write_json_atomic(out / "evaluation.json", _clean(dict(result)))
    history = []
    if (run_dir / "metrics.jsonl").exists():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    p = result["provenance"]
    write_report(out / "evaluation.html", title=f"medmm evaluate: {spec.name} on {p['data']}", problem=task.problem,
                 history=history, y_true=None if task.problem == "survival" else y_true, y_score=y_score,
                 label_names=task.label_names, metrics=result["metrics"], ci=result["ci"],
                 extra_sections=evaluation_sections(result), **kw,
                 summary={"run": p["run"], "data": p["data"], "site": p["site"] or "not given",
                          "units evaluated": str(p["units"]), "inputs skipped": str(p["skipped"]),
                          **({"caveat": p["caveat"]} if p.get("caveat") else {}),
                          "date range": " to ".join(p["date_range"]) if p["date_range"] else "not given",
                          "evaluated": p["evaluated"]})


def _fmt_ci(value: Any, ci: Any) -> str:
    """``0.91 (95% CI 0.85-0.96)``, rounded to what the CI supports (as every medmm page rounds it)."""
    from medmm.metrics import format_estimate

    return format_estimate(value, ci, style="(95% CI {lo}-{hi})")


def _conformal_lines(result: Mapping[str, Any]) -> list[str]:
    """Coverage of the run's prediction sets and the subgroups below nominal (#32)."""
    c = result.get("conformal")
    if not c:
        return []
    o = c["overall"]
    what = "intervals" if c["problem"] == "regression" else "sets"
    lines = [f"  conformal {100 * c['nominal']:g}% {what}: coverage {_fmt_ci(o['coverage'], o['coverage_ci'])}, "
             f"mean {c['size_name']} {o['mean_size']:.3f}, referred {100 * o['referred']:.1f}%"]
    low = [f"class {k}" for k, v in c["classes"].items() if v.get("below_nominal")]
    low += [f"{col} = {v}" for col, g in c["groups"].items() for v in g["flagged"]]
    if low:
        lines.append(f"  conformal coverage below nominal (95% CI under {c['nominal']:.2f}): {', '.join(low)}")
    return lines


def _console(result: Mapping[str, Any], out: Path) -> str:
    from medmm.metrics import headline

    p = result["provenance"]
    from medmm.evaluation.threshold import stat_text

    lines = [f"medmm evaluate: {result['task']} run {p['run']} on {p['data']} ({p['units']} units, "
             f"{p['skipped']} skipped)"]
    if p.get("caveat"):
        lines.append(f"  {p['caveat']}")
    head = headline(result["problem"])[0]
    for k, v in result["metrics"].items():
        lines.append(f"    {k:<12} " + _fmt_ci(v, result["ci"].get(k)) + ("   <- headline" if k == head else ""))
    for cls, s in (result["operating_stats"] or {}).items():
        lines.append(f"  operating point {cls} >= {s['threshold']:.4f} ({result['operating_point']['rule']} threshold "
                     "chosen on val; predictions.csv's decision columns):")
        lines.append("    " + "  ".join(f"{k} {stat_text(s, k)}" for k in ("sensitivity", "specificity")))
        lines.append("    " + "  ".join(f"{k} {stat_text(s, k)}" for k in ("ppv", "npv")))
    sub = result["subgroups"]
    for col, c in (sub or {}).get("columns", {}).items():
        shown = ", ".join(f"{r['group']}: " + ("< " + str(sub["min_group_size"]) if r.get("suppressed") else
                                               f"{r['value']:.3f}" if r.get("value") is not None else "n/a")
                          for r in c["groups"])
        flags = c.get("column_flags") or []  # worded as the pages word them: a column flag is not "none" (#27)
        lines.append(f"  subgroups {col} ({sub['metric']}): {shown}; flagged groups: {', '.join(c['flagged']) or 'none'}"
                     + ("; column FLAGGED: " + "; ".join(flags) if flags else ""))
    for w in result["shift"]["warnings"]:
        lines.append(f"  shift warning: {w}")
    lines += _conformal_lines(result)
    if result["recalibration"] and result["recalibration"]["method"] == "conformal":
        r = result["recalibration"]
        lines.append(f"  conformal re-calibration (fit on {r['fit_units']}, checked on {r['held_out_units']} units): "
                     f"coverage {r['before']['coverage']:.3f} -> {r['after']['coverage']:.3f}"
                     + (f"; weighted (covariate shift) {r['weighted']['coverage']:.3f}" if r["weighted"] else ""))
        lines.append(f"  {'recalibrated run':<16} {out / 'recalibrated-run'}")
    elif result["recalibration"]:
        r = result["recalibration"]
        lines.append(f"  recalibration ({r['method']}, fit on {r['fit_units']}, checked on {r['held_out_units']} units): "
                     f"ECE {r['before'].get('ece', float('nan')):.4f} -> {r['after'].get('ece', float('nan')):.4f}, "
                     f"Brier {r['before'].get('brier', float('nan')):.4f} -> {r['after'].get('brier', float('nan')):.4f}")
        lines.append(f"  {'recalibrated run':<16} {out / 'recalibrated-run'}")
    for name in ("evaluation.html", "evaluation.json", "predictions.csv"):
        lines.append(f"  {name:<16} {out / name}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- model card


def validation_markdown(result: Mapping[str, Any]) -> str:
    """One dated "Validation" entry for the model card: provenance and figures (aggregates only)."""
    from medmm.evaluation.subgroups import audit_markdown
    from medmm.evaluation.threshold import stat_text
    from medmm.metrics import headline

    p = result["provenance"]
    head = headline(result["problem"])[0]
    lines = [f"### {p['evaluated'][:10]}: {p['site'] or 'site not given'} ({p['data']})", "",
             f"- Units evaluated: {p['units']} ({p['skipped']} inputs skipped); checkpoint `{p['checkpoint']}`"]
    if p.get("caveat"):
        lines.append(f"- **{p['caveat'][0].upper() + p['caveat'][1:]}**")
    if p["date_range"]:
        lines.append(f"- Dates ({p['date_column']}): {p['date_range'][0]} to {p['date_range'][1]}")
    lines.append(f"- {head}: " + _fmt_ci(result["metrics"].get(head), result["ci"].get(head)))
    for k in ("ece", "brier"):
        if k in result["metrics"]:
            lines.append(f"- {k}: " + _fmt_ci(result["metrics"][k], None))
    for cls, s in (result["operating_stats"] or {}).items():
        lines.append(f"- At the operating point ({cls} >= {s['threshold']:.4f}, chosen on val): sensitivity "
                     f"{stat_text(s, 'sensitivity')}, specificity {stat_text(s, 'specificity')}")
    if result["shift"]["warnings"]:
        lines.append("- Distribution shift warnings: " + "; ".join(result["shift"]["warnings"]))
    lines += [f"- {x.strip()}" for x in _conformal_lines(result)]
    if result["subgroups"]:
        lines += ["", audit_markdown(result["subgroups"])]
    return "\n".join(lines)


def append_validation(card: Path, entry: str) -> None:
    """Add ``entry`` under the card's "## Validation" heading (created before "How to reproduce")."""
    from medmm.io import write_text_atomic

    text = card.read_text(encoding="utf-8")
    marker = "## How to reproduce"
    if "## Validation" not in text:
        block = ("## Validation\n\nExternal evaluations of this model (`medmm evaluate`), newest last.\n\n"
                 + entry.strip() + "\n\n")
    else:
        block = entry.strip() + "\n\n"
    at = text.find(marker)
    text = text[:at] + block + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + block
    write_text_atomic(card, text)
