"""Files of an explanation set: ``explanations.html``, ``attributions.csv``, ``summary.json``,
``overlays/*.png`` (+ ``overlays.csv``). Units are keyed by row id / UID as in
``predictions.csv``; overlay file names are opaque (a number and a hash of the unit)."""

from __future__ import annotations

import base64
import csv
import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm.io import write_json_atomic, write_text_atomic
from medmm.report import esc_html, html_note, html_page, html_section, kv_table, page_header

CAVEATS = (
    "Attributions say which parts of the input the model's output is sensitive to; they are not causal "
    "statements about the patient, and a faithful map of a biased model shows the bias (a scanner marker, a "
    "template phrase, a site-specific column) rather than hiding it. They describe this model on these inputs only."
)
HIGH_CORRELATION = 0.5
PASS_RATIO = 1.5
"""Deletion passes when the top-k items drop the score this many times more than k random ones."""


def deletion_verdict(f: dict[str, Any]) -> str:
    """The deletion check in words, with its rule (``pass: ... 3.1x more than random``)."""
    top, rand, n = f.get("deletion_top"), f.get("deletion_random"), f.get("deletion_n", 0)
    what = "items" if f.get("kind") != "image" else "grid cells"
    rule = f"(rule: pass when deleting the top 10% of {what} drops the score at least {PASS_RATIO:g}x as much as " \
           "deleting as many random ones)"
    if top is None or rand is None or not n:
        return f"not checked: no example with at least two {what} {rule}"
    if top <= 0:
        return f"fail: deleting the top-attributed {what} does not lower the score (mean drop {top:.3f}) {rule}"
    ratio = f"{top / rand:.1f}x" if rand > 0 else "more than"
    if rand <= 0 or top >= PASS_RATIO * rand:
        return f"pass: deleting the top 10% of {what} drops the score {ratio} more than random ({top:.3f} vs " \
               f"{rand:.3f}, {n} examples) {rule}"
    if top > rand:
        return f"weak: the top 10% of {what} drop the score only {ratio} as much as random ({top:.3f} vs {rand:.3f}, " \
               f"{n} examples) {rule}"
    return f"fail: deleting the top-attributed {what} moves the score no more than random ({top:.3f} vs {rand:.3f}) {rule}"


def randomisation_verdict(f: dict[str, Any]) -> str:
    """The model-randomisation check in words, with its rule."""
    rho, n = f.get("randomisation_spearman"), f.get("randomisation_n", 0)
    rule = f"(rule: pass when the rank correlation with a randomised model's attributions is below {HIGH_CORRELATION:g})"
    if rho is None or not n:
        return f"not checked: no example with a non-flat map {rule}"
    if rho < HIGH_CORRELATION:
        return f"pass: a model with random weights ranks the items differently (rank correlation {rho:.2f}, {n} " \
               f"examples) {rule}"
    return f"fail: a model with random weights ranks the items much the same (rank correlation {rho:.2f}): the map " \
           f"shows the input more than what the model learnt {rule}"


def _mean(v: Sequence[float]) -> float | None:
    return float(np.mean(v)) if len(v) else None


def _order(scores: np.ndarray, signed: bool) -> np.ndarray:
    return np.argsort(-(scores if signed else np.abs(scores)), kind="stable")


