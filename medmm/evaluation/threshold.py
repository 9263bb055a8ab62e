"""Operating points: a decision threshold chosen on the validation split, and the figures at it.

Binary problems get one threshold on P(positive); multiclass problems one per class,
one-vs-rest; multi-label problems one per label (each label its own binary problem). A unit is called positive for a class when its probability is ``>= threshold``
(the convention of :func:`sklearn.metrics.roc_curve`, whose thresholds are the candidates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import ConfigError
from medmm.metrics import CI_METHOD, bootstrap_resamples, format_estimate, interval, resample_counts

__all__ = [
    "RULES",
    "UNDEFINED",
    "choose_operating_point",
    "choose_threshold",
    "decisions",
    "f1_at",
    "load_operating_point",
    "operating_stats",
    "save_operating_point",
    "stat_text",
    "stats_table",
]

RULES = ("youden", "target_sensitivity", "target_specificity", "fixed")
FORMAT = "medmm-operating-point"
FILE = "operating_point.json"
STATS = ("sensitivity", "specificity", "ppv", "npv")


def choose_threshold(y: Any, p: Any, rule: str, target: float = 0.9, fixed: float = 0.5) -> float:
    """The threshold of ``rule`` on scores ``p`` for 0/1 labels ``y``.

    - ``youden``: maximises sensitivity + specificity - 1 (the highest such threshold on ties);
    - ``target_sensitivity``: the highest threshold whose sensitivity is ``>= target``
      (so the best specificity that keeps the sensitivity);
    - ``target_specificity``: the lowest threshold whose specificity is ``>= target``;
    - ``fixed``: ``fixed``.
    Undefined (one class only) -> ``fixed``.
    """
    from sklearn.metrics import roc_curve

    if rule not in RULES:
        raise ConfigError(f"eval.threshold must be one of {', '.join(RULES)}, got {rule!r}")
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if rule == "fixed" or y.size == 0 or y.min() == y.max():
        return float(fixed)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thresholds descending
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))
    elif rule == "target_sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
    t = float(thr[i])
    return t if math.isfinite(t) else float(np.nextafter(p.max(), np.inf))


def _columns(problem: str, y: Any, scores: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C]`` one-vs-rest labels and scores: binary -> the positive class only; multilabel as given."""
    s = np.asarray(scores, dtype=float)
    if problem == "binary":
        return np.asarray(y).astype(int).reshape(-1, 1), s.reshape(-1, 1)
    if problem == "multilabel":
        return (np.asarray(y) >= 0.5).astype(int).reshape(-1, k), s.reshape(-1, k)
    y = np.asarray(y).astype(int)
    return np.eye(k, dtype=int)[y] if y.size else np.zeros((0, k), int), s


def choose_operating_point(problem: str, y: Any, scores: Any, label_names: Sequence[str], *, rule: str,
                           target: float, fixed: float, chosen_on: str) -> dict[str, Any]:
    """The stored form of an operating point: one threshold per class (binary: the positive one)."""
    names = [str(n) for n in label_names]
    classes = names[1:] if problem == "binary" else names
    yc, sc = _columns(problem, y, scores, len(names))
    thresholds = {c: choose_threshold(yc[:, k], sc[:, k], rule, target, fixed) for k, c in enumerate(classes)}
    return {"format": FORMAT, "version": 1, "problem": problem, "rule": rule, "target": float(target),
            "classes": names, "thresholds": thresholds, "chosen_on": chosen_on, "n": len(yc)}


def decisions(problem: str, scores: Any, op: Mapping[str, Any]) -> np.ndarray:
    """0/1 calls ``[N, C]`` at the operating point (binary: ``C = 1``)."""
    s = np.asarray(scores, dtype=float)
    s = s.reshape(-1, 1) if problem == "binary" else s
    thr = np.asarray([op["thresholds"][c] for c in _op_classes(problem, op)], dtype=float)
    return (s >= thr[None, :]).astype(int)


def _op_classes(problem: str, op: Mapping[str, Any]) -> list[str]:
    return list(op["classes"][1:]) if problem == "binary" else list(op["classes"])


def _rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
                "npv": tn / (tn + fn)}


