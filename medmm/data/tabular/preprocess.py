"""Tabular patient records: column typing, preprocessing and targets for table tasks.

Rules the functions here enforce:

- A feature is ``"numeric"`` or ``"categorical"``. Numeric dtypes are numeric; strings,
  booleans and pandas categoricals are categorical. A text column whose values are mostly
  numbers but that also holds other strings (``"12"``, ``"n/a"``, ``"abc"``) is an error
  naming the column and a few offending values, unless an override declares it categorical:
  silently treating a lab value as a category (or its typos as missing) hides a data problem.
- A feature with no value at all is an error, not a silent drop: the user chose the feature
  list, and a model that quietly ignores a column is worse than a clear message.
- The preprocessor is fitted with scikit-learn (median imputation with missing indicators and
  standard scaling for numeric columns; most-frequent imputation and one-hot encoding for
  categorical ones) and then reduced to plain numbers, so it is saved as JSON and loaded
  without pickle: loading someone else's run directory cannot execute code.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medmm.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ColumnType",
    "Preprocessor",
    "Problem",
    "TabularTarget",
    "category_strings",
    "fit_preprocessor",
    "infer_column_types",
    "prepare_target",
    "select_features",
    "to_float",
]

log = logging.getLogger(__name__)

ColumnType = Literal["numeric", "categorical"]
Problem = Literal["regression", "binary", "survival"]
NUMERIC: ColumnType = "numeric"
CATEGORICAL: ColumnType = "categorical"
PROBLEMS: tuple[str, ...] = ("regression", "binary", "survival")

_FORMAT = "medmm.tabular.preprocessor"
_VERSION = 1
_MOSTLY_NUMERIC = 0.5  # share of parseable values above which strings are "garbage in a number"
_NUMERIC_KINDS = {"integer", "floating", "mixed-integer-float", "decimal"}
_UNSUPPORTED_KINDS = {"datetime", "datetime64", "date", "time", "timedelta", "timedelta64", "period"}


# --------------------------------------------------------------------------- column types


def select_features(columns: Sequence[str], features: Sequence[str] | None, exclude: Sequence[str] | None,
                    reserved: Iterable[str | None] = ()) -> list[str]:
    """The feature columns: ``features`` if given, else every column but ``reserved`` ones; never ``exclude``.

    ``exclude`` (``data.exclude``) lists columns that must never be features (follow-up times,
    outcomes recorded after the fact, free-text notes). A column both listed in ``features`` and
    excluded is a :class:`ConfigError`; excluded columns that are not in the data are named in a
    warning (a typo would otherwise leave the column in).
    """
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    features = [features] if isinstance(features, str) else features
    if features:
        both = [c for c in features if c in exclude]
        if both:
            raise ConfigError(f"columns {both} are both features and in data.exclude; remove them from one list")
        return list(features)
    absent = [c for c in exclude if c not in columns]
    if absent:
        log.warning("data.exclude names columns that are not in the data: %s (the data has %s)",
                    absent, list(columns)[:20])
    skip = {c for c in reserved if c} | set(exclude)
    return [c for c in columns if c not in skip]



def _check_features(df: pd.DataFrame, features: Sequence[str] | None) -> list[str]:
    features = list(df.columns) if features is None else list(features)
    if not features:
        raise ConfigError("no feature columns given")
    dupes = sorted({c for c in features if features.count(c) > 1})
    if dupes:
        raise ConfigError(f"feature columns listed twice: {dupes}")
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise DataError(f"feature columns not in the data: {missing}; the data has {list(df.columns)}")
    return features


def _check_not_empty(df: pd.DataFrame, features: Sequence[str]) -> None:
    empty = [c for c in features if not df[c].notna().any()]
    if empty:
        raise DataError(
            f"feature columns with no values at all: {empty}; leave them out of the feature list"
        )


def to_float(series: pd.Series, column: str) -> np.ndarray:
    """Numeric values of ``series`` as float64 (missing -> NaN); non-numbers are a DataError."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        raise DataError(f"column {column!r} is boolean (True/False), not numeric")
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])  # a position, never the value (it may be PHI)
        raise DataError(
            f"column {column!r} should be numeric but {int(bad.sum())} value(s) are text, not numbers "
            f"(first at data row {first + 1}); blank them out (empty cells are missing values), fix them, or "
            f"declare the column categorical"
        )
    out = values.to_numpy(dtype="float64", na_value=np.nan)
    if np.isinf(out).any():
        raise DataError(f"column {column!r} holds infinite values")
    return out