def build_outputs(out: Path, *, task: Any, task_name: str, run_dir: Path, espec: Any, used: dict[str, str],
                  methods: dict[str, str], examples: list[Any], faith: dict[str, Any], extras: dict[str, Any],
                  top_k: int, seconds: float, attr_seconds: float, fallback: bool) -> dict[str, Any]:
    from medmm.explain.image import overlay_png
    from medmm.explain.text import join_windows, lexicon

    signed = task.problem not in ("regression", "survival")
    units = list(dict.fromkeys(e.unit for e in examples))
    # ---------------------------------------------------------------- attributions.csv
    rows = []
    for e in examples:
        for name, a in e.attrs.items():
            for rank, j in enumerate(_order(a.scores, signed)[:top_k], start=1):
                rows.append([e.unit, e.position, name, used[name], e.predicted, f"{e.prob:.6g}", rank,
                             a.items.names[j], f"{float(a.scores[j]):.6g}"])
    write_csv(out / "attributions.csv", ["unit", "example", "input", "method", "predicted", "predicted_score",
                                         "rank", "item", "score"], rows)
    # ---------------------------------------------------------------- overlays
    overlays: list[list[Any]] = []
    pngs: dict[tuple[int, str], str] = {}
    for n, e in enumerate(examples):
        for name, a in e.attrs.items():
            if "cam" in a.extra and "pixels" in a.extra:
                (out / "overlays").mkdir(exist_ok=True)
                png = overlay_png(a.extra["pixels"], a.extra["cam"])
                fname = safe_name(f"{e.unit}/{e.position}/{name}", n)
                (out / "overlays" / fname).write_bytes(png)
                pngs[(n, name)] = base64.b64encode(png).decode()
                h, w = a.extra["cam"].shape
                blank = bool(a.extra.get("degenerate"))
                overlays.append([e.unit, e.position, name, f"overlays/{fname}", "" if blank else a.extra["peak"][0],
                                 "" if blank else a.extra["peak"][1], h, w, int(blank)])
    if overlays:
        write_csv(out / "overlays.csv", ["unit", "example", "input", "png", "peak_row", "peak_col", "height",
                                         "width", "blank"], overlays)
    # ---------------------------------------------------------------- faithfulness
    faithfulness = {}
    for s in espec.inputs:
        f = faith.get(s.name, {})
        top, rand = f.get("top", []), f.get("random", [])
        corr = f.get("spearman", [])
        faithfulness[s.name] = {
            "kind": s.kind, "method": methods.get(used[s.name], used[s.name]),
            "baseline": s.baseline_doc or ("each image's mean" if s.kind == "image" else "zero"),
            "deletion_k": "10% of the items (at least 1; 1 below 10 items)",
            "deletion_top": _mean(top), "deletion_random": _mean(rand), "deletion_n": len(top),
            "deletion_top_beats_random": _mean([float(a > b) for a, b in zip(top, rand)]),
            "randomisation_spearman": _mean(corr), "randomisation_n": len(corr),
            "ig_delta_mean": _mean(f.get("delta", [])),
            "ig_delta_max": float(np.max(f["delta"])) if f.get("delta") else None,
            "degenerate": int(sum(f.get("degenerate", []))),
        }
        faithfulness[s.name]["deletion_verdict"] = deletion_verdict(faithfulness[s.name])
        faithfulness[s.name]["randomisation_verdict"] = randomisation_verdict(faithfulness[s.name])
    # ---------------------------------------------------------------- per-modality summaries
    docs: dict[str, list[tuple[str, float]]] = {}
    lex: dict[str, Any] = {}
    tok = next((s for s in espec.inputs if s.kind == "tokens"), None)
    if tok is not None:
        windows: dict[str, list[list[tuple[str, float, int]]]] = defaultdict(list)
        pred: dict[str, str] = {}
        for e in examples:
            a = e.attrs.get(tok.name)
            if a is not None:
                windows[e.unit].append([(w, float(sc), len(ix)) for w, sc, ix in
                                        zip(a.items.names, a.scores, a.items.index)])
                pred[e.unit] = e.predicted
        docs = {u: join_windows(ws, tok.window_overlap) for u, ws in windows.items()}
        lex = lexicon([(pred[u], words) for u, words in docs.items()])
    global_items: dict[str, list[dict[str, Any]]] = {}
    for s in espec.inputs:
        if s.kind in ("features", "modalities"):
            vals: dict[str, list[float]] = defaultdict(list)
            first: dict[str, int] = defaultdict(int)
            for e in examples:
                a = e.attrs.get(s.name)
                if a is None:
                    continue
                for nm, sc in zip(a.items.names, a.scores):
                    vals[nm].append(float(sc))
                first[a.items.names[int(_order(a.scores, signed)[0])]] += 1
            n_ex = sum(first.values()) or 1
            global_items[s.name] = sorted(
                ({"item": nm, "mean_abs": float(np.mean(np.abs(v))), "mean": float(np.mean(v)),
                  "ranked_first": first[nm] / n_ex} for nm, v in vals.items()), key=lambda r: -r["mean_abs"])
    summary = {
        "format": "medmm.explanations", "version": 1, "task": task_name, "run_dir": str(run_dir),
        "problem": task.problem, "examples": len(examples), "units": len(units),
        "seconds": seconds, "seconds_per_example": seconds / max(1, len(examples)),
        "attribution_seconds_per_example": attr_seconds / max(1, len(examples)),
        "methods": {n: methods.get(m, m) for n, m in used.items()}, "fallback": fallback,
        "faithfulness": faithfulness, "lexicon": lex, "global": global_items,
        "permutation_importance": extras.get("permutation"), "overlays": len(overlays),
        "selection": extras.get("selection"),
        "notes": list(espec.notes),
    }
    write_json_atomic(out / "summary.json", summary, default=str)  # strict JSON
    html = _html(task_name, summary, espec, examples, docs, pngs, signed, top_k)
    write_text_atomic(out / "explanations.html", html)
    return summary