def operating_stats(y: Any, call: Any, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Counts, sensitivity, specificity, PPV and NPV of 0/1 ``call`` vs 0/1 ``y``, with bootstrap CIs."""
    y, c = np.asarray(y).astype(int), np.asarray(call).astype(int)
    cells = [(y == 1) & (c == 1), (y == 0) & (c == 1), (y == 0) & (c == 0), (y == 1) & (c == 0)]
    counts = [np.asarray(float(m.sum())) for m in cells]
    point = {k: float(v) for k, v in _rates(*counts).items()}
    ci: dict[str, tuple[float, float]] = {}
    if n_boot and y.size:
        ws = []
        for idx in bootstrap_resamples(np.random.default_rng(seed), y.size, n_boot):  # [B, N] at a time
            w = resample_counts(idx, y.size)
            ws.append(np.stack([w @ m for m in cells]))
        boot = _rates(*np.concatenate(ws, axis=1))
        for k, v in boot.items():
            ci[k] = interval(v, point[k])  # holds the point estimate
    tp, fp, tn, fn = (int(x) for x in counts)
    return {**point, "ci": ci, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": int(y.size)}


def stats_at(problem: str, y: Any, scores: Any, op: Mapping[str, Any], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Per class (binary: the positive class) :func:`operating_stats` at the operating point."""
    classes = _op_classes(problem, op)
    yc, _ = _columns(problem, y, scores, len(op["classes"]))
    calls = decisions(problem, scores, op)
    return {c: {"threshold": float(op["thresholds"][c]),
                **operating_stats(yc[:, k], calls[:, k], n_boot=n_boot, seed=seed)} for k, c in enumerate(classes)}


def f1_at(y: Any, scores: Any, op: Mapping[str, Any], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Multi-label micro and macro F1 of the calls at the operating point, with bootstrap CIs.

    Macro F1 leaves out labels never true nor called (as :func:`medmm.metrics` does at 0.5).
    """
    yc, _ = _columns("multilabel", y, scores, len(op["classes"]))
    c = decisions("multilabel", scores, op)
    cells = np.stack([(yc == 1) & (c == 1), (yc == 0) & (c == 1), (yc == 1) & (c == 0)]).astype(float)  # tp fp fn

    def f1s(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[..., K]`` counts -> (micro, macro) ``[...]``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            micro = 2 * tp.sum(-1) / (2 * tp.sum(-1) + fp.sum(-1) + fn.sum(-1))
            per = 2 * tp / (2 * tp + fp + fn)
            n = np.isfinite(per).sum(-1)
            macro = np.where(n > 0, np.nansum(per, -1) / np.maximum(n, 1), np.nan)
        return micro, macro

    micro, macro = f1s(*cells.sum(1))
    out: dict[str, Any] = {"micro_f1": float(micro), "macro_f1": float(macro), "ci": {}, "n": len(yc)}
    if n_boot and len(yc):
        mi, ma = [], []
        for idx in bootstrap_resamples(np.random.default_rng(seed), len(yc), n_boot):
            w = resample_counts(idx, len(yc))  # [B, N]
            a, b = f1s(*np.einsum("bn,cnk->cbk", w, cells))
            mi.append(a)
            ma.append(b)
        for k, v in (("micro_f1", np.concatenate(mi)), ("macro_f1", np.concatenate(ma))):
            out["ci"][k] = interval(v, out[k])  # holds the point estimate
    return out


def save_operating_point(directory: Path, op: Mapping[str, Any]) -> Path:
    """``artifacts/operating_point.json`` (atomic)."""
    from medmm.io import write_json_atomic

    return write_json_atomic(Path(directory) / FILE, dict(op))


def load_operating_point(run_dir: Path) -> dict[str, Any] | None:
    """The run's stored operating point, or ``None`` for runs trained without one."""
    from medmm.io import read_json

    path = Path(run_dir) / "artifacts" / FILE
    return read_json(path, format=FORMAT) if path.exists() else None


UNDEFINED = {"sensitivity": "n/a (no positives)", "specificity": "n/a (no negatives)",
             "ppv": "n/a (no positive calls)", "npv": "n/a (no negative calls)"}
"""How an undefined operating-point figure is shown: never ``nan``."""


def stat_text(s: Mapping[str, Any], k: str, style: str = "(95% CI {lo}-{hi})") -> str:
    """One figure of :func:`operating_stats` with its CI (when ``s`` has one), rounded to what the CI
    supports; an undefined one says why (``n/a (no positives)``)."""
    ci = (s.get("ci") or {}).get(k)
    return format_estimate(s.get(k), ci, undefined=UNDEFINED.get(k, "n/a"), style=style)


def stats_table(stats: Mapping[str, Mapping[str, Any]], op: Mapping[str, Any]) -> tuple[str, str]:
    """HTML and Markdown tables of :func:`stats_at` output."""
    import html

    def cell(s: Mapping[str, Any], k: str) -> str:
        return stat_text(s, k, style="({lo}–{hi})")

    head = ["class", "threshold", "sensitivity", "specificity", "PPV", "NPV", "TP", "FP", "TN", "FN"]
    rows = [[c, f"{s['threshold']:.4f}", *(cell(s, k) for k in STATS), *(str(s[k]) for k in ("tp", "fp", "tn", "fn"))]
            for c, s in stats.items()]
    h = ("<table><tr>" + "".join(f"<th>{x}</th>" for x in head) + "</tr>"
         + "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
         + "</table>")
    rule = op["rule"] + (f" (target {op['target']:.2f})" if op["rule"].startswith("target") else "")
    problem = op.get("problem")
    other = {"multiclass": "arg-max", "binary": "P >= 0.5", "multilabel": "P >= 0.5"}.get(str(problem))
    note = (f"Decision rule of this table: threshold rule {rule}, chosen on the {op['chosen_on']} split "
            f"({op['n']} units); called positive when P >= threshold" + (" (one-vs-rest, per class)"
                                                                        if problem == "multiclass" else "")
            + ". These calls are predictions.csv's 'decision' columns" + (
                f"; the confusion matrix, the per-class table and the 'predicted' column use {other}, so their "
                "counts can differ" if other else "") + f". 95% CIs in brackets: {CI_METHOD}.")
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "\n".join(
        "| " + " | ".join(r) + " |" for r in rows)
    return h + f'\n<p class="note">{html.escape(note)}</p>', md + "\n\n" + note
