"""medmm's bootstrap CIs vs ``scipy.stats.bootstrap`` with scikit-learn metrics.

For each metric and test-set size: wall time of :func:`medmm.metrics.bootstrap_ci` and of
``scipy.stats.bootstrap(..., method="percentile", paired=True, vectorized=False)`` whose statistic
is the scikit-learn metric (C-index: medmm's ``harrell_c_index``, or lifelines'
``concordance_index`` with ``--cindex lifelines``), their ratio and both 95% CIs.

Equal results: each CI endpoint must agree within ``TOL_SE`` x the bootstrap standard error
(scipy's ``standard_error``). With B = 1000 resamples the Monte-Carlo SE of a 2.5% / 97.5%
quantile of a near-normal bootstrap distribution is ~0.085 SE, so two independent runs differ by
~0.12 SE: 0.5 SE is ~4 Monte-Carlo SEs. With ``--scipy-seed`` equal to ``--seed`` (the default)
scipy draws the very same resamples as medmm (same ``Generator``, same batch), so the endpoints
agree to rounding; pass another ``--scipy-seed`` for independent draws.

    python bench/bootstrap_vs_scipy.py                       # n = 500, 5,000, 50,000; B = 1000
    python bench/bootstrap_vs_scipy.py --sizes 500 5000 --scipy-seed 1
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from medmm import metrics as M

TOL_SE = 0.5
"""Allowed |medmm - scipy| per CI endpoint, in bootstrap standard errors (~4 Monte-Carlo SEs)."""

Case = tuple[str, str, str]  # label, medmm problem, medmm metric
CASES: tuple[Case, ...] = (
    ("binary AUROC", "binary", "auroc"),
    ("binary AUPRC", "binary", "auprc"),
    ("binary F1", "binary", "f1"),
    ("multiclass macro AUROC", "multiclass", "auroc"),
    ("regression R2", "regression", "r2"),
    ("regression MAE", "regression", "mae"),
    ("survival C-index", "survival", "c_index"),
)


def make_data(problem: str, n: int, seed: int) -> dict[str, np.ndarray | None]:
    """A realistic-looking test set: informative but imperfect scores."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    if problem == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(int)
        return {"y_true": y, "y_score": 1 / (1 + np.exp(-(z + rng.normal(size=n))))}
    if problem == "multiclass":
        k = 4
        y = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        p = np.exp(logits)
        return {"y_true": y, "y_score": p / p.sum(axis=1, keepdims=True)}
    if problem == "regression":
        y = 10 * z + 50
        return {"y_true": y, "y_score": y + 6 * rng.normal(size=n)}
    risk = z
    time_ = rng.exponential(np.exp(-risk))
    event = rng.random(n) < 0.7
    return {"y_true": None, "y_score": risk + rng.normal(size=n), "time": time_, "event": event}


def reference(problem: str, metric: str, cindex: str) -> Callable[..., float]:
    """The library statistic scipy bootstraps (one resample at a time)."""
    if problem == "binary":
        return {"auroc": skm.roc_auc_score, "auprc": skm.average_precision_score,
                "f1": lambda y, s: skm.f1_score(y, s >= M.THRESHOLD)}[metric]
    if problem == "multiclass":
        return lambda y, s: skm.roc_auc_score(y, s, multi_class="ovr", average="macro")
    if problem == "regression":
        return {"r2": skm.r2_score, "mae": skm.mean_absolute_error}[metric]
    if cindex == "lifelines":
        from lifelines.utils import concordance_index

        return lambda t, e, r: concordance_index(t, -r, e)
    return M.harrell_c_index


def run_case(case: Case, n: int, n_boot: int, seed: int, scipy_seed: int, cindex: str) -> dict[str, Any]:
    label, problem, metric = case
    d = make_data(problem, n, seed=n)
    kw = {"time": d.get("time"), "event": d.get("event")}
    t0 = time.perf_counter()
    ci_m = M.bootstrap_ci(problem, metric, d["y_true"], d["y_score"], **kw, n_boot=n_boot, seed=seed)
    t_m = time.perf_counter() - t0
    stat = reference(problem, metric, cindex)
    if problem == "survival":
        data = (d["time"], d["event"], d["y_score"])
    elif problem == "multiclass":  # [N, K] scores: resample row indices (what paired=True does)
        y, s = d["y_true"], d["y_score"]
        data, stat = (np.arange(n),), lambda i, f=stat: f(y[i], s[i])
    else:
        data = (d["y_true"], d["y_score"])
    batch = max(1, min(n_boot, M._BOOT_CELLS // n))  # medmm's chunk: same draws for the same seed
    t0 = time.perf_counter()
    res = stats.bootstrap(data, stat, n_resamples=n_boot, batch=batch,
                          paired=True, vectorized=False, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(scipy_seed))
    t_s = time.perf_counter() - t0
    ci_s = (float(res.confidence_interval.low), float(res.confidence_interval.high))
    diff = max(abs(ci_m[0] - ci_s[0]), abs(ci_m[1] - ci_s[1]))
    tol = TOL_SE * float(res.standard_error)
    return {"label": label, "n": n, "medmm_s": t_m, "scipy_s": t_s, "ci_m": ci_m, "ci_s": ci_s,
            "diff": diff, "tol": tol, "ok": bool(diff <= tol)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5_000, 50_000])
    ap.add_argument("--n-boot", type=int, default=1000, help="resamples (medmm's default: 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scipy-seed", type=int, default=None, help="default: --seed (same resamples)")
    ap.add_argument("--cindex", choices=("medmm", "lifelines"), default="medmm",
                    help="C-index statistic scipy bootstraps (lifelines: ~6x slower per call)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of case labels to run")
    args = ap.parse_args()
    scipy_seed = args.seed if args.scipy_seed is None else args.scipy_seed
    cases = [c for c in CASES if not args.only or any(s.lower() in c[0].lower() for s in args.only)]
    print(f"B = {args.n_boot}, seeds medmm {args.seed} / scipy {scipy_seed}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"tolerance per endpoint {TOL_SE} bootstrap SE")
    head = f"{'metric':<24}{'n':>7}{'medmm s':>9}{'scipy s':>9}{'ratio':>8}  {'medmm CI':<19}{'scipy CI':<19}{'|diff|':>9}{'tol':>8}  ok"
    print(head)
    rows = []
    for n in args.sizes:
        for case in cases:
            r = run_case(case, n, args.n_boot, args.seed, scipy_seed, args.cindex)
            rows.append(r)
            ratio = r["scipy_s"] / r["medmm_s"]
            ci_m = f"{r['ci_m'][0]:.4f}-{r['ci_m'][1]:.4f}"
            ci_s = f"{r['ci_s'][0]:.4f}-{r['ci_s'][1]:.4f}"
            print(f"{r['label']:<24}{n:>7}{r['medmm_s']:>9.3f}{r['scipy_s']:>9.3f}{ratio:>7.1f}x  "
                  f"{ci_m:<19}{ci_s:<19}{r['diff']:>9.2e}{r['tol']:>8.4f}  {'yes' if r['ok'] else 'NO'}", flush=True)
    slower = [f"{r['label']} n={r['n']}" for r in rows if r["medmm_s"] >= r["scipy_s"]]
    bad = [f"{r['label']} n={r['n']}" for r in rows if not r["ok"]]
    print(f"CIs equal within tolerance: {len(rows) - len(bad)}/{len(rows)}" + (f" (NOT: {', '.join(bad)})" if bad else ""))
    print("medmm slower than scipy: " + (", ".join(slower) if slower else "none"))


if __name__ == "__main__":
    main()
