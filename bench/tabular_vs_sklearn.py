"""medmm's tabular-risk task next to scikit-learn and lifelines, on the same splits and features.

    python bench/tabular_vs_sklearn.py [--splits 5] [--quick]

Three problems, each on ``--splits`` random train/val/test splits (seeds 0..splits-1):

- regression: ``sklearn.datasets.load_diabetes``, R^2, vs ``Ridge``
- binary:     ``sklearn.datasets.load_breast_cancer``, AUROC, vs ``LogisticRegression``
- survival:   ``lifelines.datasets.load_gbsg2`` (categorical columns), C-index, vs ``CoxPHFitter``

medmm is trained exactly as ``medmm train tabular-risk`` trains it: the table goes to a CSV
and through :func:`medmm.runner.run_task` (the task's data split, preprocessor, model, loss,
engine, early stopping and best checkpoint), once per backbone (``linear``, ``mlp``); the
test scores are read back from the run's ``predictions.csv``. Config: the task's defaults
(``configs/tabular-risk.yaml``) plus these overrides:

- ``seed=<split seed>``, ``data.id_column=id`` and the target keys of the problem;
- ``data.test_fraction=0.25``, ``data.val_fraction=0.15``: a 75/25 train/test split with 20%
  of the 75 held out for early stopping (the task defaults are 0.2 / 0.15);
- ``model.backbone=linear|mlp``;
- ``engine.bootstrap=0``: no confidence intervals (not printed here; saves time);
- ``--quick`` only: ``engine.epochs=20`` (a tenth of the default 200).

Learning rate, batch size, schedule, patience and model size are the task's defaults.

Same rows, same features: tabular-risk has no ``data.split_column``, so the split cannot be
handed to it; the task draws it (stratified, from ``seed``) and writes ``splits.csv``, and the
baselines are fitted on that file's ``train`` rows and scored on its ``test`` rows, with the
features of the run's own fitted preprocessor (``artifacts/tabular.json``). ``val`` rows are
used by medmm for early stopping only; the baselines do not see them.

Prints mean +- sd of the test metric over splits and the mean wall time of one fit per model
(medmm: the whole ``run_task`` call, i.e. reading the CSV, preprocessing, training,
checkpoints, test evaluation and report; baselines: fit + predict). Torch runs on one thread:
these models are tiny, and on a busy 2-core machine a second thread only spins (a 20x slowdown
seen). No asserts (a benchmark, not a test); the default run takes about a minute and a half.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmm.config import resolve
from medmm.data.readers import read_table
from medmm.data.tabular.preprocess import Preprocessor, prepare_target
from medmm.plugins import get_registry
from medmm.runner import choices, run_task, task_defaults

BACKBONES = ("linear", "mlp")
ID = "id"


@dataclass
class Rows:
    """One split of a problem: the features of its train and test rows, as the task built them."""

    pre: Preprocessor
    x_train: np.ndarray
    x_test: np.ndarray
    train: pd.DataFrame  # rows of the table as the task read them
    test: pd.DataFrame


# --------------------------------------------------------------------------- medmm


def run_medmm(data: Path, out: Path, seed: int, backbone: str, target_keys: list[str],
              epochs: int | None) -> tuple[pd.DataFrame, pd.Series, Preprocessor]:
    """Train tabular-risk through the CLI's code path; ``(test predictions by id, split by id, preprocessor)``."""
    spec = get_registry().get("task", "tabular-risk")
    overrides = [
        f"seed={seed}", f"data.id_column={ID}", *target_keys,
        "data.test_fraction=0.25", "data.val_fraction=0.15",
        f"model.backbone={backbone}", "engine.bootstrap=0",
        *([f"engine.epochs={epochs}"] if epochs else []),
    ]
    cfg = resolve(task_defaults(spec), None, overrides, choices(spec))
    with contextlib.redirect_stdout(io.StringIO()):  # run_task prints its summary even when quiet
        run_task(spec, cfg, data, out, quiet=True)
    preds = pd.read_csv(out / "predictions.csv", dtype={"id": str}).set_index("id")
    splits = pd.read_csv(out / "splits.csv", dtype={"id": str}).set_index("id")["split"]
    pre = Preprocessor.from_json(json.loads((out / "artifacts" / "tabular.json").read_text())["preprocessor"])
    return preds, splits, pre


def rows_of(table: pd.DataFrame, splits: pd.Series, pre: Preprocessor) -> Rows:
    ids = table[ID].astype(str)
    train = table[ids.map(splits).eq("train").to_numpy()]
    test = table[ids.map(splits).eq("test").to_numpy()]
    return Rows(pre, pre.transform(train), pre.transform(test), train, test)


def medmm_scores(preds: pd.DataFrame, rows: Rows, column: str) -> np.ndarray:
    """medmm's test predictions in the order of ``rows.test``; the test ids must match exactly."""
    ids = rows.test[ID].astype(str)
    if set(preds.index) != set(ids):
        raise RuntimeError("predictions.csv does not hold exactly the test rows of splits.csv")
    return preds.loc[ids, column].to_numpy(dtype=float)


# --------------------------------------------------------------------------- problems
# Each problem: the table (with an ``id`` column), the task's target keys, the column of
# predictions.csv that holds the score, the baseline (fit on train rows -> test scores) and the
# metric (test rows, scores -> value).


def load_diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame


def ridge(rows: Rows) -> np.ndarray:
    from sklearn.linear_model import Ridge

    y = prepare_target(rows.train, "regression", "target").y
    return Ridge(alpha=1.0).fit(rows.x_train, y).predict(rows.x_test)


