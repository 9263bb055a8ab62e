"""``medmm report RUN --tripod-ai``: the TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) filled
from a finished run directory.

Each of the 27 items (with their sub-items) gets a status, the text the run supports and the artefact it
came from: ``filled`` (the run knows the answer), ``partly`` (the run knows part of it: the authors
complete it) or ``to be supplied by the authors`` (a run cannot know it: funding, ethics, the clinical
context). Only aggregates are written (counts, metrics, column names, file names), never row values.
Item wording is paraphrased; the checklist itself is the authority.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medmm.errors import MedmmError

__all__ = ["ITEMS", "SUPPLY", "tripod_ai", "write_tripod_ai"]

SUPPLY = "to be supplied by the authors"
FORMAT = "medmm-tripod-ai"

# (item, section, topic, what it asks: paraphrased)
ITEMS: list[tuple[str, str, str, str]] = [
    ("1", "Title", "Title", "development / evaluation of a prediction model, target population, outcome"),
    ("2", "Abstract", "Abstract", "structured summary (TRIPOD+AI for Abstracts)"),
    ("3a", "Introduction", "Healthcare context", "clinical setting and rationale, existing models"),
    ("3b", "Introduction", "Target population and intended use", "population, care pathway, intended users"),
    ("3c", "Introduction", "Health inequalities", "known inequalities between groups"),
    ("4", "Introduction", "Objectives", "development, evaluation or both"),
    ("5a", "Methods", "Data sources", "where the data came from, representativeness"),
    ("5b", "Methods", "Data dates", "start and end of accrual; end of follow-up"),
    ("6a", "Methods", "Setting", "care setting, number and location of centres"),
    ("6b", "Methods", "Eligibility", "inclusion and exclusion criteria"),
    ("6c", "Methods", "Treatments", "treatments received and how handled"),
    ("7", "Methods", "Data preparation", "pre-processing, quality checks, de-identification"),
    ("8a", "Methods", "Outcome", "definition of the outcome and time horizon"),
    ("8b", "Methods", "Outcome assessment", "who assessed it, blinding to predictors"),
    ("8c", "Methods", "Outcome consistency", "assessment consistent across groups"),
    ("9a", "Methods", "Predictors: choice", "choice of initial predictors"),
    ("9b", "Methods", "Predictors: definition", "definition and timing of predictors"),
    ("9c", "Methods", "Predictors: measurement", "who measured them, blinding to outcome"),
    ("10", "Methods", "Sample size", "how the size was arrived at"),
    ("11", "Methods", "Missing data", "how missing data were handled"),
    ("12a", "Methods", "Analysis: data use", "how the data were used (development / evaluation split)"),
    ("12b", "Methods", "Analysis: predictor handling", "transformations, rescaling"),
    ("12c", "Methods", "Analysis: model", "model type, building, hyper-parameters, internal validation"),
    ("12d", "Methods", "Analysis: heterogeneity", "heterogeneity across clusters / subgroups"),
    ("12e", "Methods", "Analysis: performance measures", "discrimination, calibration, clinical utility"),
    ("12f", "Methods", "Analysis: model updating", "recalibration or updating from evaluation"),
    ("12g", "Methods", "Analysis: evaluation predictions", "how predictions were calculated at evaluation"),
    ("13", "Methods", "Class imbalance", "methods for class imbalance and their rationale"),
    ("14", "Methods", "Fairness", "approaches to address fairness"),
    ("15", "Methods", "Model output", "the output, and thresholds / decision rules"),
    ("16", "Methods", "Training versus evaluation", "differences between development and evaluation data"),
    ("17", "Methods", "Ethical approval", "ethics committee, consent"),
    ("18a", "Open science", "Funding", "sources of funding"),
    ("18b", "Open science", "Conflicts of interest", "declarations"),
    ("18c", "Open science", "Protocol", "where the protocol can be accessed"),
    ("18d", "Open science", "Registration", "registry and number"),
    ("18e", "Open science", "Data sharing", "availability of the data"),
    ("18f", "Open science", "Code sharing", "availability of the code"),
    ("19", "Open science", "Patient and public involvement", "involvement in the study"),
    ("20a", "Results", "Participants: flow", "flow of participants, numbers with and without the outcome"),
    ("20b", "Results", "Participants: characteristics", "characteristics overall and per data source"),
    ("20c", "Results", "Participants: development vs evaluation", "comparison of predictor distributions"),
    ("21", "Results", "Model development", "participants and outcome events in each analysis"),
    ("22", "Results", "Model specification", "full model, or how to access it"),
    ("23a", "Results", "Model performance", "performance with confidence intervals"),
    ("23b", "Results", "Model performance: subgroups", "performance in key subgroups"),
    ("24", "Results", "Model updating", "results of updating"),
    ("25", "Discussion", "Interpretation", "main results in context"),
    ("26", "Discussion", "Limitations", "limitations (non-representative sample, few events, ...)"),
    ("27a", "Discussion", "Usability: poor-quality inputs", "how poor quality or unavailable inputs are handled"),
    ("27b", "Discussion", "Usability: users", "user interaction, expertise required"),
    ("27c", "Discussion", "Usability: future research", "next steps, generalisability"),
]
TOP_LEVEL = sorted({int("".join(c for c in i if c.isdigit())) for i, *_ in ITEMS})


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.is_file() else {}


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
        f"{v:.4f}" if isinstance(v, float) else str(v))


def _skipped(path: Path) -> tuple[int, Counter[str]]:
    """Rows in skipped.csv and their reasons (medmm's own wording; truncated)."""
    if not path.is_file():
        return 0, Counter()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return len(rows), Counter(str(r.get("reason", "?"))[:80] for r in rows)


def _test_events(path: Path, problem: str) -> str | None:
    """Outcome counts in predictions.csv (the evaluated split)."""
    if not path.is_file() or problem not in ("binary", "multiclass", "survival"):
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if problem == "survival":
        return f"{sum(r.get('event') == '1' for r in rows)} events in {len(rows)} units" if rows and "event" in rows[0] \
            else None
    if not rows or "true" not in rows[0]:
        return None
    return ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["true"] for r in rows).items()))


