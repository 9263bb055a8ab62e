"""medmm's conformal prediction sets / intervals vs MAPIE on the same probabilities, on real data.

For each data set and seed: a stratified 50 / 25 / 25 split (train / calibration / test), a plain
scikit-learn model fitted on train (TF-IDF + logistic regression for the IU chest X-ray reports,
logistic regression for breast cancer, ridge for diabetes), its probabilities / predictions on the
calibration and test parts, then:

- medmm: :func:`medmm.evaluation.conformal.calibrate` on the calibration part (Mondrian by class,
  the default; regression: absolute residual) and :func:`~medmm.evaluation.conformal.apply_sets` on test;
- MAPIE (1.x ``SplitConformalClassifier`` / ``SplitConformalRegressor``, ``prefit``, LAC / absolute
  residual) on the very same probabilities: class-conditional = MAPIE conformalized on the calibration
  units of each class, read for that class (multi-label: each label a binary problem).

Printed per data set: empirical coverage overall and in every class (label), mean set size (interval
width), share referred (set not exactly one class), the share of test units whose set equals MAPIE's,
and the worst |coverage - (1 - alpha)| over seeds. Goal: within 2 points overall and in every class.
The coverage guarantee is on average over calibration draws; one draw on a small test part scatters
by about sqrt(alpha (1 - alpha) / n_test) (e.g. 2.9 points for diabetes' 111 test rows), so each seed
(one model) averages ``--splits`` random calibration / test partitions of its held-out half, as
conformal papers do; the worst seed and the mean over seeds are both printed.

Exact split conformal over-covers a class with ``n_k`` calibration units: conditional on ``n_k`` its
expected coverage is ``ceil((n_k + 1)(1 - alpha)) / (n_k + 1)``, between ``1 - alpha`` and
``1 - alpha + 1 / (n_k + 1)`` (no ties). Printed per class beside the observed mean ("expected", averaged
over the partitions' ``n_k``), with the Monte-Carlo standard error of that mean ("se"): the partitions
re-split one held-out half, so a small class's mean scatters by its se around the expectation. Within 2
points is guaranteed in expectation only for ``n_k >= 49`` (``1 / (n_k + 1) <= 0.02``).

    python bench/conformal.py                      # alpha 0.1, seeds 0 1 2, all data sets
    python bench/conformal.py --alpha 0.2 --only breast_cancer diabetes --out conformal.json
    python bench/conformal.py --runs runs/my-run runs/other --splits 100   # medmm runs' own model outputs
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from typing import Any

import numpy as np

from medmm.evaluation.conformal import apply_sets, calibrate


# --------------------------------------------------------------------------- data sets (real, installed offline)


def _reports() -> list[Any]:
    from medmm.demos.reports import iter_reports

    return [r for r in iter_reports() if r.text.strip()]


def iu_binary() -> tuple[list[str], np.ndarray, list[str], str]:
    """IU chest X-ray reports: normal vs abnormal (the text-cls demo's label)."""
    rs = _reports()
    names = ["abnormal", "normal"]
    return [r.text for r in rs], np.array([names.index(r.label) for r in rs]), names, "text"


def iu_multiclass() -> tuple[list[str], np.ndarray, list[str], str]:
    """IU reports: the primary MeSH major finding, the 6 most frequent (reports with another are left out)."""
    rs = [r for r in _reports() if r.mesh_major]
    root = [r.mesh_major[0].split("/")[0].strip() for r in rs]
    names = [n for n, _ in Counter(root).most_common(6)]
    keep = [i for i, n in enumerate(root) if n in names]
    return [rs[i].text for i in keep], np.array([names.index(root[i]) for i in keep]), names, "text"


def iu_multilabel() -> tuple[list[str], np.ndarray, list[str], str]:
    """IU reports: the 5 most frequent abnormal MeSH major roots, multi-label."""
    rs = _reports()
    roots = [{m.split("/")[0].strip() for m in r.mesh_major} - {"normal", "No Indexing"} for r in rs]
    names = [n for n, _ in Counter(x for s in roots for x in s).most_common(5)]
    y = np.array([[int(n in s) for n in names] for s in roots])
    return [r.text for r in rs], y, names, "text"


def breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str], str]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data, d.target, ["malignant", "benign"], "table"


