"""The classic baseline fitted beside every run, on the same split and units (``engine.baseline``).

The field's standard model for each modality, with scikit-learn (seconds on a CPU):

* text: TF-IDF over word 1-2-grams + logistic regression (one per label for multi-label);
* tabular: logistic / ridge regression on the task's own preprocessing; a penalised linear Cox
  model (lifelines) for survival;
* image: logistic regression on pixels area-averaged down to 32 x 32;
* several modalities (fusion): each one alone; the best on val is the baseline.

The regularisation strength is picked on val by the task's headline metric. The fitted model is
plain numbers: ``baseline/baseline.json`` (kind, vocabulary, hyper-parameters) and
``baseline/baseline.safetensors`` (coefficients), never a pickle; ``medmm predict --baseline``
reloads it. :func:`run_baseline` compares it with the trained model on the evaluated split.
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import DataError
from medmm.task import BaselineInputs

__all__ = ["Baseline", "Comparison", "LazyRows", "Prefit", "fit_baseline", "fit_sample", "load_baseline", "prefit_baseline",
           "run_baseline", "summary_lines"]

log = logging.getLogger("medmm.classic")

DIRNAME = "baseline"
_JSON, _ARRAYS = "baseline.json", "baseline.safetensors"
_FORMAT = "medmm.classic-baseline"
IMAGE_SIDE = 32
TEXT_MAX_FEATURES = 50_000
GRIDS = {"text": (1.0, 10.0, 100.0), "tabular": (0.01, 0.1, 1.0, 10.0), "image": (0.001, 0.01, 0.1, 1.0)}
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)
COX_PENALIZERS = (0.01, 0.1, 1.0)
WARNING = "the baseline is as good; consider it"
FIT_ROWS = 200_000  # tabular / image baselines are fitted on a stratified sample of this many training rows above it
FIT_SEED = 0
PREDICT_BLOCK = 65_536  # rows scored at a time above it (a multiple of BLAS kernels' row blocking)
# The image baseline's float64 design matrix holds at most this many cells (rows x features): 4,096 images of 32 x 32
# (32 MB); above it a stratified sample of the training images (measured learning curve: docs/scale.md).
IMAGE_FIT_CELLS = 4096 * 1024
IMAGE_BLOCK = 1024  # image rows read and scored at a time (8 MB of float64 at 1,024 features)


# --------------------------------------------------------------------------- features


def _downsample(x: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, C * h * w]`` by area averaging to at most ``side`` pixels a side."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:  # already flat (small_pixels)
        return x
    if x.ndim == 3:
        x = x[:, None]
    n, c, h, w = x.shape
    fh, fw = max(1, h // side), max(1, w // side)
    hh, ww = h // fh, w // fw
    x = x[:, :, : hh * fh, : ww * fw].reshape(n, c, hh, fh, ww, fw).mean(axis=(3, 5))
    return x.reshape(n, -1)


def small_pixels(images: Any, side: int = IMAGE_SIDE, count: int | None = None) -> np.ndarray:
    """``[N, C * h * w]`` float32 from an iterable of ``[C, H, W]`` images, each area-averaged to at
    most ``side`` pixels a side as it is read (what a task hands :class:`BaselineInputs`).

    The rows go straight into one array (``count``: the number of images, when known; else it grows in
    place, :class:`~medmm.pooling.Growing`), never a list of per-image arrays stacked at the end (twice the
    matrix at its peak)."""
    from medmm.pooling import Growing

    out = Growing(capacity=count or 0)
    for im in images:
        row = _downsample(np.asarray(im, dtype=np.float32)[None], side)
        if out.buf is not None and row.shape[1:] != out.buf.shape[1:]:
            raise DataError(f"images of several sizes for the baseline: {sorted({row.shape[1:], out.buf.shape[1:]})}")
        out.add(row)
    rows = out.array()
    return np.zeros((0, 1), np.float32) if rows is None else rows


class LazyRows:
    """Rows of a baseline input read only when asked (a task's ``BaselineInputs.image``, e.g. a pixel cache's
    images area-averaged to 32 px): ``len(rows)``, and ``rows[i]``, ``rows[a:b]`` or ``rows[index array]`` read
    just those rows.

    ``read(idx)`` returns the float32 rows ``[len(idx), F]`` of the row indices ``idx`` (increasing when the
    baseline asks); ``width`` is ``F`` (read from the first row when not given). :class:`Baseline` reads an image
    source :data:`IMAGE_BLOCK` rows at a time and fits on at most :data:`IMAGE_FIT_CELLS` cells, so no split is
    held whole; ``np.asarray(rows)`` reads every row (what a materialised array would hold)."""

    def __init__(self, n: int, read: Callable[[np.ndarray], np.ndarray], width: int | None = None,
                 index: np.ndarray | None = None) -> None:
        self._n, self._read, self._width, self._index = int(n), read, width, index

    def __len__(self) -> int:
        return self._n if self._index is None else len(self._index)

    @property
    def width(self) -> int:
        """Features per row."""
        if self._width is None:
            self._width = int(self[0:1].shape[1]) if len(self) else 0
        return self._width

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64).reshape(-1)
        if self._index is not None:
            idx = self._index[idx]
        out = np.asarray(self._read(idx), dtype=np.float32)
        if out.ndim != 2 or len(out) != len(idx):
            raise DataError(f"a row source gave {out.shape} for {len(idx)} rows")
        return out

    def take(self, idx: np.ndarray) -> LazyRows:
        """The rows ``idx`` of this source, still unread."""
        base = np.arange(self._n) if self._index is None else self._index
        return LazyRows(self._n, self._read, self._width, base[np.asarray(idx, dtype=np.int64)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _block(raw: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` (increasing) of a baseline input: a view for a run of rows of an array."""
    if len(idx) and not isinstance(raw, LazyRows) and len(idx) == idx[-1] - idx[0] + 1:
        return raw[idx[0]:idx[-1] + 1]
    return raw[idx] if isinstance(raw, LazyRows) else [raw[i] for i in idx] if isinstance(raw, list) else np.asarray(raw)[idx]


