"""medmm tabular models next to scikit-learn and lifelines, on the same splits and features.

    python bench/tabular_vs_sklearn.py [--splits 5] [--quick]

Three problems, each on ``--splits`` random 75/25 train/test splits (seeds 0..splits-1):

- regression: ``sklearn.datasets.load_diabetes``, R^2, vs ``Ridge``
- binary:     ``sklearn.datasets.load_breast_cancer``, AUROC, vs ``LogisticRegression``
- survival:   ``lifelines.datasets.load_gbsg2`` (categorical columns), C-index, vs ``CoxPHFitter``

Every model sees the same features: medmm's preprocessor fitted on the training rows.
Prints mean +- sd over splits; no asserts (a benchmark, not a test).

``train_tabular`` is a plain torch loop standing in for medmm's training engine: swap its
body for the engine call (same inputs: model, loss, train/validation arrays, early stopping
on the validation loss) once the engine lands; nothing else here needs to change.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medmm.data.tabular import fit_preprocessor, infer_column_types, prepare_target
from medmm.losses import cox_ph_loss
from medmm.models.tabular import TabularLinear, TabularMLP

# --------------------------------------------------------------------------- training


def loss_fn(problem: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(output [B, 1], y)``; survival ``y`` is ``[B, 2]`` = (time, event)."""
    if problem == "regression":
        return lambda out, y: F.mse_loss(out[:, 0], y)
    if problem == "binary":
        return lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y)
    if problem == "survival":
        return lambda out, y: cox_ph_loss(out[:, 0], y[:, 0], y[:, 1])
    raise ValueError(problem)


def train_tabular(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    problem: str,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    patience: int = 20,
    seed: int = 0,
) -> nn.Module:
    """Fit ``model`` with AdamW; full batch when ``batch_size`` is None.

    With ``val``, keeps the weights of the epoch with the lowest validation loss and stops
    after ``patience`` epochs without improvement. Regression targets should be standardised
    by the caller. TODO(engine): replace this body with medmm's engine.
    """
    torch.manual_seed(seed)
    loss_of = loss_fn(problem)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    if val is not None:
        xv, yv = torch.from_numpy(val[0]), torch.from_numpy(val[1].astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(xt)
    bs = n if batch_size is None else batch_size
    best, best_state, waited = float("inf"), None, 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            if len(idx) < 2:  # BatchNorm and Cox need more than one row
                continue
            opt.zero_grad()
            loss_of(model(xt[idx]), yt[idx]).backward()
            opt.step()
        if val is None:
            continue
        model.eval()
        with torch.no_grad():
            val_loss = loss_of(model(xv), yv).item()
        if val_loss < best - 1e-6:
            best, best_state, waited = val_loss, copy.deepcopy(model.state_dict()), 0
        elif (waited := waited + 1) >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x))[:, 0].numpy()


# --------------------------------------------------------------------------- problems


@dataclass
class Split:
    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    n_features: int
    categorical: list[str]
    feature_names: list[str]