# ------------------------------------------------------------------------------------ HTML


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _faith_table(summary: dict[str, Any]) -> str:
    head = ("<tr><th>input</th><th>method</th><th>baseline</th><th>drop, top-k deleted</th>"
            "<th>drop, k random deleted</th><th>top-k beats random</th><th>examples</th>"
            "<th>rank correlation with a randomised model</th><th>IG delta (mean / max)</th></tr>")
    rows, warn, verdicts = [], [], []
    for name, f in summary["faithfulness"].items():
        verdicts.append(f"<li><strong>{esc_html(name)}</strong>, deletion: {esc_html(f.get('deletion_verdict', ''))}</li>"
                        f"<li><strong>{esc_html(name)}</strong>, model randomisation: "
                        f"{esc_html(f.get('randomisation_verdict', ''))}</li>")
        if f.get("degenerate"):
            verdicts.append(f"<li><strong>{esc_html(name)}</strong>: {f['degenerate']} blank or flat map(s) (nothing above "
                            "zero after Grad-CAM's ReLU, or one value everywhere) are marked in the examples and left "
                            "out of both checks.</li>")
        rows.append(f"<tr><td>{esc_html(name)}</td><td>{esc_html(f['method'])}</td><td>{esc_html(f['baseline'])}</td>"
                    f"<td class=num>{_num(f['deletion_top'])}</td><td class=num>{_num(f['deletion_random'])}</td>"
                    f"<td class=num>{_num(f['deletion_top_beats_random'])}</td><td class=num>{f['deletion_n']}</td>"
                    f"<td class=num>{_num(f['randomisation_spearman'])} (n={f['randomisation_n']})</td>"
                    f"<td class=num>{_num(f['ig_delta_mean'])} / {_num(f['ig_delta_max'])}</td></tr>")
        if f["deletion_top"] is not None and f["deletion_random"] is not None and f["deletion_top"] <= f["deletion_random"]:
            warn.append(f"{name}: deleting the top-attributed items does not move the prediction more than deleting "
                        "random ones; these attributions are not faithful to this model.")
        if f["randomisation_spearman"] is not None and f["randomisation_spearman"] > HIGH_CORRELATION:
            warn.append(f"{name}: the attributions of a model with random weights rank the items much like the trained "
                        "model's (high correlation): this method shows the input more than what the model learnt.")
    expl = html_note("Deletion: the k items with the highest attribution are replaced by the baseline and the drop in the "
                 "predicted class's probability is recorded (regression / survival: the absolute change of the output); "
                 "the control replaces k random items of the same example. Model randomisation (Adebayo et al., 2018): "
                 "the same method on the model with re-initialised weights; low correlation is what a method that "
                 "reads the model should show (a flat map from the randomised model counts as 0).")
    return (f"<ul>{''.join(verdicts)}</ul><table>{head}{''.join(rows)}</table>" + expl
            + "".join(f'<p><strong>Warning.</strong> {esc_html(w)}</p>' for w in warn))


def _words_html(words: Sequence[tuple[str, float]]) -> str:
    top = max((abs(s) for _, s in words), default=0.0) or 1.0
    parts = []
    for w, s in words:
        a = min(1.0, abs(s) / top) * 0.85
        colour = f"rgba(220,38,38,{a:.2f})" if s > 0 else f"rgba(37,99,235,{a:.2f})"
        parts.append(f'<span style="background:{colour};padding:1px 2px;border-radius:2px" '
                     f'title="{s:.4g}">{esc_html(w)}</span>')
    return f'<p style="line-height:1.9">{" ".join(parts)}</p>'