def _image_matrix(raw: Any) -> np.ndarray:
    """Every row of image input ``raw``, area-averaged, as one float64 matrix filled :data:`IMAGE_BLOCK` rows at a
    time (the values of ``_downsample(raw).astype(np.float64)``, never a float32 copy of the whole)."""
    n = len(raw)
    x: np.ndarray | None = None
    for start in range(0, n, IMAGE_BLOCK):
        block = _downsample(_block(raw, np.arange(start, min(n, start + IMAGE_BLOCK))))
        if x is None:
            x = np.empty((n, block.shape[1]), np.float64)
        x[start:start + len(block)] = block
    return np.zeros((0, 1)) if x is None else x


def _image_width(raw: Any) -> int:
    """Features per row of image input ``raw`` (a lazy source's without reading a row when it knows)."""
    if isinstance(raw, LazyRows):
        return raw.width
    return int(_downsample(_block(raw, np.arange(min(1, len(raw))))).shape[1]) if len(raw) else 1


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Baseline:
    """A fitted classic model: plain numbers, saved as JSON + safetensors."""

    modality: str  # text | tabular | image
    problem: str
    label_names: list[str] | None
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    vocabulary: list[str] | None = None

    # ------------------------------------------------------------------ features
    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=self.vocabulary)
        vec.idf_ = self.arrays["idf"]
        return vec

    def features(self, inputs: BaselineInputs) -> Any:
        """The design matrix of ``inputs`` for this model's modality."""
        if self.modality == "text":
            if inputs.text is None:
                raise DataError("the baseline reads text, and these inputs have none")
            return self._vectorizer().transform(inputs.text)
        return self._dense(self._raw(inputs))

    def _raw(self, inputs: BaselineInputs) -> Any:
        raw = inputs.tabular if self.modality == "tabular" else inputs.image
        if raw is None:
            raise DataError(f"the baseline reads {self.modality} inputs, and these have none")
        return raw

    def _dense(self, raw: Any) -> np.ndarray:
        """Tabular / image rows as the float64 design matrix, cleaned and standardised in place (the values
        of the out-of-place formula; each row's values depend on that row alone)."""
        x = np.array(raw, dtype=np.float64) if self.modality == "tabular" else _downsample(raw).astype(np.float64)
        np.nan_to_num(x, copy=False)
        if "mean" in self.arrays:
            x -= self.arrays["mean"]
            x /= self.arrays["scale"]
        return x

    # ------------------------------------------------------------------ prediction
    def predict(self, inputs: BaselineInputs) -> np.ndarray:
        """Scores per example in :mod:`medmm.metrics` layout; rows lacking the modality get the prior.

        Tabular inputs above :data:`PREDICT_BLOCK` rows, image inputs above :data:`IMAGE_BLOCK` rows and every
        :class:`LazyRows` source are scored a block of rows at a time (never a float64 copy of the whole input);
        the rest in one pass."""
        present = np.asarray(inputs.present.get(self.modality, np.ones(len(inputs.units), bool)), bool)
        prior, n = np.asarray(self.arrays["prior"], np.float64).reshape(-1), len(inputs.units)
        out = np.full(n, prior[0]) if self.problem in ("binary", "regression", "survival") else np.tile(prior, (n, 1))
        rows = np.flatnonzero(present)
        step = IMAGE_BLOCK if self.modality == "image" else PREDICT_BLOCK
        raw = self._raw(inputs) if self.modality != "text" and len(rows) else None
        if raw is not None and (len(rows) > step or isinstance(raw, LazyRows)):
            for start in range(0, len(rows), step):
                idx = rows[start:start + step]
                out[idx] = self.decision(self._dense(_block(raw, idx)))
        elif len(rows):
            sub = inputs if present.all() else _take(inputs, rows)
            out[present] = self.decision(self.features(sub))
        return out.astype(np.float32)

    def decision(self, x: Any) -> np.ndarray:
        """Scores from a design matrix."""
        z = x @ self.arrays["coef"].T + self.arrays["intercept"]
        z = np.asarray(z)
        if self.problem in ("binary", "regression", "survival"):
            z = z.reshape(-1)
            return _sigmoid(z) if self.problem == "binary" else z
        return _softmax(z) if self.problem == "multiclass" else _sigmoid(z)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> Path:
        """Write ``baseline.json`` + ``baseline.safetensors`` (atomically) into ``directory``."""
        from safetensors.numpy import save

        from medmm.io import write_bytes_atomic, write_json_atomic

        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / _ARRAYS, save({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}))
        write_json_atomic(directory / _JSON, {
            "format": _FORMAT, "version": 1, "modality": self.modality, "problem": self.problem,
            "label_names": self.label_names, "description": self.description, "params": self.params,
            "vocabulary": self.vocabulary})
        return directory