def make_split(df: pd.DataFrame, features: list[str], seed: int) -> Split:
    """75/25 train/test; 20% of train held out for early stopping. Preprocessor fit on train."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=0.25, random_state=seed)
    fit, val = train_test_split(train, test_size=0.2, random_state=seed)
    pre = fit_preprocessor(train, infer_column_types(train, features))
    return Split(
        pre.transform(fit), pre.transform(val), pre.transform(test), fit, val, test,
        pre.n_features, pre.categorical, pre.feature_names,
    )


MEDMM_MODELS = {
    "medmm linear": lambda d: TabularLinear(d, 1),
    "medmm mlp": lambda d: TabularMLP(d, 1, hidden=128, blocks=2, dropout=0.1),
    "medmm mlp batchnorm d0.3": lambda d: TabularMLP(d, 1, hidden=128, blocks=2, dropout=0.3, norm="batch"),
    "medmm mlp layernorm d0.3": lambda d: TabularMLP(d, 1, hidden=128, blocks=2, dropout=0.3, norm="layer"),
}
# linear: full batch, larger lr; mlp: minibatches
TRAIN_ARGS = {
    "medmm linear": dict(epochs=2000, lr=1e-2, batch_size=None, patience=200),
    "medmm mlp": dict(epochs=300, lr=1e-3, weight_decay=1e-2, batch_size=64, patience=30),
    "medmm mlp batchnorm d0.3": dict(epochs=300, lr=3e-4, weight_decay=1e-2, batch_size=64, patience=30),
    "medmm mlp layernorm d0.3": dict(epochs=300, lr=3e-4, weight_decay=1e-2, batch_size=64, patience=30),
}


def run_regression(seed: int, scale: float) -> dict[str, float]:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    df = load_diabetes(as_frame=True).frame
    s = make_split(df, [c for c in df.columns if c != "target"], seed)
    ys = {k: prepare_target(getattr(s, k), "regression", "target").y for k in ("train", "val", "test")}
    mu, sd = ys["train"].mean(), ys["train"].std()
    scores = {"sklearn Ridge": r2_score(ys["test"], Ridge(alpha=1.0).fit(s.x_train, ys["train"]).predict(s.x_test))}
    for name, build in MEDMM_MODELS.items():
        args = _scaled(TRAIN_ARGS[name], scale)
        model = train_tabular(
            build(s.n_features), s.x_train, (ys["train"] - mu) / sd, "regression",
            val=(s.x_val, (ys["val"] - mu) / sd), seed=seed, **args,
        )
        scores[name] = r2_score(ys["test"], predict(model, s.x_test) * sd + mu)
    return scores


def run_binary(seed: int, scale: float) -> dict[str, float]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    df = load_breast_cancer(as_frame=True).frame
    s = make_split(df, [c for c in df.columns if c != "target"], seed)
    ys = {k: prepare_target(getattr(s, k), "binary", "target").y for k in ("train", "val", "test")}
    clf = LogisticRegression(max_iter=5000).fit(s.x_train, ys["train"])
    scores = {"sklearn LogisticRegression": roc_auc_score(ys["test"], clf.decision_function(s.x_test))}
    for name, build in MEDMM_MODELS.items():
        args = _scaled(TRAIN_ARGS[name], scale)
        model = train_tabular(
            build(s.n_features), s.x_train, ys["train"], "binary", val=(s.x_val, ys["val"]), seed=seed, **args
        )
        scores[name] = roc_auc_score(ys["test"], predict(model, s.x_test))
    return scores


def run_survival(seed: int, scale: float) -> dict[str, float]:
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_gbsg2
    from lifelines.utils import concordance_index

    df = load_gbsg2()
    s = make_split(df, [c for c in df.columns if c not in ("time", "cens")], seed)
    ts = {k: prepare_target(getattr(s, k), "survival", time="time", event="cens") for k in ("train", "val", "test")}
    ys = {k: np.column_stack([t.time, t.event]) for k, t in ts.items()}
    test = ts["test"]

    # lifelines on the same features, minus one one-hot column per categorical (a full one-hot
    # set sums to a constant, which a Cox model cannot identify)
    drop = [next(n for n in s.feature_names if n.startswith(f"{c}=")) for c in s.categorical]
    keep = [i for i, n in enumerate(s.feature_names) if n not in drop]
    frame = pd.DataFrame(s.x_train[:, keep], columns=[s.feature_names[i] for i in keep])
    frame["T"], frame["E"] = ts["train"].time, ts["train"].event
    cph = CoxPHFitter().fit(frame, "T", "E")
    risk = cph.predict_log_partial_hazard(pd.DataFrame(s.x_test[:, keep], columns=frame.columns[:-2]))
    # concordance_index expects higher = longer survival: pass minus the risk
    scores = {"lifelines CoxPHFitter": concordance_index(test.time, -np.asarray(risk), test.event)}
    for name, build in MEDMM_MODELS.items():
        args = _scaled(TRAIN_ARGS[name], scale)
        model = train_tabular(
            build(s.n_features), s.x_train, ys["train"], "survival", val=(s.x_val, ys["val"]), seed=seed, **args
        )
        scores[name] = concordance_index(test.time, -predict(model, s.x_test), test.event)
    return scores


def _scaled(args: dict, scale: float) -> dict:
    return {**args, "epochs": max(1, int(args["epochs"] * scale))}


PROBLEMS = {
    "diabetes (R^2)": run_regression,
    "breast_cancer (AUROC)": run_binary,
    "gbsg2 (C-index)": run_survival,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5, help="random train/test splits (seeds 0..n-1)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the epochs (smoke run)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    warnings.filterwarnings("ignore", category=UserWarning)  # unseen categories in small splits

    print(f"{args.splits} splits; mean +- sd of the test metric\n")
    print(f"{'problem':<24} {'model':<28} {'mean':>7} {'sd':>7}")
    for problem, run in PROBLEMS.items():
        start = time.perf_counter()
        results = [run(seed, scale) for seed in range(args.splits)]
        for model in results[0]:
            values = np.array([r[model] for r in results])
            print(f"{problem:<24} {model:<28} {values.mean():7.4f} {values.std():7.4f}")
        print(f"{'':<24} ({time.perf_counter() - start:.1f} s for all models and splits)\n")


if __name__ == "__main__":
    main()