def r2(test: pd.DataFrame, scores: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return r2_score(prepare_target(test, "regression", "target").y, scores)


def load_breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame


def logistic(rows: Rows) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    y = prepare_target(rows.train, "binary", "target").y
    return LogisticRegression(max_iter=5000).fit(rows.x_train, y).decision_function(rows.x_test)


def auroc(test: pd.DataFrame, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    # target is 0/1, kept as is by prepare_target: the task's positive class (prob_1) is 1
    return roc_auc_score(prepare_target(test, "binary", "target").y, scores)


def load_gbsg2() -> pd.DataFrame:
    from lifelines.datasets import load_gbsg2

    return load_gbsg2()


def cox(rows: Rows) -> np.ndarray:
    from lifelines import CoxPHFitter

    # the same features minus one one-hot column per categorical (a full one-hot set sums to a
    # constant, which a Cox model cannot identify)
    names = rows.pre.feature_names
    drop = {next(n for n in names if n.startswith(f"{c}=")) for c in rows.pre.categorical}
    keep = [i for i, n in enumerate(names) if n not in drop]
    cols = [names[i] for i in keep]
    t = prepare_target(rows.train, "survival", time="time", event="cens")
    frame = pd.DataFrame(rows.x_train[:, keep], columns=cols).assign(T=t.time, E=t.event)
    cph = CoxPHFitter().fit(frame, "T", "E")
    return np.asarray(cph.predict_log_partial_hazard(pd.DataFrame(rows.x_test[:, keep], columns=cols)))


def c_index(test: pd.DataFrame, risk: np.ndarray) -> float:
    from lifelines.utils import concordance_index

    t = prepare_target(test, "survival", time="time", event="cens")
    return concordance_index(t.time, -risk, t.event)  # expects higher = longer survival


@dataclass(frozen=True)
class Problem:
    load: Callable[[], pd.DataFrame]
    target_keys: list[str]
    score_column: str
    baseline_name: str
    baseline: Callable[[Rows], np.ndarray]
    metric: Callable[[pd.DataFrame, np.ndarray], float]


PROBLEMS = {
    "diabetes (R^2)": Problem(load_diabetes, ["data.target=target"], "prediction", "sklearn Ridge", ridge, r2),
    "breast_cancer (AUROC)": Problem(load_breast_cancer, ["data.target=target"], "prob_1",
                                     "sklearn LogisticRegression", logistic, auroc),
    "gbsg2 (C-index)": Problem(load_gbsg2, ["data.time=time", "data.event=cens"], "risk",
                               "lifelines CoxPHFitter", cox, c_index),
}


def run_split(problem: Problem, data: Path, table: pd.DataFrame, work: Path, seed: int,
              epochs: int | None) -> dict[str, tuple[float, float]]:
    """``{model: (test metric, wall seconds)}`` for one split seed."""
    out: dict[str, tuple[float, float]] = {}
    medmm: dict[str, tuple[pd.DataFrame, float]] = {}
    splits = pre = None
    for backbone in BACKBONES:
        start = time.perf_counter()
        preds, run_splits, run_pre = run_medmm(data, work / f"{backbone}-{seed}", seed, backbone,
                                               problem.target_keys, epochs)
        medmm[backbone] = preds, time.perf_counter() - start
        if splits is not None and not run_splits.equals(splits):
            raise RuntimeError(f"seed {seed}: the {backbone} run drew another split than the first run")
        splits, pre = run_splits, run_pre
    rows = rows_of(table, splits, pre)
    start = time.perf_counter()
    scores = problem.baseline(rows)
    out[problem.baseline_name] = problem.metric(rows.test, scores), time.perf_counter() - start
    for backbone, (preds, seconds) in medmm.items():
        out[f"medmm {backbone}"] = problem.metric(rows.test, medmm_scores(preds, rows, problem.score_column)), seconds
    return out


def warm_up() -> None:
    """Pay one-time lazy imports (the engine, torch's optimizer machinery, matplotlib for the
    report) before any clock starts, so they do not land on the first model timed."""
    for module in ("medmm.engine", "medmm.report", "matplotlib.figure"):
        importlib.import_module(module)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=None,
                        help="random train/test splits, seeds 0..n-1 (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 splits, 20 epochs")
    args = parser.parse_args()
    n_splits = args.splits or (2 if args.quick else 5)
    epochs = 20 if args.quick else None
    warnings.filterwarnings("ignore", category=UserWarning)  # unseen categories in small splits
    torch.set_num_threads(1)  # tiny models: extra threads only spin, and stall a busy machine
    warm_up()

    print(f"{n_splits} splits; mean +- sd of the test metric; mean wall time of one fit\n")
    print(f"{'problem':<24} {'model':<28} {'mean':>7} {'sd':>7} {'time':>8}")
    for name, problem in PROBLEMS.items():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="medmm-bench-") as tmp:
            table = problem.load()
            table.insert(0, ID, np.arange(len(table)))
            data = Path(tmp) / "table.csv"
            table.to_csv(data, index=False)
            table = read_table(data)  # the rows exactly as the task reads them
            results = [run_split(problem, data, table, Path(tmp), seed, epochs) for seed in range(n_splits)]
        for model in results[0]:
            values = np.array([r[model][0] for r in results])
            seconds = np.mean([r[model][1] for r in results])
            print(f"{name:<24} {model:<28} {values.mean():7.4f} {values.std():7.4f} {seconds:7.2f}s")
        print(f"{'':<24} ({time.perf_counter() - start:.1f} s for all models and splits)\n")


if __name__ == "__main__":
    main()
