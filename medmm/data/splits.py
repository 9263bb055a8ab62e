"""Train / val / test assignment by patient (group): no group ever lands in two splits."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmm.errors import DataError

SPLITS = ("train", "val", "test")


def _group_labels(group_ids: np.ndarray, labels: np.ndarray | None, n_groups: int) -> np.ndarray:
    """One stratification label per group (its most common example label); one stratum without labels."""
    if labels is None or np.asarray(labels).ndim != 1:
        return np.zeros(n_groups, dtype=object)
    out = np.empty(n_groups, dtype=object)
    for g in range(n_groups):
        values, counts = np.unique(labels[group_ids == g].astype(str), return_counts=True)
        out[g] = values[counts.argmax()]
    return out


def _allocate(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Groups of one stratum for (val, test): proportional, but train keeps at least one, and a
    stratum of three or more groups puts at least one in each held-out split that is asked for."""
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if n >= 3:
        n_val, n_test = max(n_val, int(val_fraction > 0)), max(n_test, int(test_fraction > 0))
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def group_split(n: int, *, groups: Sequence[str] | None = None, labels: np.ndarray | None = None,
                val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per example; fractions are of groups, stratified by label.

    Without ``groups`` every example is its own group. With them (patient IDs), every example
    of a patient lands in the same split — the leakage PyHealth once shipped cannot happen.
    Each label stratum is allocated separately, so rare classes still reach the training split.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"split fractions must be in [0, 1) and sum below 1 (val {val_fraction}, test {test_fraction})")
    if n == 0:
        return np.array([], dtype=object)
    keys = np.asarray([str(g) for g in groups]) if groups is not None else np.arange(n).astype(str)
    if len(keys) != n:
        raise DataError("one group per example is required")
    uniq, group_ids = np.unique(keys, return_inverse=True)
    strata = _group_labels(group_ids, None if labels is None else np.asarray(labels), len(uniq))
    rng = np.random.default_rng(seed)
    assignment = np.full(len(uniq), "train", dtype=object)
    for stratum in sorted(set(strata.astype(str))):
        members = np.flatnonzero(strata.astype(str) == stratum)
        members = members[rng.permutation(len(members))]
        n_val, n_test = _allocate(len(members), val_fraction, test_fraction)
        assignment[members[:n_test]] = "test"
        assignment[members[n_test : n_test + n_val]] = "val"
    return assignment[group_ids]


SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def parse_split(value: object) -> str | None:
    """A user's split cell -> ``train`` / ``val`` / ``test`` (aliases allowed), or ``None``."""
    return SPLIT_ALIASES.get(str(value).strip().lower())


def check_no_leakage(splits: np.ndarray, groups: Sequence[str]) -> None:
    """Raise if any group appears in more than one split (for user-provided split columns)."""
    seen: dict[str, str] = {}
    for s, g in zip(splits, groups):
        if seen.setdefault(str(g), str(s)) != str(s):
            raise DataError(f"a patient/group appears in both the {seen[str(g)]!r} and {s!r} splits; "
                            "fix the split column or drop data.group_column")


def write_splits(path: Path, units: Sequence[str], splits: np.ndarray) -> None:
    """``splits.csv``: unit id and its split (no patient identifiers)."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split"])
        w.writerows(zip(units, splits))