def load_baseline(directory: Path) -> Baseline:
    """Read a baseline saved by :meth:`Baseline.save` (JSON + safetensors; nothing unpickled)."""
    from safetensors.numpy import load_file

    from medmm.io import read_json

    directory = Path(directory)
    if not (directory / _JSON).exists():
        raise DataError(f"{directory.parent} has no classic baseline (the run used engine.baseline=none, "
                        "or predates it)")
    meta = read_json(directory / _JSON, format=_FORMAT)
    arrays = {k: np.asarray(v) for k, v in load_file(str(directory / _ARRAYS)).items()}
    return Baseline(meta["modality"], meta["problem"], meta["label_names"], meta["description"],
                    dict(meta["params"]), arrays, meta.get("vocabulary"))


def _column_std(x: np.ndarray, width: int = 8) -> np.ndarray:
    """``x.std(axis=0)`` a few columns at a time: the same values (each column's sums run over the rows in
    the same order), with a temporary of ``width`` columns instead of one the size of ``x``."""
    k = x.shape[1]
    starts = [j for j in range(0, k, width) if k - j > 1 or j == 0]  # never a block of one column of several:
    out = np.empty(k, dtype=np.float64)  # numpy sums a lone column pairwise, a block of columns row by row
    for j, end in zip(starts, [*starts[1:], k]):
        out[j:end] = x[:, j:end].std(axis=0)
    return out


def _take(inputs: BaselineInputs, idx: np.ndarray) -> BaselineInputs:
    def sub(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, LazyRows):
            return v.take(idx)
        return [v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx]

    return BaselineInputs([inputs.units[i] for i in idx], sub(inputs.targets), sub(inputs.text),
                          sub(inputs.tabular), sub(inputs.image),
                          {k: np.asarray(m)[idx] for k, m in inputs.present.items()})


# --------------------------------------------------------------------------- fitting


def fit_sample(problem: str, y: np.ndarray, cap: int, seed: int = FIT_SEED) -> np.ndarray | None:
    """Sorted row indices of a seeded, label-stratified sample of ``cap`` of the rows of targets ``y`` (``None``
    when there are no more than ``cap``): each stratum (class; label set for multi-label; event for survival;
    target decile for regression) gives its share of ``cap`` (largest remainders), the same rows for the same
    targets at every call."""
    n = len(y)
    if n <= cap:
        return None
    y = np.asarray(y)
    if problem == "regression":
        cuts = np.quantile(y.astype(np.float64).reshape(-1), np.linspace(0, 1, 11)[1:-1])
        strata = np.searchsorted(cuts, y.reshape(-1), side="right")
    elif problem == "survival":
        strata = y[:, 1].astype(np.int64)
    elif y.ndim > 1:
        strata = np.unique(y.astype(np.int64), axis=0, return_inverse=True)[1].reshape(-1)
    else:
        strata = np.unique(y, return_inverse=True)[1].reshape(-1)
    counts = np.bincount(strata)
    share = counts * (cap / n)
    take = np.floor(share).astype(np.int64)
    for s in np.argsort(-(share - take), kind="stable")[: cap - int(take.sum())]:
        take[s] += 1
    rng = np.random.default_rng(seed)
    order = np.argsort(strata, kind="stable")  # rows grouped by stratum, in row order within each
    picked: list[np.ndarray] = []
    start = 0
    for c, t in zip(counts, take):
        rows = order[start:start + c]
        start += c
        picked.append(rows[rng.permutation(c)[:t]])
    return np.sort(np.concatenate(picked))