def _evaluations(run: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in sorted((run / "evaluations").glob("*/evaluation.json")):
        data = _read(p)
        if isinstance(data, dict):
            out.append((f"evaluations/{p.parent.name}/evaluation.json", data))
    return out


def _deid_report(data: Path) -> tuple[str, dict[str, Any]] | None:
    """A medmm deid report next to the training data (a de-identified folder or notes table), if any."""
    for cand in (data / "deid.json", data.with_name(data.name + ".deid.json")):
        rep = _read(cand)
        if isinstance(rep, dict):
            return cand.name, rep
    return None


def tripod_ai(run_dir: Path) -> dict[str, Any]:
    """The checklist of ``run_dir`` as JSON-ready data: ``{"items": [{item, section, topic, asks, status,
    text, source}], ...}``."""
    run = Path(run_dir)
    info = _read(run / "run.json")
    if not isinstance(info, dict):
        raise MedmmError(f"{run} is not a medmm run directory (no readable run.json)")
    if info.get("status") != "done":
        raise MedmmError(f"{run} has not finished (status {info.get('status')!r}); the checklist needs a done run")
    summary = _read(run / "summary.json") or {}
    cfg = _yaml(run / "config.yaml")
    data_cfg, eng, ev_cfg = cfg.get("data", {}) or {}, cfg.get("engine", {}) or {}, cfg.get("eval", {}) or {}
    fp = _read(run / "data_fingerprint.json") or {}
    op = _read(run / "artifacts" / "operating_point.json")
    conf = _read(run / "artifacts" / "conformal.json")
    problem = (conf or op or {}).get("problem") or summary.get("problem") or "?"
    if problem == "?" and (run / "artifacts" / "tabular.json").is_file():
        problem = (_read(run / "artifacts" / "tabular.json") or {}).get("problem", "?")
    evals = _evaluations(run)
    n_skip, reasons = _skipped(run / "skipped.csv")
    skip_src = ", skipped.csv" if n_skip else ""
    data_name = Path(str(info.get("data", "?"))).name
    task = info.get("task", "?")
    model = (cfg.get("model") or {}).get("backbone") or (cfg.get("model") or {}).get("name") or "?"
    sizes, units = summary.get("sizes", {}), summary.get("units", {})
    split = summary.get("split", "test")
    items: dict[str, tuple[str, str, str]] = {}

    def put(i: str, status: str, text: str, source: str) -> None:
        items[i] = (status, text, source)

    put("1", "partly", f"Suggested: development and internal validation of a {model} {problem} prediction model "
        f"(medmm {task}); name the target population and outcome.", "run.json, config.yaml")
    objective = "Model development with internal validation on a held-out split"
    if evals:
        objective += f", and evaluation on {len(evals)} further data set(s) (medmm evaluate)"
    put("4", "partly", objective + ".", "summary.json" + (", evaluations/" if evals else ""))
    kind = fp.get("kind", "?")
    put("5a", "partly", f"Training data: {data_name} ({kind}" + (f", {fp['rows']} rows" if "rows" in fp else "")
        + "); content hashed per column in data_fingerprint.json. Source institution and representativeness: "
        + SUPPLY + ".", "run.json, data_fingerprint.json")
    dates = [(s, e["provenance"]) for s, e in evals if e.get("provenance", {}).get("date_range")]
    put("5b", "partly" if dates else SUPPLY,
        "; ".join(f"evaluation {p['data']}: {p['date_range'][0]} to {p['date_range'][1]} ({p['date_column']})"
                  for _, p in dates) + ("; training data dates: " + SUPPLY if dates else ""),
        ", ".join(s for s, _ in dates) or "")
    sites = [(s, e["provenance"].get("site")) for s, e in evals if e.get("provenance", {}).get("site")]
    put("6a", "partly" if sites else SUPPLY, "; ".join(f"evaluation site: {site}" for _, site in sites),
        ", ".join(s for s, _ in sites))
    skip_txt = (f"{n_skip} input(s) excluded by medmm's reader: " + "; ".join(f"{r} ({n})" for r, n in
                                                                          reasons.most_common(8))) if n_skip else \
        "No input was excluded by medmm's reader (no skipped.csv)."
    put("6b", "partly", skip_txt + " Clinical inclusion and exclusion criteria: " + SUPPLY + ".",
        "skipped.csv" if n_skip else "run directory")
    deid = _deid_report(Path(str(info.get("data", ""))))
    prep = [f"{p.name}" for p in sorted((run / "artifacts").glob("*.json")) if p.name not in (
        "operating_point.json", "conformal.json", "calibration.json")]
    deid_txt = (f" De-identified with medmm deid before training ({deid[0]}: profile "
                f"{deid[1].get('profile', deid[1].get('options', '?'))})." if deid else
                " De-identification before training: " + SUPPLY + " (no medmm deid report next to the data).")
    put("7", "partly", "Pre-processing fitted on the training split only and stored as "
        + (", ".join(f"artifacts/{p}" for p in prep) or "the task's defaults") + "; the same code path reads "
        "data at predict / evaluate time." + deid_txt, "artifacts/, config.yaml" + (f", {deid[0]}" if deid else ""))
    outcome_cols = [c for c in (data_cfg.get("target"), data_cfg.get("label_column"), data_cfg.get("time"),
                                data_cfg.get("event")) if c]
    classes = (conf or op or {}).get("classes")
    put("8a", "partly", f"Outcome column(s) {outcome_cols or 'sub-folder names'}; problem {problem}"
        + (f"; classes {classes}" if classes else "") + ". Clinical definition and time horizon: " + SUPPLY + ".",
        "config.yaml" + (", artifacts/conformal.json" if conf else ""))
    put("8b", SUPPLY, "", "")
    put("8c", SUPPLY, "", "")
    preds = data_cfg.get("features") or data_cfg.get("text_column") or data_cfg.get("image_column")
    put("9a", "partly", f"Predictors used: {preds if preds else 'all columns / the image pixels, as the task reads them'}"
        ". Rationale: " + SUPPLY + ".", "config.yaml")
    put("9b", SUPPLY, "", "")
    put("9c", SUPPLY, "", "")
    put("10", "partly", f"Units per split: {json.dumps(units or sizes)}. How the size was chosen: {SUPPLY}.",
        "summary.json")
    put("11", "partly", ("Rows without an outcome are excluded (skipped.csv). " if n_skip else "")
        + ("Numeric predictors: median imputation with missing indicators fitted on the training split "
           "(artifacts/tabular.json)." if (run / "artifacts" / "tabular.json").is_file() else
           "Missing inputs are skipped with a reason by the task's reader."), "artifacts/" + skip_src)
    by = data_cfg.get("group_column") or data_cfg.get("id_column")
    put("12a", "filled", f"Split {json.dumps(sizes)} (train / val / test) " + (
        f"by {by!r}: no unit in two splits" if by else "by row (no patient id column configured)")
        + f"; val chose the checkpoint, the operating point and the conformal thresholds; figures on {split}.",
        "splits.csv, config.yaml, summary.json")
    put("12b", "filled" if prep else "partly", "Stored pre-processing: " + (", ".join(prep) or "the task's defaults")
        + ".", "artifacts/")
    dp = summary.get("privacy")
    dp_txt = (f" Trained with DP-SGD: ε = {_f(dp.get('epsilon'))} (target {dp.get('target_epsilon')}), "
              f"δ = {dp.get('delta')}." if isinstance(dp, dict) and dp.get("epsilon") is not None else
              " Not trained with differential privacy.")
    put("12c", "filled", f"medmm {task}, model {model}; {eng.get('epochs')} epoch(s), lr {eng.get('lr')}, batch "
        f"{eng.get('batch_size')}, schedule {eng.get('schedule')}; best checkpoint by {summary.get('monitor')} on val "
        f"(step {summary.get('best_step')}). Full configuration in config.yaml." + dp_txt,
        "config.yaml, summary.json")
    flagged = summary.get("subgroups_flagged")
    put("12d", "filled" if flagged is not None else SUPPLY, (
        f"Subgroup audit over {list(flagged)} (fairlearn MetricFrame, cells under {ev_cfg.get('min_group_size', 10)} "
        "units suppressed)." if flagged is not None else ""), "summary.json, report.html" if flagged is not None else "")
    measures = ", ".join(summary.get("metrics", {}))
    put("12e", "filled", f"{measures}, with {eng.get('bootstrap')}-resample bootstrap 95% CIs; calibration (ECE, "
        "Brier, reliability diagram); decision curves (net benefit, binary / per label); conformal coverage.",
        "summary.json, report.html")
    recals = [(s, e["recalibration"]) for s, e in evals if e.get("recalibration")]
    put("12f", "filled" if recals else "partly", "; ".join(f"{r['method']} fitted on {r['fit_units']} units ({s})"
                                                         for s, r in recals) or "No updating was done.",
        ", ".join(s for s, _ in recals) or "evaluations/")
    put("12g", "filled", "Predictions at evaluation come from the stored checkpoint through the task's own reader and "
        "pre-processing (medmm predict / evaluate), with the stored calibration, operating point and conformal sets.",
        "checkpoints/best, artifacts/")
    put("13", "filled", f"engine.class_weights = {eng.get('class_weights')}, engine.sampler = {eng.get('sampler')}.",
        "config.yaml")
    put("14", "partly", ("Subgroup audit with flags (see 12d, 23b); conformal coverage per subgroup. "
                         if flagged is not None else "No subgroup audit was configured (data.subgroup_columns). ")
        + "Fairness criteria chosen: " + SUPPLY + ".", "summary.json")
    out_txt = f"Output: {'probabilities' if problem in ('binary', 'multiclass', 'multilabel') else problem}"
    if op:
        out_txt += (f"; operating point rule {op.get('rule')} chosen on {op.get('chosen_on')}, thresholds "
                    + ", ".join(f"{k} >= {v:.4f}" for k, v in op.get("thresholds", {}).items()))
    if conf:
        out_txt += (f"; {100 * (1 - conf['alpha']):g}% conformal prediction sets (Mondrian {conf['mondrian']}), "
                    f"refer rule {conf['refer']}")
    put("15", "filled", out_txt + ".", ", ".join(x for x, y in (("artifacts/operating_point.json", op),
                                                               ("artifacts/conformal.json", conf)) if y) or "config.yaml")
    shifts = [(s, e["shift"].get("warnings", [])) for s, e in evals if e.get("shift")]
    put("16", "filled" if shifts else SUPPLY, "; ".join(
        f"{s}: {len(w)} shift warning(s)" + (f" ({w[0]})" if w else "") for s, w in shifts),
        ", ".join(s for s, _ in shifts))
    put("17", SUPPLY, "", "")
    for i in ("18a", "18b", "18c", "18d", "18e"):
        put(i, SUPPLY, "", "")
    put("18f", "partly", f"Trained with medmm {info.get('medmm', '?')} (open source); reproduce with the run's "
        "config.yaml (`medmm run TASK --config config.yaml --data DATA`). Repository link: " + SUPPLY + ".",
        "run.json, config.yaml")
    put("19", SUPPLY, "", "")
    put("20a", "partly", (f"{fp.get('rows')} rows read; " if "rows" in fp else "") + f"{n_skip} excluded; split "
        f"{json.dumps(units or sizes)}; outcome on {split}: {_test_events(run / 'predictions.csv', problem) or 'n/a'}.",
        "data_fingerprint.json" + skip_src + ", splits.csv, predictions.csv")
    put("20b", SUPPLY, "", "")
    put("20c", "filled" if shifts else SUPPLY, "See 16 (standardized mean differences vs the training profile)."
        if shifts else "", ", ".join(s for s, _ in shifts))
    put("21", "filled", f"Units per split {json.dumps(units or sizes)}; outcome on {split}: "
        f"{_test_events(run / 'predictions.csv', problem) or 'n/a'}" + (
            f"; val (calibration) per class: {conf.get('n_per_class')}" if conf and conf.get("n_per_class") else "")
        + ".", "summary.json, predictions.csv" + (", artifacts/conformal.json" if conf else ""))
    export = _read(run / "export" / "manifest.json")
    put("22", "filled", "Weights: checkpoints/best (safetensors) with config.yaml and artifacts/"
        + ("; ONNX export with manifest (hashes, parity) in export/" if export else "") + ".",
        "checkpoints/best" + (", export/manifest.json" if export else ""))
    ci = summary.get("ci", {})
    perf = "; ".join(f"{k} {_f(v)}" + (f" (95% CI {_f(ci[k][0])}-{_f(ci[k][1])})" if k in ci else "")
                     for k, v in summary.get("metrics", {}).items())
    c = summary.get("conformal")
    if c:
        lo, hi = c["coverage_ci"]
        perf += (f"; conformal {100 * (1 - c['alpha']):g}% coverage {_f(c['coverage'])} (95% CI {_f(lo)}-{_f(hi)}), "
                 f"mean {c['size_name']} {_f(c['mean_size'])}, referred {_f(c['referred'])}")
    for s, e in evals:
        perf += f"; {e.get('provenance', {}).get('data', s)}: " + ", ".join(
            f"{k} {_f(v)}" for k, v in list(e.get("metrics", {}).items())[:4])
    put("23a", "filled", f"On {split}: {perf}. Decision curves: report.html.",
        "summary.json, report.html" + (", evaluations/" if evals else ""))
    put("23b", "filled" if flagged is not None else SUPPLY, (
        "Flagged subgroups: " + (", ".join(f"{k}: {v}" for k, v in flagged.items() if v) or "none") + " (report.html)."
        if flagged is not None else ""), "summary.json, report.html" if flagged is not None else "")
    put("24", "filled" if recals else "partly", "; ".join(
        f"{s}: {r['method']}" + (f", coverage {_f(r['before'].get('coverage'))} -> {_f(r['after'].get('coverage'))}"
                                 if r["method"] == "conformal" else
                                 f", ECE {_f(r['before'].get('ece'))} -> {_f(r['after'].get('ece'))}")
        for s, r in recals) or "No updating was done.", ", ".join(s for s, _ in recals) or "evaluations/")
    put("25", SUPPLY, "", "")
    put("26", "partly", "Generic limitations are listed in model_card.md; study-specific ones: " + SUPPLY + ".",
        "model_card.md")
    put("27a", "filled", "Unreadable inputs are skipped with a reason (skipped.csv, predict's .skipped.csv); "
        + ("a unit whose conformal set is not a single class is flagged abstain = 1 (refer to a clinician)."
           if conf else "no abstention rule is stored."), "medmm.data readers" + skip_src + (", artifacts/conformal.json" if conf else ""))
    put("27b", SUPPLY, "", "")
    put("27c", SUPPLY, "", "")

    rows = []
    for item, section, topic, asks in ITEMS:
        status, text, source = items.get(item, (SUPPLY, "", ""))
        rows.append({"item": item, "section": section, "topic": topic, "asks": asks, "status": status,
                     "text": text or SUPPLY, "source": source or None})
    counts = Counter(r["status"] for r in rows)
    return {"format": FORMAT, "version": 1, "checklist": "TRIPOD+AI (Collins et al., BMJ 2024;385:e078378)",
            "run": run.name, "task": task, "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "counts": dict(counts), "items": rows}


def _md(report: dict[str, Any]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    c = report["counts"]
    lines = [f"# TRIPOD+AI checklist: run `{report['run']}`", "",
             (f"{report['checklist']}; filled by medmm from the run directory on {report['made']}. Items: "
              f"{c.get('filled', 0)} filled from the run, {c.get('partly', 0)} partly, {c.get(SUPPLY, 0)} {SUPPLY}. "
              "Each answer cites the run artefact it came from; item wording is paraphrased."), ""]
    section = None
    for r in report["items"]:
        if r["section"] != section:
            section = r["section"]
            lines += ["", f"## {section}", "", "| item | topic | status | answer | source |", "|---|---|---|---|---|"]
        lines.append(f"| {r['item']} | {esc(r['topic'])} | {r['status']} | {esc(r['text'])} | "
                     f"{esc(r['source'] or '')} |")
    return "\n".join(lines) + "\n"


def write_tripod_ai(run_dir: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Write ``tripod-ai.md`` and ``tripod-ai.json`` into ``out`` (default ``RUN_DIR/tripod-ai``, new or empty)."""
    from medmm.io import write_json_atomic, write_text_atomic

    report = tripod_ai(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "tripod-ai"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedmmError(f"--out {out} already exists and is not empty; medmm never overwrites files")
    out.mkdir(parents=True, exist_ok=True)
    md = write_text_atomic(out / "tripod-ai.md", _md(report))
    js = write_json_atomic(out / "tripod-ai.json", report)
    return md, js