def _items_table(a: Any, signed: bool, top_k: int) -> str:
    """Top items with the example's own value beside the attribution, and a bar per attribution."""
    values = a.extra.get("values")
    order = _order(a.scores, signed)[:top_k]
    top = max((abs(float(a.scores[j])) for j in order), default=0.0) or 1.0
    rows = []
    for j in order:
        sc = float(a.scores[j])
        width = 100 * abs(sc) / top
        colour = "#dc2626" if sc > 0 else "#2563eb"
        bar = (f'<div style="width:160px;background:#f3f4f6"><div style="width:{width:.0f}%;height:10px;'
               f'background:{colour}"></div></div>')
        value = f"<td>{esc_html(values[j])}</td>" if values is not None else ""
        rows.append(f"<tr><td>{esc_html(a.items.names[j])}</td>{value}<td class=num>{sc:.4g}</td><td>{bar}</td></tr>")
    head = "<tr><th>item</th>" + ("<th>value in this example</th>" if values is not None else "") + \
        "<th>attribution</th><th></th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _html(task_name: str, summary: dict[str, Any], espec: Any, examples: list[Any], docs: dict[str, Any],
          pngs: dict[tuple[int, str], str], signed: bool, top_k: int) -> str:
    parts = [page_header(f"medmm explain: {task_name}", summary["problem"], summary["examples"]),
             html_section("Summary", kv_table({
                 "task": task_name, "problem": summary["problem"], "examples explained": summary["examples"],
                 "units": summary["units"], "units chosen": summary.get("selection") or "n/a", **{f"method ({n})": m for n, m in summary["methods"].items()},
                 "seconds per example (attributions / with the checks)":
                     f"{summary['attribution_seconds_per_example']:.3f} / {summary['seconds_per_example']:.3f}"})
                 + "".join(html_note(n) for n in summary["notes"])),
             html_section("Faithfulness", _faith_table(summary)),
             html_section("What these explanations do not prove", f"<p>{esc_html(CAVEATS)}</p>")]
    if summary["lexicon"]:
        body = ""
        for cls, rows in summary["lexicon"].items():
            body += (f"<h3>predicted {esc_html(cls)}</h3><table><tr><th>word</th><th>mean attribution</th>"
                     "<th>documents</th></tr>" + "".join(
                         f"<tr><td>{esc_html(w)}</td><td class=num>{m:.4g}</td><td class=num>{n}</td></tr>"
                         for w, m, n in rows) + "</table>")
        parts.append(html_section("Global lexicon (words with the highest mean attribution per predicted class)",
                              body + html_note("A template phrase or a de-identification token at the top of this list "
                                           "means the model keys on it.")))
    for name, rows in summary["global"].items():
        body = "<table><tr><th>item</th><th>mean |attribution|</th><th>mean attribution</th><th>ranked first</th></tr>"
        body += "".join(f"<tr><td>{esc_html(r['item'])}</td><td class=num>{r['mean_abs']:.4g}</td>"
                        f"<td class=num>{r['mean']:.4g}</td><td class=num>{r['ranked_first']:.0%}</td></tr>"
                        for r in rows) + "</table>"
        parts.append(html_section(f"Global importance: {name}", body))
    if summary.get("permutation_importance"):
        body = "<table><tr><th>column</th><th>mean |change| when shuffled</th><th>95% CI</th></tr>" + "".join(
            f"<tr><td>{esc_html(r['item'])}</td><td class=num>{r['importance']:.4g}</td>"
            f"<td class=num>[{r['ci_low']:.4g}, {r['ci_high']:.4g}]</td></tr>" for r in summary["permutation_importance"])
        parts.append(html_section("Permutation importance", body + "</table>" + html_note(
            "Each column shuffled across the explained rows (5 shuffles); the change of the model's output "
            "(the predicted class's probability, or the predicted value); bootstrap CI over rows.")))
    shown: set[str] = set()
    blocks = []
    for n, e in enumerate(examples):
        if summary["problem"] == "regression":
            said = f"predicted value {e.prob:.4g}"
        elif summary["problem"] == "survival":
            said = f"predicted log hazard {e.prob:.4g}"
        else:
            said = f"predicted {esc_html(e.predicted)} (P = {e.prob:.3f})"
        head = f"<h3>{esc_html(e.unit)}: {said}</h3>"
        body = ""
        for s in espec.inputs:
            a = e.attrs.get(s.name)
            if a is None:
                continue
            if s.kind == "tokens":
                if e.unit in shown:
                    continue  # a chunked document is shown once, whole
                body += f"<p><em>{esc_html(s.name)}</em></p>" + _words_html(docs.get(e.unit, []))
            elif (n, s.name) in pngs:
                blank = " — blank map (no region raised the score): not used in the faithfulness figures" \
                    if a.extra.get("degenerate") else ""
                body += (f'<figure><img alt="{esc_html(s.name)} attribution" src="data:image/png;base64,{pngs[(n, s.name)]}" '
                         f'style="max-width:360px"><figcaption>{esc_html(s.name)}{esc_html(blank)}</figcaption></figure>')
            else:
                body += f"<p><em>{esc_html(s.name)}</em></p>" + _items_table(a, signed, top_k)
        shown.add(e.unit)
        if body:
            blocks.append(head + body)
    parts.append(html_section("Examples", "\n".join(blocks) + html_note(
        "Red: pushes towards the predicted class; blue: away from it (text and tables; regression: raises / lowers "
        "the prediction). Heat maps: drawn over the pixels the model was given; the colour bar at each map's right "
        "runs from 0 (no attribution, bottom) to that map's largest attribution (top).")))
    return html_page(f"medmm explain {task_name}", "\n".join(parts))


def safe_name(unit: str, i: int) -> str:
    """A file name for a unit's overlay that reveals nothing about it (no path, no UID)."""
    return f"{i:04d}-{hashlib.sha256(unit.encode()).hexdigest()[:10]}.png"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A small CSV of the explanation outputs (header + rows)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