def _fit_linear(problem: str, x: Any, y: np.ndarray, c: float, k: int) -> dict[str, np.ndarray]:
    """``coef [K', F]`` and ``intercept [K']`` of logistic / ridge / Cox on ``x``."""
    from sklearn.linear_model import LogisticRegression, Ridge

    if problem == "regression":
        m = Ridge(alpha=c).fit(x, y)
        return {"coef": np.asarray(m.coef_, float).reshape(1, -1), "intercept": np.asarray([m.intercept_], float)}
    if problem == "survival":
        return _fit_cox(x, y, c)
    if problem == "multilabel":
        coefs, inter = [], []
        for j in range(y.shape[1]):
            col = y[:, j].astype(int)
            if col.min() == col.max():  # one class in train: a constant score
                p = min(max(col.mean(), 1e-4), 1 - 1e-4)
                coefs.append(np.zeros(x.shape[1]))
                inter.append(math.log(p / (1 - p)))
                continue
            m = LogisticRegression(C=c, max_iter=2000).fit(x, col)
            coefs.append(m.coef_[0])
            inter.append(float(m.intercept_[0]))
        return {"coef": np.stack(coefs), "intercept": np.asarray(inter)}
    y = y.astype(int)
    m = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    coef, inter = np.asarray(m.coef_, float), np.asarray(m.intercept_, float)
    if problem == "multiclass" and len(m.classes_) != k:  # a class absent from train: never predicted
        full_c, full_i = np.zeros((k, coef.shape[1])), np.full(k, -30.0)
        if len(m.classes_) == 2:
            coef, inter = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-inter / 2, inter / 2])
        full_c[m.classes_], full_i[m.classes_] = coef, inter
        coef, inter = full_c, full_i
    return {"coef": coef, "intercept": inter}


def _fit_cox(x: np.ndarray, y: np.ndarray, penalizer: float) -> dict[str, np.ndarray]:
    try:
        import pandas as pd
        from lifelines import CoxPHFitter
    except ImportError:
        raise DataError("the survival baseline needs lifelines: pip install lifelines") from None
    keep = x.std(axis=0) > 0
    df = pd.DataFrame(x[:, keep], columns=[f"x{i}" for i in range(int(keep.sum()))])
    df["_t"], df["_e"] = y[:, 0], y[:, 1].astype(int)
    m = CoxPHFitter(penalizer=penalizer).fit(df, duration_col="_t", event_col="_e")
    coef = np.zeros(x.shape[1])
    coef[keep] = m.params_.to_numpy()
    return {"coef": coef.reshape(1, -1), "intercept": np.zeros(1)}


def _prior(problem: str, y: np.ndarray, k: int) -> np.ndarray:
    """The score for a row without the baseline's modality: train prevalence / mean / 0 risk."""
    if problem == "binary":
        return np.asarray(float(np.mean(y)))
    if problem == "multiclass":
        return np.bincount(y.astype(int), minlength=k) / max(1, len(y))
    if problem == "multilabel":
        return y.mean(axis=0)
    if problem == "regression":
        return np.asarray(float(np.mean(y)))
    return np.asarray(0.0)


def _headline(problem: str, units: list[str], scores: np.ndarray, targets: np.ndarray) -> float:
    from medmm.metrics import headline

    ev = _pooled(units, scores, targets)
    name, mode = headline(problem)
    value = _metrics(problem, ev).get(name, float("nan"))
    if not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


def _metrics(problem: str, ev: Any) -> dict[str, float]:
    from medmm.metrics import compute_metrics

    args, kw = _metric_inputs(problem, ev)
    return compute_metrics(problem, *args, **kw)


def _metric_inputs(problem: str, ev: Any) -> tuple[tuple[Any, Any], dict[str, Any]]:
    t = ev.targets
    if problem == "survival":
        return (None, ev.scores), {"time": t[:, 0], "event": t[:, 1].astype(bool)}
    if problem in ("binary", "multiclass"):
        t = t.astype(int)
    return (t, ev.scores), {}