def diabetes() -> tuple[np.ndarray, np.ndarray, list[str], str]:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return d.data, d.target.astype(float), [], "table"


SETS = {"iu_binary": ("binary", iu_binary), "iu_multiclass": ("multiclass", iu_multiclass),
        "iu_multilabel": ("multilabel", iu_multilabel), "breast_cancer": ("binary", breast_cancer),
        "diabetes": ("regression", diabetes)}


# --------------------------------------------------------------------------- models and MAPIE


def _model_outputs(problem: str, kind: str, x: Any, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Indices of calibration / test units and the model's scores on them."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import train_test_split
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    idx = np.arange(len(y))
    strat = y if problem in ("binary", "multiclass") else None
    tr, rest = train_test_split(idx, train_size=0.5, stratify=strat, random_state=seed)
    cal, te = train_test_split(rest, train_size=0.5, stratify=None if strat is None else y[rest], random_state=seed)
    pick = (lambda ii: [x[i] for i in ii]) if kind == "text" else (lambda ii: x[ii])
    pre = TfidfVectorizer(min_df=2, ngram_range=(1, 2), sublinear_tf=True) if kind == "text" else StandardScaler()
    if problem == "regression":
        m = make_pipeline(pre, RidgeCV()).fit(pick(tr), y[tr])
        return cal, te, m.predict(pick(cal)), m.predict(pick(te))
    lr = LogisticRegression(max_iter=2000, C=4.0)
    m = make_pipeline(pre, OneVsRestClassifier(lr) if problem == "multilabel" else lr).fit(pick(tr), y[tr])
    pc, pt = m.predict_proba(pick(cal)), m.predict_proba(pick(te))
    if problem == "binary":
        pc, pt = pc[:, 1], pt[:, 1]
    return cal, te, pc, pt


def _mapie_classes():
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

    class Probs(ClassifierMixin, BaseEstimator):
        """A prefit 'classifier' whose input is its own probability matrix."""

        def fit(self, X, y):
            self.classes_ = np.arange(np.asarray(X).shape[1])
            self.n_features_in_ = np.asarray(X).shape[1]
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    class Preds(RegressorMixin, BaseEstimator):
        def fit(self, X, y):
            self.n_features_in_ = 1
            return self

        def predict(self, X):
            return np.asarray(X)[:, 0]

    return Probs, Preds


def _mapie_sets(p_cal: np.ndarray, y_cal: np.ndarray, p_te: np.ndarray, alpha: float) -> np.ndarray:
    """Class-conditional LAC sets from MAPIE: conformalized on each class's calibration units in turn.

    MAPIE refuses a class with at most max(1 / alpha, 1 / (1 - alpha)) calibration units; such a class is
    then always in the set (the conservative fallback), counted in ``MAPIE_REFUSED``."""
    from mapie.classification import SplitConformalClassifier

    Probs, _ = _mapie_classes()
    k = p_cal.shape[1]
    out = np.ones((len(p_te), k), bool)
    for c in range(k):
        m = y_cal == c
        if m.sum() <= max(1 / alpha, 1 / (1 - alpha)):
            MAPIE_REFUSED[0] += 1
            continue  # MAPIE refuses so few units: always included
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mp = SplitConformalClassifier(Probs().fit(p_cal, y_cal), confidence_level=1 - alpha,
                                          prefit=True).conformalize(p_cal[m], y_cal[m])
            out[:, c] = mp.predict_set(p_te)[1][:, c, 0]
    return out


MAPIE_REFUSED = [0]


def _two(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


# --------------------------------------------------------------------------- one run


def run_one(name: str, alpha: float, seed: int, data: tuple[Any, ...], splits: int) -> dict[str, Any]:
    """One model per seed; coverage averaged over ``splits`` random calibration / test partitions of its
    held-out half (the guarantee is an average over calibration draws: one draw on ~100 test units
    scatters by several points)."""
    problem = SETS[name][0]
    x, y, names, kind = data
    cal, te, sc, st = _model_outputs(problem, kind, x, y, seed)
    pool, scores = np.r_[cal, te], np.concatenate([sc, st])
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(splits):
        perm = rng.permutation(len(pool))
        c, t = perm[: len(cal)], perm[len(cal):]
        parts.append(_partition(problem, names, alpha, y[pool[c]], scores[c], y[pool[t]], scores[t]))
    out: dict[str, Any] = {"n_cal": len(cal), "n_test": len(te), "splits": splits}
    for k in ("coverage", "mapie_coverage", "mean_size", "referred", "same_as_mapie"):
        out[k] = float(np.mean([p[k] for p in parts]))
    for k in ("classes", "mapie_classes", "expected", "n_k"):
        keys = parts[0].get(k, {})
        out[k] = {n: float(np.nanmean([p[k][n] for p in parts])) for n in keys}
    out["se"] = {n: float(np.nanstd([p["classes"][n] for p in parts], ddof=1) / np.sqrt(splits))
                 for n in parts[0].get("classes", {})} if splits > 1 else {}
    return out


def _expected(y_cal: np.ndarray, names: list[str], alpha: float) -> dict[str, Any]:
    """Per class: the exact split-conformal expected coverage given its ``n_k`` calibration units, and ``n_k``."""
    import math

    n_k = {n: int((y_cal == k).sum()) for k, n in enumerate(names)}
    return {"expected": {n: min(1.0, math.ceil((m + 1) * (1 - alpha) - 1e-12) / (m + 1)) for n, m in n_k.items()},
            "n_k": n_k}


def _partition(problem: str, names: list[str], alpha: float, y_cal: np.ndarray, sc: np.ndarray, y_te: np.ndarray,
               st: np.ndarray) -> dict[str, Any]:
    """medmm and MAPIE on one calibration / test partition."""
    conf = calibrate(problem, y_cal, sc, alpha=alpha, classes=names or None)
    out = apply_sets(conf, st)
    res: dict[str, Any] = {}
    n_te = len(y_te)
    if problem == "regression":
        from mapie.regression import SplitConformalRegressor

        _, Preds = _mapie_classes()
        reg = SplitConformalRegressor(Preds().fit(sc[:, None], y_cal), confidence_level=1 - alpha, prefit=True)
        iv = reg.conformalize(sc[:, None], y_cal).predict_interval(st[:, None])[1][:, :, 0]
        cov = (y_te >= out["lower"]) & (y_te <= out["upper"])
        mcov = (y_te >= iv[:, 0]) & (y_te <= iv[:, 1])
        res.update(coverage=float(cov.mean()), mapie_coverage=float(mcov.mean()), classes={},
                   mean_size=float(out["width"].mean()), referred=float(out["abstain"].mean()),
                   same_as_mapie=float(np.isclose(out["lower"], iv[:, 0]).mean()))
        return res
    if problem == "multilabel":
        cov = np.take_along_axis(out["sets"], y_te[:, :, None], axis=2)[:, :, 0]
        same, mcovs = [], {}
        for j, n in enumerate(names):
            ms = _mapie_sets(_two(sc[:, j]), y_cal[:, j], _two(st[:, j]), alpha)
            same.append((ms == out["sets"][:, j, :]).all(axis=1))
            mcovs[n] = float(ms[np.arange(n_te), y_te[:, j]].mean())
        res.update(coverage=float(cov.mean()), mapie_coverage=float(np.mean(list(mcovs.values()))),
                   classes={n: float(cov[:, j].mean()) for j, n in enumerate(names)}, mapie_classes=mcovs,
                   mean_size=float(out["size"].mean()), referred=float(out["abstain"].mean()),
                   same_as_mapie=float(np.all(same, axis=0).mean()), coverage_note="mean over labels")
        return res
    pc, pt = (_two(sc), _two(st)) if problem == "binary" else (sc, st)
    ms = _mapie_sets(pc, y_cal, pt, alpha)
    cov = out["sets"][np.arange(n_te), y_te]
    mcov = ms[np.arange(n_te), y_te]
    res.update(_expected(y_cal, names, alpha))
    res.update(coverage=float(cov.mean()), mapie_coverage=float(mcov.mean()),
               classes={n: float(cov[y_te == k].mean()) for k, n in enumerate(names)},
               mapie_classes={n: float(mcov[y_te == k].mean()) for k, n in enumerate(names)},
               mean_size=float(out["size"].mean()), referred=float(out["abstain"].mean()),
               same_as_mapie=float((ms == out["sets"]).all(axis=1).mean()))
    return res


def run_outputs(run_dir: str) -> tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A finished medmm run's own model outputs: its validation units (conformal_calibration.json) and its
    test predictions (predictions.csv)."""
    import csv
    from pathlib import Path

    from medmm.evaluation.conformal import load_calibration_units, load_conformal

    conf, cal = load_conformal(Path(run_dir)), load_calibration_units(Path(run_dir))
    if conf is None or cal is None:
        raise SystemExit(f"{run_dir}: no artifacts/conformal.json and conformal_calibration.json (train with this medmm)")
    problem, names = conf["problem"], [str(n) for n in conf.get("classes") or []]
    with open(Path(run_dir) / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if problem == "regression":
        st = np.array([float(r["prediction"]) for r in rows])
        yt = np.array([float(r["true"]) for r in rows])
    elif problem == "binary":
        st = np.array([float(r[f"prob_{names[1]}"]) for r in rows])
        yt = np.array([names.index(r["true"]) for r in rows])
    elif problem == "multiclass":
        st = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
        yt = np.array([names.index(r["true"]) for r in rows])
    else:
        names = [k[5:] for k in rows[0] if k.startswith("prob_")]
        st = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
        yt = np.array([[int(n in r["true"].split(";")) for n in names] for r in rows])
    yc = np.asarray(cal["y"])
    yc = yc.astype(int) if problem in ("binary", "multiclass", "multilabel") else yc
    return problem, names, yc, np.asarray(cal["scores"], float), yt, st


def bench_run(run_dir: str, alpha: float, seeds: list[int], splits: int) -> dict[str, Any]:
    """As shipped (val -> test, one draw) and averaged over random val+test re-partitions, vs MAPIE."""
    problem, names, yc, sc, yt, st = run_outputs(run_dir)
    shipped = _partition(problem, names, alpha, yc, sc, yt, st)
    y, s = np.concatenate([yc, yt]), np.concatenate([sc, st])
    parts = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for _ in range(splits):
            perm = rng.permutation(len(y))
            c, t = perm[: len(yc)], perm[len(yc):]
            parts.append(_partition(problem, names, alpha, y[c], s[c], y[t], s[t]))
    avg = {k: float(np.mean([p[k] for p in parts])) for k in ("coverage", "mapie_coverage", "mean_size",
                                                                 "referred", "same_as_mapie")}
    avg["classes"] = {n: float(np.nanmean([p["classes"][n] for p in parts])) for n in parts[0]["classes"]}
    return {"problem": problem, "n_cal": int(len(yc)), "n_test": int(len(yt)), "shipped": shipped, "resampled": avg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--splits", type=int, default=100,
                    help="random calibration / test partitions per seed (coverage is their mean)")
    ap.add_argument("--tol", type=float, default=0.02, help="allowed |coverage - (1 - alpha)|")
    ap.add_argument("--out", help="also write every figure as JSON here")
    ap.add_argument("--runs", nargs="+", default=[],
                    help="finished medmm run directories: their own models' validation and test outputs")
    a = ap.parse_args()
    if a.runs:
        a.only = []
    nominal = 1 - a.alpha
    report: dict[str, Any] = {"alpha": a.alpha, "seeds": a.seeds, "sets": {}}
    print(f"conformal {100 * nominal:g}% sets: medmm vs MAPIE on the same probabilities; goal |coverage - "
          f"{nominal:g}| <= {a.tol:g} overall and per class")
    for name in a.only:
        data = SETS[name][1]()
        runs = [run_one(name, a.alpha, s, data, a.splits) for s in a.seeds]
        report["sets"][name] = runs
        cov = np.array([r["coverage"] for r in runs])
        classes = sorted({k for r in runs for k in r["classes"]})
        per_class = {k: np.array([r["classes"][k] for r in runs]) for k in classes}
        worst_seed = max([abs(cov - nominal).max(), *(abs(v - nominal).max() for v in per_class.values())])
        worst_mean = max([abs(cov.mean() - nominal), *(abs(v.mean() - nominal) for v in per_class.values())])
        print(f"\n{name} ({SETS[name][0]}; calibration {runs[0]['n_cal']}, test {runs[0]['n_test']} units, "
              f"{a.splits} partitions per seed)")
        print(f"  coverage  medmm {cov.mean():.4f} ± {cov.std():.4f}   MAPIE "
              f"{np.mean([r['mapie_coverage'] for r in runs]):.4f}   sets equal to MAPIE's: "
              f"{np.mean([r['same_as_mapie'] for r in runs]):.4f}")
        for k, v in per_class.items():
            mk = [r.get("mapie_classes", {}).get(k) for r in runs]
            ex = [r.get("expected", {}).get(k) for r in runs]
            seeds = ", ".join(f"{c:.4f} (se {r['se'][k]:.4f}, expected {r['expected'][k]:.4f})" for c, r in zip(v, runs)) \
                if None not in ex else ""
            print(f"    {k:<22} {v.mean():.4f} ± {v.std():.4f}" + (f"   MAPIE {np.mean(mk):.4f}" if None not in mk else "")
                  + (f"   expected {np.mean(ex):.4f} (n_k {np.mean([r['n_k'][k] for r in runs]):.0f}); "
                     f"per seed {seeds}" if None not in ex else ""))
        print(f"  mean {'interval width' if SETS[name][0] == 'regression' else 'set size'} "
              f"{np.mean([r['mean_size'] for r in runs]):.3f}, referred {100 * np.mean([r['referred'] for r in runs]):.1f}%")
        ok_mean, ok_seed = worst_mean <= a.tol, worst_seed <= a.tol
        print(f"  worst |coverage - {nominal:g}|: mean over seeds {worst_mean:.4f} ({'ok' if ok_mean else 'MISSES'}), "
              f"single seed {worst_seed:.4f} ({'ok' if ok_seed else 'misses'})")
        report["sets"][name + "_summary"] = {"worst_mean": worst_mean, "worst_seed": worst_seed}
    for run_dir in a.runs:
        MAPIE_REFUSED[0] = 0
        r = bench_run(run_dir, a.alpha, a.seeds, a.splits)
        report["sets"][run_dir] = r
        sh, rs = r["shipped"], r["resampled"]
        print(f"\n{run_dir} (medmm {r['problem']} run; val {r['n_cal']} units calibrate, test {r['n_test']})")
        print(f"  as shipped (val -> test, one draw): coverage {sh['coverage']:.4f} (MAPIE {sh['mapie_coverage']:.4f}), "
              f"sets equal to MAPIE's {sh['same_as_mapie']:.4f}; per class "
              + ", ".join(f"{k} {v:.3f}" for k, v in sh["classes"].items()))
        worst = max([abs(rs["coverage"] - nominal), *(abs(v - nominal) for v in rs["classes"].values())])
        print(f"  val+test re-partitioned ({len(a.seeds)} seeds x {a.splits}): coverage {rs['coverage']:.4f} (MAPIE "
              f"{rs['mapie_coverage']:.4f}), sets equal {rs['same_as_mapie']:.4f}; per class "
              + ", ".join(f"{k} {v:.3f}" for k, v in rs["classes"].items())
              + f"; mean size {rs['mean_size']:.3f}, referred {100 * rs['referred']:.1f}%; worst |coverage - "
              f"{nominal:g}| {worst:.4f} ({'ok' if worst <= a.tol else 'MISSES'})")
        if MAPIE_REFUSED[0]:
            print(f"  MAPIE refused {MAPIE_REFUSED[0]} class calibrations (too few units; the class is then always in "
                  "its set, where medmm may still use a finite threshold)")
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