def _kind(series: pd.Series) -> str:
    import pandas as pd

    if isinstance(series.dtype, pd.CategoricalDtype):
        return "categorical"
    return pd.api.types.infer_dtype(series, skipna=True)


def infer_column_types(
    df: pd.DataFrame,
    features: Sequence[str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, ColumnType]:
    """Decide whether each feature column is ``"numeric"`` or ``"categorical"``.

    Parameters
    ----------
    df : the training table.
    features : columns to use (default: all columns of ``df``).
    overrides : ``{column: "numeric" | "categorical"}`` that win over inference.

    Raises :class:`DataError` for a feature that is absent, has no values, holds dates, or is
    mostly numbers mixed with other strings (named with a few offending values), and
    :class:`ConfigError` for an override naming an unknown column or type.
    """
    import pandas as pd

    features = _check_features(df, features)
    overrides = dict(overrides or {})
    wrong = {c: t for c, t in overrides.items() if t not in (NUMERIC, CATEGORICAL)}
    if wrong:
        raise ConfigError(f"column type overrides must be 'numeric' or 'categorical', got {wrong}")
    unknown = sorted(set(overrides) - set(features))
    if unknown:
        raise ConfigError(f"column type overrides name columns that are not features: {unknown}")
    _check_not_empty(df, features)

    types: dict[str, ColumnType] = {}
    for col in features:
        series = df[col]
        if col in overrides:
            types[col] = overrides[col]  # type: ignore[assignment]
            if types[col] == NUMERIC:
                to_float(series, col)  # a column declared numeric must hold numbers
            continue
        kind = _kind(series)
        if kind in _UNSUPPORTED_KINDS:
            raise DataError(
                f"column {col!r} holds {kind} values; convert it to a number "
                f"(e.g. days since an index date) or leave it out"
            )
        if pd.api.types.is_bool_dtype(series) or kind in ("boolean", "categorical"):
            types[col] = CATEGORICAL
        elif pd.api.types.is_numeric_dtype(series) or kind in _NUMERIC_KINDS:
            types[col] = NUMERIC
        else:  # strings or mixed objects: numbers written as text, or a real category
            present = series[series.notna()]
            parsed = pd.to_numeric(present, errors="coerce")
            share = float(parsed.notna().mean())
            if share == 1.0:
                types[col] = NUMERIC
            elif share >= _MOSTLY_NUMERIC:
                to_float(series, col)  # raises, naming the offending values
            else:
                types[col] = CATEGORICAL
    return types


# --------------------------------------------------------------------------- preprocessing


def category_strings(series: pd.Series) -> np.ndarray:
    """Categorical values as stripped strings (object array; missing -> NaN).

    Numbers are written the same way whatever the dtype (``1``, ``1.0`` and ``"1"`` -> ``"1"``),
    so a category survives a change of dtype between training and prediction files.
    """
    import pandas as pd

    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    labels = np.array([_category_string(v) for v in uniques] + [np.nan], dtype=object)
    labels[labels == ""] = np.nan
    return labels[codes]  # code -1 (missing) picks the trailing NaN


def _category_string(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def _input_frame(df: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The model-ready input: numeric columns as float64, categorical ones as strings (the whole frame;
    :meth:`Preprocessor.transform` converts one column at a time instead)."""
    import pandas as pd

    missing = [c for c in (*numeric, *categorical) if c not in df.columns]
    if missing:
        raise DataError(f"the data lacks feature columns the model was trained on: {missing}")
    data: dict[str, Any] = {c: to_float(df[c], c) for c in numeric}
    data.update({c: category_strings(df[c]) for c in categorical})
    return pd.DataFrame(data, index=df.index, columns=[*numeric, *categorical])


def _category_index(series: pd.Series, missing: int, lookup: Mapping[str, int]) -> np.ndarray:
    """Each value's position in ``lookup`` by its :func:`category_strings` string (missing -> ``missing``,
    unknown -> -1), computed once per distinct value."""
    import pandas as pd

    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    strings = (_category_string(v) for v in uniques)
    table = np.array([missing if s == "" else lookup.get(s, -1) for s in strings] + [missing], dtype=np.intp)
    return table[codes]  # code -1 (missing) picks the trailing entry


@dataclass
class Preprocessor:
    """A fitted feature transform reduced to plain numbers (JSON-safe, no pickle).

    Output columns, in order: scaled numeric columns (median-imputed), scaled missing
    indicators of the numeric columns that had missing values in training, then the one-hot
    columns of each categorical column (missing -> most frequent category; unseen -> all zero).
    """

    numeric: list[str]
    categorical: list[str]
    medians: list[float]
    indicators: list[str]
    means: list[float]
    scales: list[float]
    modes: list[str]
    categories: list[list[str]]

    def __post_init__(self) -> None:
        n_num, n_cat = len(self.numeric), len(self.categorical)
        ok = (
            len(self.medians) == n_num
            and set(self.indicators) <= set(self.numeric)
            and len(self.means) == len(self.scales) == n_num + len(self.indicators)
            and len(self.modes) == len(self.categories) == n_cat
            and all(m in cats for m, cats in zip(self.modes, self.categories))
            and not set(self.numeric) & set(self.categorical)
            and all(s > 0 for s in self.scales)
        )
        if not ok:
            raise CheckpointError("inconsistent tabular preprocessor: the saved numbers do not fit together")
        self._indicator_idx = np.array([self.numeric.index(c) for c in self.indicators], dtype=np.intp)
        self._lookup = [{cat: i for i, cat in enumerate(cats)} for cats in self.categories]

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns: ``age``, ``age__missing``, ``sex=F``, ..."""
        names = [*self.numeric, *(f"{c}__missing" for c in self.indicators)]
        for col, cats in zip(self.categorical, self.categories):
            names.extend(f"{col}={cat}" for cat in cats)
        return names

    @property
    def n_features(self) -> int:
        """Width ``D`` of :meth:`transform`'s output."""
        return len(self.means) + sum(len(c) for c in self.categories)

    @property
    def columns(self) -> list[str]:
        """The input columns the transform needs."""
        return [*self.numeric, *self.categorical]

    def transform(self, df: pd.DataFrame, *, rows: np.ndarray | None = None, release: bool = False) -> np.ndarray:
        """Transform ``df`` into a ``float32`` array ``[N, D]``.

        ``rows``: positions of ``df``'s rows to transform, in the output's order (default: every row);
        the same values as ``transform(df)[rows]`` without the whole matrix. Extra columns are ignored;
        a missing feature column is a :class:`DataError`; values of a categorical column not seen in
        training are encoded as all zeros and counted in a ``UserWarning`` (which names columns, never
        values). One column is converted at a time, straight into the one output matrix (#30). ``df`` may be a
        :class:`~medmm.data.readers.BlockTable`: it is encoded block by block (the same values), and with
        ``release`` each block is freed once encoded, so the table and the matrix are not held whole together.
        """
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(f"the data lacks feature columns the model was trained on: {missing}")
        n = len(df) if rows is None else len(rows)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        blocks = getattr(df, "row_blocks", None)
        if blocks is None:
            unseen = self._encode(df, rows, out)
        else:
            counts: dict[str, int] = {}
            for block, local, at in blocks(rows, release=release):
                part = out[at] if isinstance(at, slice) else np.zeros((len(at), self.n_features), dtype=np.float32)
                for col, k in self._encode(block, local, part).items():
                    counts[col] = counts.get(col, 0) + k
                if not isinstance(at, slice):
                    out[at] = part
                del block, part
            unseen = {c: counts[c] for c in self.categorical if c in counts}
        if unseen:
            warnings.warn(
                f"{sum(unseen.values())} categorical value(s) not seen in training were encoded "
                f"as all zeros (count per column: {unseen})",
                UserWarning,
                stacklevel=2,
            )
        return out

    def _encode(self, df: pd.DataFrame, rows: Any, out: np.ndarray) -> dict[str, int]:
        """Write ``transform(df)[rows]`` into ``out`` (zeros, one row per selected row), a column at a time;
        the count of unseen categories per column."""
        means, scales = np.asarray(self.means, dtype=np.float64), np.asarray(self.scales, dtype=np.float64)
        indicator_of = {int(j): len(self.numeric) + k for k, j in enumerate(self._indicator_idx)}
        for j, col in enumerate(self.numeric):  # float64 arithmetic per column, as on the whole block before
            x = to_float(df[col], col)  # the first column that is not numbers raises, as before
            if rows is not None:
                x = x[rows]
            missing_x = np.isnan(x)
            out[:, j] = (np.where(missing_x, np.float64(self.medians[j]), x) - means[j]) / scales[j]
            if j in indicator_of:
                k = indicator_of[j]
                out[:, k] = (missing_x.astype(np.float64) - means[k]) / scales[k]
        unseen: dict[str, int] = {}
        offset = len(self.means)
        for col, mode, lookup in zip(self.categorical, self.modes, self._lookup):
            idx = _category_index(df[col], lookup.get(mode, -1), lookup)
            if rows is not None:
                idx = idx[rows]
            known = idx >= 0
            out[np.flatnonzero(known), offset + idx[known]] = 1.0
            if not known.all():
                unseen[col] = int((~known).sum())
            offset += len(lookup)
        return unseen

    def to_json(self) -> dict[str, Any]:
        """The fitted numbers as a JSON-serialisable dict (see :meth:`from_json`)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "medians": [float(v) for v in self.medians],
            "indicators": list(self.indicators),
            "means": [float(v) for v in self.means],
            "scales": [float(v) for v in self.scales],
            "modes": list(self.modes),
            "categories": [list(c) for c in self.categories],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor from :meth:`to_json`'s output; no code is executed."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise CheckpointError("not a medmm tabular preprocessor (missing or wrong 'format')")
        if data.get("version") != _VERSION:
            raise CheckpointError(f"unsupported tabular preprocessor version {data.get('version')!r}")
        try:
            kwargs = {
                "numeric": _str_list(data["numeric"]),
                "categorical": _str_list(data["categorical"]),
                "medians": _float_list(data["medians"]),
                "indicators": _str_list(data["indicators"]),
                "means": _float_list(data["means"]),
                "scales": _float_list(data["scales"]),
                "modes": _str_list(data["modes"]),
                "categories": [_str_list(c) for c in data["categories"]],
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed tabular preprocessor: {exc!r}") from exc
        return cls(**kwargs)


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return list(value)


def _float_list(value: Any) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError("expected a list of numbers")
    out = [float(v) for v in value]
    if not all(np.isfinite(out)):
        raise ValueError("non-finite number")
    return out


def fit_preprocessor(df: pd.DataFrame, column_types: Mapping[str, ColumnType]) -> Preprocessor:
    """Fit the feature transform on training rows ``df`` with scikit-learn, one column at a time.

    Numeric: ``SimpleImputer(strategy="median", add_indicator=True)`` then ``StandardScaler``.
    Categorical: ``SimpleImputer(strategy="most_frequent")`` then
    ``OneHotEncoder(handle_unknown="ignore")``. Fit on the training split only. These are the
    statistics of that ``ColumnTransformer``; each column is fitted alone (all of them are per-column
    statistics), so the fit holds one column in float64 at a time, never the transformed split.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    wrong = {c: t for c, t in column_types.items() if t not in (NUMERIC, CATEGORICAL)}
    if wrong:
        raise ConfigError(f"column types must be 'numeric' or 'categorical', got {wrong}")
    features = _check_features(df, list(column_types))
    _check_not_empty(df, features)
    numeric = [c for c in features if column_types[c] == NUMERIC]
    categorical = [c for c in features if column_types[c] == CATEGORICAL]
    missing = [c for c in (*numeric, *categorical) if c not in df.columns]
    if missing:
        raise DataError(f"the data lacks feature columns the model was trained on: {missing}")

    medians: list[float] = []
    indicators: list[str] = []
    means: list[float] = []
    scales: list[float] = []
    flag_stats: list[tuple[float, float]] = []  # the indicators' scaler statistics, after the numeric ones
    for c in numeric:
        col = np.asarray(to_float(df[c], c), dtype=np.float64).reshape(-1, 1)
        imputer = SimpleImputer(strategy="median", add_indicator=True).fit(col)
        medians.append(float(imputer.statistics_[0]))
        filled = imputer.transform(col)  # [imputed, indicator when the column has missing values]
        del col
        scaler = StandardScaler().fit(filled[:, :1])
        means.append(float(scaler.mean_[0]))
        scales.append(float(scaler.scale_[0]))
        if filled.shape[1] > 1:
            indicators.append(c)
            flag = StandardScaler().fit(filled[:, 1:])
            flag_stats.append((float(flag.mean_[0]), float(flag.scale_[0])))
    means += [m for m, _ in flag_stats]
    scales += [s for _, s in flag_stats]
    modes: list[str] = []
    categories: list[list[str]] = []
    for c in categorical:
        col = np.asarray(category_strings(df[c]), dtype=object).reshape(-1, 1)
        imputer = SimpleImputer(strategy="most_frequent").fit(col)
        modes.append(str(imputer.statistics_[0]))
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(imputer.transform(col))
        categories.append([str(v) for v in encoder.categories_[0]])
    return Preprocessor(
        numeric=numeric,
        categorical=categorical,
        medians=medians,
        indicators=indicators,
        means=means,
        scales=scales,
        modes=modes,
        categories=categories,
    )


# --------------------------------------------------------------------------- targets


@dataclass
class TabularTarget:
    """Targets of the rows kept by :func:`prepare_target`.

    ``mask`` marks the kept rows of the input table; ``skipped`` counts the others by reason.
    Regression and binary fill ``y`` (binary: 0/1, with ``classes[k]`` the original label
    coded ``k``); survival fills ``time`` (> 0) and ``event`` (1 = event observed).
    """

    problem: Problem
    mask: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    y: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    classes: list[Any] | None = None

    @property
    def n(self) -> int:
        """Number of kept rows."""
        return int(self.mask.sum())


def _column(df: pd.DataFrame, name: str | None, role: str, problem: str) -> pd.Series:
    if not name:
        raise ConfigError(f"problem {problem!r} needs a {role} column")
    if name not in df.columns:
        raise DataError(f"{role} column {name!r} is not in the data; the data has {list(df.columns)}")
    return df[name]


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def prepare_target(
    df: pd.DataFrame,
    problem: Problem,
    target: str | None = None,
    time: str | None = None,
    event: str | None = None,
    *,
    positive_label: Any = None,
) -> TabularTarget:
    """Validate and encode the target of a table task's problem.

    - ``regression``: ``target`` must be numeric and not constant.
    - ``binary``: ``target`` must have exactly two distinct values. 0/1 (or False/True) is kept
      as is; other pairs are coded in sorted order (``"benign"``/``"malignant"`` -> 0/1)
      unless ``positive_label`` names the value coded 1. More values -> :class:`DataError`.
    - ``survival``: ``time`` numeric and > 0, ``event`` 0/1; at least one event.

    Rows whose target (or time/event) is missing are skipped and counted in ``skipped``.
    """
    import pandas as pd

    if problem not in PROBLEMS:
        raise ConfigError(f"unknown problem {problem!r}; choose one of {list(PROBLEMS)}")
    if problem == "survival":
        t_raw = _column(df, time, "time", problem)
        e_raw = _column(df, event, "event", problem)
        if pd.api.types.is_bool_dtype(e_raw):
            e_raw = e_raw.astype("Float64")
        t_all = to_float(t_raw, time)  # type: ignore[arg-type]
        e_all = to_float(e_raw, event)  # type: ignore[arg-type]
        no_time, no_event = np.isnan(t_all), np.isnan(e_all)
        skipped = {"missing time": int(no_time.sum()), "missing event": int((no_event & ~no_time).sum())}
        mask = ~(no_time | no_event)
        t, e = t_all[mask], e_all[mask]
        if (t <= 0).any():
            raise DataError(f"time column {time!r} has {int((t <= 0).sum())} value(s) <= 0; times must be > 0")
        if not np.isin(e, (0.0, 1.0)).all():
            other = int((~np.isin(e, (0.0, 1.0))).sum())  # a count, never the values
            raise DataError(f"event column {event!r} must be 0/1 (1 = event observed); {other} value(s) are other numbers")
        if not e.any():
            raise DataError(f"event column {event!r} has no events (all 0): a survival model cannot be fitted")
        return TabularTarget(
            problem, mask, _nonzero(skipped), time=t.astype(np.float32), event=e.astype(np.float32)
        )

    raw = _column(df, target, "target", problem)
    mask = raw.notna().to_numpy(copy=True)  # writable (pandas 3 copy-on-write hands out read-only views)
    if isinstance(raw.dtype, pd.StringDtype) or raw.dtype == object:
        mask &= raw.astype(str).str.strip().ne("").to_numpy()  # blank text is missing too
    skipped = _nonzero({"missing target": int((~mask).sum())})
    kept = raw[mask]
    if len(kept) < 2:
        raise DataError(f"target column {target!r} has {len(kept)} usable value(s); at least 2 are needed")

    if problem == "regression":
        y = to_float(kept, target)  # type: ignore[arg-type]
        if np.all(y == y[0]):
            raise DataError(f"target column {target!r} is constant; nothing to learn")
        return TabularTarget(problem, mask, skipped, y=y.astype(np.float32))

    values = [_python_scalar(v) for v in pd.unique(kept)]
    if len(values) == 1:
        raise DataError(f"target column {target!r} has a single class; binary needs two")
    if len(values) > 2:
        raise DataError(
            f"target column {target!r} has {len(values)} distinct values; binary needs exactly two "
            f"(use problem 'regression' for a continuous outcome)"
        )
    if positive_label is not None:
        # a run's label names are strings: '1' names 1, 1.0 and '1' alike
        match = [v for v in values if _category_string(v) == _category_string(positive_label)]
        if not match:
            raise ConfigError(f"positive_label {positive_label!r} is not one of the {len(values)} values of {target!r}")
        positive_label = match[0]
        classes = [v for v in values if v != positive_label] + [positive_label]
    elif all(isinstance(v, (bool, int, float)) for v in values):
        classes = sorted(values)
    else:
        classes = sorted(values, key=str)
    y = (kept == classes[1]).to_numpy(dtype=np.float32)
    return TabularTarget(problem, mask, skipped, y=y, classes=classes)


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}