@dataclass
class Predictions:
    """Per-unit scores, shaped like :class:`medmm.engine.trainer.EvalOutput` (no loss)."""

    units: list[str]
    scores: np.ndarray
    targets: np.ndarray | None
    loss: float = float("nan")


def _pooled(units: list[str], scores: np.ndarray, targets: np.ndarray | None) -> Any:
    """Per-unit predictions (mean over a unit's examples), as the engine pools them."""
    from medmm.pooling import pool_by_unit

    u, s, t = pool_by_unit(list(units), np.asarray(scores), targets)
    return Predictions(u, s, t)


def _grid_search(modality: str, problem: str, label_names: list[str] | None, base: Baseline, x: Any,
                 y: np.ndarray, k: int, grid: Any, val: BaselineInputs | None,
                 usable_val: bool) -> tuple[float, float, dict[str, np.ndarray]] | None:
    """``(val headline, strength, fitted arrays)`` of the best strength of ``grid`` (the middle one without val)."""
    best: tuple[float, float, dict[str, np.ndarray]] | None = None
    for c in grid if usable_val else grid[len(grid) // 2:][:1]:
        try:
            fitted = _fit_linear(problem, x, y, c, k)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - one grid point that fails to converge is skipped
            log.info("baseline %s, strength %s: %s", modality, c, exc)
            continue
        score = 0.0
        if usable_val:
            trial = Baseline(modality, problem, label_names, "", arrays={**base.arrays, **fitted},
                             vocabulary=base.vocabulary)
            score = _headline(problem, val.units, trial.predict(val), np.asarray(val.targets))
        if best is None or score > best[0]:
            best = (score, c, fitted)
    return best


def _fit_modality(modality: str, problem: str, label_names: list[str] | None, train: BaselineInputs,
                  val: BaselineInputs | None) -> Baseline:
    """One modality's classic model; the regularisation picked on val by the headline metric."""
    k = len(label_names or []) if problem in ("multiclass", "multilabel") else 1
    y_all = np.asarray(train.targets)
    prior = _prior(problem, y_all, k)
    present = np.asarray(train.present.get(modality, np.ones(len(train.units), bool)), bool)
    tr = train if present.all() else _take(train, np.flatnonzero(present))  # no copy when every row has it
    y = np.asarray(tr.targets)
    if len(y) < 2:
        raise DataError(f"too few training rows with {modality} for a baseline")
    base = Baseline(modality, problem, label_names, "", arrays={"prior": np.asarray(prior, float)})
    cap = FIT_ROWS if modality != "image" else min(FIT_ROWS, max(2, IMAGE_FIT_CELLS // max(1, _image_width(tr.image))))
    n_rows, sample = len(y), None if modality == "text" else fit_sample(problem, y, cap)
    if sample is not None:  # the float64 design matrix of a sample, not of every training row (a lazy source
        tr, y = _take(tr, sample), y[sample]  # reads only the sample's rows, below)
    if modality == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(y) >= 50 else 1,
                              max_features=TEXT_MAX_FEATURES)
        try:
            x = vec.fit_transform(tr.text)
        except ValueError:  # empty vocabulary
            raise DataError("the training texts hold no word for TF-IDF") from None
        base.vocabulary = vec.get_feature_names_out().tolist()
        base.arrays["idf"] = vec.idf_.astype(np.float64)
    else:
        # one float64 matrix, standardised in place (the same values as out-of-place arithmetic)
        x = np.array(tr.tabular, dtype=np.float64) if modality == "tabular" else _image_matrix(tr.image)
        np.nan_to_num(x, copy=False)
        mean, scale = x.mean(axis=0), _column_std(x)
        scale[scale == 0] = 1.0
        base.arrays["mean"], base.arrays["scale"] = mean, scale
        x -= mean
        x /= scale
    grid = (RIDGE_ALPHAS if problem == "regression" else COX_PENALIZERS if problem == "survival"
            else GRIDS[modality])
    usable_val = val is not None and len(val.units) > 0 and val.targets is not None
    from threadpoolctl import threadpool_limits

    # TF-IDF fits: L-BFGS-B calls BLAS on short vectors hundreds of times; threaded BLAS made each call
    # cost more than the sparse gradient on a busy CPU (13.5 of 14.8 s vs 0.2 s with one thread, docs/scale.md)
    with threadpool_limits(1 if modality == "text" else None, user_api="blas"):
        best = _grid_search(modality, problem, label_names, base, x, y, k, grid, val, usable_val)
    if best is None:
        raise DataError(f"the {modality} baseline could not be fitted")
    base.arrays.update(best[2])
    what = {"text": "TF-IDF 1-2-grams", "tabular": "features", "image": f"{IMAGE_SIDE}px pixels"}[modality]
    model = {"regression": f"ridge (alpha={best[1]:g})", "survival": f"Cox PH (penalizer={best[1]:g})"}.get(
        problem, f"logistic regression (C={best[1]:g})")
    base.params = {"strength": best[1], "val_headline": best[0]}
    base.description = f"{what} + {model}" + (
        f", fitted on a stratified sample of {len(y):,} of {n_rows:,} training "
        f"{'images' if modality == 'image' else 'rows'}" if sample is not None else "")
    return base


def fit_baseline(problem: str, label_names: list[str] | None, train: BaselineInputs,
                 val: BaselineInputs | None) -> Baseline:
    """Fit the classic model on ``train`` (choices on ``val``); with several modalities, the best."""
    modalities = [m for m in ("text", "tabular", "image") if getattr(train, m) is not None]
    if not modalities:
        raise DataError("the task gave no text, tabular or image input for the baseline")
    fitted: list[Baseline] = []
    for m in modalities:
        try:
            fitted.append(_fit_modality(m, problem, label_names, train, val))
        except DataError as exc:
            if len(modalities) == 1:
                raise
            log.info("no %s baseline: %s", m, exc)
    if not fitted:
        raise DataError("no modality gave a baseline")
    best = max(fitted, key=lambda b: b.params["val_headline"])
    if len(modalities) > 1:
        best.description = f"{best.modality} only: {best.description} (best single modality on val)"
    return best


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """The trained model vs the classic baseline on one split."""

    description: str
    split: str
    headline: str
    mode: str
    model: dict[str, float]
    baseline: dict[str, float]
    model_ci: dict[str, tuple[float, float]]
    baseline_ci: dict[str, tuple[float, float]]
    diff_ci: tuple[float, float] | None  # model - baseline, paired bootstrap over the same units

    @property
    def model_value(self) -> float:
        return self.model.get(self.headline, float("nan"))

    @property
    def baseline_value(self) -> float:
        return self.baseline.get(self.headline, float("nan"))

    @property
    def model_better(self) -> bool:
        m, b = self.model_value, self.baseline_value
        if not math.isfinite(b):
            return True
        if not math.isfinite(m):
            return False
        return m > b if self.mode == "max" else m < b

    def warning(self) -> str | None:
        if self.model_better:
            return None
        return (f"the model is not better than the classic baseline on {self.split} {self.headline} "
                f"({self.model_value:.4f} vs {self.baseline_value:.4f}): {WARNING} "
                f"(baseline_predictions.csv; medmm predict RUN --baseline)")

    def to_json(self) -> dict[str, Any]:
        return {"description": self.description, "split": self.split, "headline": self.headline,
                "model": self.model_value, "baseline": self.baseline_value, "metrics": self.baseline,
                "ci": self.baseline_ci, "diff_ci": self.diff_ci, "model_better": self.model_better,
                "warning": self.warning()}


def paired_diff_ci(problem: str, metric: str, model_ev: Any, base_ev: Any, n_boot: int, seed: int) -> tuple[float, float] | None:
    """Paired bootstrap of ``metric(model) - metric(baseline)`` over the same units
    (:func:`medmm.metrics.paired_difference_ci`); ``None`` when the units differ."""
    from medmm.metrics import paired_difference_ci

    if list(model_ev.units) != list(base_ev.units) or not n_boot:
        return None
    (yt, ys), kw = _metric_inputs(problem, model_ev)
    (_, bs), _ = _metric_inputs(problem, base_ev)
    return paired_difference_ci(problem, metric, yt, ys, bs, n_boot=n_boot, seed=seed, **kw)


def _align(base_ev: Any, units: list[str]) -> Any:
    """The baseline's per-unit predictions in the model's unit order (same units expected)."""
    pos = {u: i for i, u in enumerate(base_ev.units)}
    if set(pos) != set(units):
        return base_ev
    idx = np.asarray([pos[u] for u in units])
    return Predictions(list(units), base_ev.scores[idx], None if base_ev.targets is None else base_ev.targets[idx])


@dataclass
class Prefit:
    """The classic baseline fitted before training (:func:`prefit_baseline`): its fit is then spent, not
    estimated by the ETA, and the finish only predicts and compares. ``base`` ``None``: the task gives no
    inputs for one; ``error``: why the fit failed (reported at the finish, as a failure there would be)."""

    base: Baseline | None = None
    test: Any = None  # the evaluated split's BaselineInputs
    error: str | None = None
    seconds: float = 0.0


def prefit_baseline(task: Any, cfg: Any, split_name: str) -> Prefit | None:
    """Fit the run's classic baseline now, before training (the same fit as at the finish: deterministic,
    no global random stream); ``None`` when ``engine.baseline`` is ``none``."""
    if cfg.engine.baseline == "none":
        return None
    started = time.perf_counter()
    out = Prefit()
    try:
        train, val, test = (task.baseline_inputs(s) for s in ("train", "val", split_name))
        if train is not None and test is not None and test.targets is not None:
            out.base = fit_baseline(task.problem, task.label_names, train, val if split_name != "val" else None)
            out.test = test
    except Exception as exc:  # noqa: BLE001 - reported at the finish; the model still trains
        out.error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    out.seconds = time.perf_counter() - started
    return out


def run_baseline(task: Any, split_name: str, model_ev: Any, model_metrics: dict[str, float],
                 model_ci: dict[str, tuple[float, float]], run_dir: Path, *, n_boot: int, seed: int,
                 unit_columns: dict[str, dict[str, str]] | None = None, prefit: Prefit | None = None) -> Comparison | None:
    """Fit (unless ``prefit`` holds the fit), save and evaluate the task's classic baseline; ``None`` when the
    task has none.

    Writes ``baseline/`` (the model) and ``baseline_predictions.csv`` (same layout as
    ``predictions.csv``) into ``run_dir``; the comparison goes into the summary, report and card.
    """
    from medmm.metrics import bootstrap_cis, headline
    from medmm.predictions import write_predictions

    if prefit is not None:
        if prefit.base is None:
            return None
        base, test = prefit.base, prefit.test
    else:
        train, val, test = (task.baseline_inputs(s) for s in ("train", "val", split_name))
        if train is None or test is None or test.targets is None:
            return None
        base = fit_baseline(task.problem, task.label_names, train, val if split_name != "val" else None)
    base.save(run_dir / DIRNAME)
    ev = _align(_pooled(test.units, base.predict(test), np.asarray(test.targets)), list(model_ev.units))
    write_predictions(run_dir / "baseline_predictions.csv", ev, task.problem, task.label_names, unit_columns)
    metrics = _metrics(task.problem, ev)
    name, mode = headline(task.problem)
    ci: dict[str, tuple[float, float]] = {}
    if n_boot:
        args, kw = _metric_inputs(task.problem, ev)
        ci = bootstrap_cis(task.problem, *args, metrics=[name], n_boot=n_boot, seed=seed, **kw)
    diff = paired_diff_ci(task.problem, name, model_ev, ev, n_boot, seed) if model_ev.targets is not None else None
    cmp = Comparison(base.description, split_name, name, mode, dict(model_metrics), metrics, dict(model_ci), ci, diff)
    log.info("classic baseline (%s): %s %s %.4f vs model %.4f", base.description, split_name, name,
             cmp.baseline_value, cmp.model_value)
    if cmp.warning():
        log.warning(cmp.warning())
    return cmp


def predict_baseline(task: Any, run_dir: Path) -> Any:
    """Predictions of a run's saved baseline on the task's last ``build_predict_data``."""
    base = load_baseline(Path(run_dir) / DIRNAME)
    inputs = task.baseline_inputs("predict")
    if inputs is None:
        raise DataError("this task cannot feed its classic baseline")
    targets = None if inputs.targets is None else np.asarray(inputs.targets)
    ev = _pooled(inputs.units, base.predict(inputs), targets)
    return ev, base


# --------------------------------------------------------------------------- presentation


def _ci_text(ci: tuple[float, float] | None) -> str:
    if not ci or not all(math.isfinite(v) for v in ci):
        return ""
    return f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"


def summary_lines(info: dict[str, Any] | None) -> list[str]:
    """Console lines for ``summary["baseline"]`` (from :meth:`Comparison.to_json`)."""
    if not info:
        return []
    if "skipped" in info:
        return [f"  classic baseline: not fitted ({info['skipped']})"]
    diff = info.get("diff_ci")
    ci = info.get("ci", {}).get(info["headline"])
    from medmm.metrics import decimals, format_estimate

    lines = [f"  classic baseline on the same split: {info['description']}",
             f"    {info['headline']:<10} " + format_estimate(info["baseline"], ci, style=" (95% CI {lo}-{hi})")]
    if diff:
        d = decimals(diff)  # rounded to what the paired CI supports, as every figure is
        lines.append(f"    model - baseline {info['model'] - info['baseline']:+.{d}f}  "
                     f"(95% CI {diff[0]:+.{d}f} to {diff[1]:+.{d}f}, paired)")
    if info.get("warning"):
        lines.append(f"  WARNING: {info['warning']}")
    return lines


def _rows(cmp: Comparison) -> list[tuple[str, dict[str, float], dict[str, tuple[float, float]]]]:
    return [("model", cmp.model, cmp.model_ci), (f"classic baseline: {cmp.description}", cmp.baseline, cmp.baseline_ci)]


def report_section(cmp: Comparison) -> tuple[str, str]:
    """``(heading, html)`` for the run's report."""
    keys = list(cmp.baseline)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = ""
    for label, m, ci in _rows(cmp):
        cells = ""
        for k in keys:
            v = m.get(k, float("nan"))
            txt = f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "n/a"
            if k == cmp.headline and ci.get(k) and all(math.isfinite(x) for x in ci[k]):
                txt += f" [{ci[k][0]:.4f}, {ci[k][1]:.4f}]"
            cells += f'<td class="num">{txt}</td>'
        body += f"<tr><td>{html.escape(label)}</td>{cells}</tr>"
    diff = (f"<p>Model - baseline on {html.escape(cmp.headline)}: {cmp.model_value - cmp.baseline_value:+.4f} "
            f"(95% CI {cmp.diff_ci[0]:+.4f} to {cmp.diff_ci[1]:+.4f}, paired bootstrap over the same units).</p>"
            if cmp.diff_ci else "")
    verdict = (f'<p style="color:#9a6700;font-weight:600">Warning: {html.escape(cmp.warning() or "")}</p>'
               if cmp.warning() else "<p>The model beats the classic baseline on the headline metric.</p>")
    note = (f"<p>The classic baseline is fitted on the same train split (its regularisation picked on val) and "
            f"evaluated on the same {html.escape(cmp.split)} units; its predictions are in baseline_predictions.csv "
            "and <code>medmm predict RUN --baseline</code> reuses it.</p>")
    return ("Model vs classic baseline",
            f"{verdict}{diff}<table><tr><th>fitted on the same split</th>{head}</tr>{body}</table>{note}")


def model_card_section(cmp: Comparison) -> str:
    """A Markdown section for the model card."""
    h = cmp.headline
    rows = ["| model | " + h + " | 95% CI |", "|---|---:|---:|"]
    for label, m, ci in _rows(cmp):
        v = m.get(h, float("nan"))
        c = ci.get(h)
        ctext = f"{c[0]:.4f} – {c[1]:.4f}" if c and all(math.isfinite(x) for x in c) else ""
        rows.append(f"| {label.replace('|', '/')} | {v:.4f} | {ctext} |")
    text = f"## Comparison with the classic baseline ({cmp.split} split)\n\n" + "\n".join(rows)
    if cmp.diff_ci:
        text += (f"\n\nModel - baseline: {cmp.model_value - cmp.baseline_value:+.4f} "
                 f"(95% CI {cmp.diff_ci[0]:+.4f} to {cmp.diff_ci[1]:+.4f}, paired bootstrap).")
    if cmp.warning():
        text += f"\n\n**Warning:** {cmp.warning()}"
    return text


@dataclass
class RunBaseline:
    """What a run shows of its baseline: ``summary["baseline"]``, report sections, card sections."""

    summary: dict[str, Any] = field(default_factory=dict)
    report: list[tuple[str, str]] = field(default_factory=list)
    card: list[str] = field(default_factory=list)


def baseline_for_run(task: Any, cfg: Any, ev: Any, split_name: str, metrics: dict[str, float],
                     ci: dict[str, tuple[float, float]], run_dir: Path,
                     unit_columns: dict[str, dict[str, str]] | None = None, prefit: Prefit | None = None) -> RunBaseline:
    """:func:`run_baseline` as ``engine.baseline`` asks (``prefit``: fitted before training); a failure is
    reported, never fatal."""
    if cfg.engine.baseline == "none" or not metrics:  # cfg: a medmm.config.TaskConfig
        return RunBaseline()
    try:
        if prefit is not None and prefit.error is not None:
            raise DataError(prefit.error)
        cmp = run_baseline(task, split_name, ev, metrics, ci, run_dir, n_boot=cfg.engine.bootstrap,
                           seed=cfg.seed, unit_columns=unit_columns, prefit=prefit)
    except Exception as exc:  # noqa: BLE001 - the trained model's outputs must still be written
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log.warning("classic baseline not fitted: %s", reason)
        return RunBaseline({"baseline": {"skipped": reason}})
    if cmp is None:
        return RunBaseline({"baseline": {"skipped": "this task gives no inputs for a classic baseline"}})
    return RunBaseline({"baseline": cmp.to_json()}, [report_section(cmp)], [model_card_section(cmp)])
