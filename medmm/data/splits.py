"""Train / val / test assignment by patient (group): no group ever lands in two splits."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmm.errors import DataError

SPLITS = ("train", "val", "test")


def _group_labels(group_ids: np.ndarray, labels: np.ndarray | None, n_groups: int) -> np.ndarray | None:
    """One stratification label per group (its most common example label), if usable."""
    if labels is None or np.asarray(labels).ndim != 1:
        return None
    out = np.empty(n_groups, dtype=object)
    for g in range(n_groups):
        values, counts = np.unique(labels[group_ids == g].astype(str), return_counts=True)
        out[g] = values[counts.argmax()]
    _, counts = np.unique(out.astype(str), return_counts=True)
    return out if counts.min() >= 2 else None


def _take(idx: np.ndarray, strat: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split group indices ``idx`` into (rest, taken) with ``fraction`` taken."""
    from sklearn.model_selection import train_test_split

    n_take = int(round(fraction * len(idx)))
    if fraction <= 0 or len(idx) < 2:
        return idx, idx[:0]
    n_take = min(max(n_take, 1), len(idx) - 1)
    s = strat[idx] if strat is not None else None
    if s is not None and (len(np.unique(s.astype(str))) > n_take or len(np.unique(s.astype(str))) > len(idx) - n_take):
        s = None  # too few groups to stratify
    try:
        rest, taken = train_test_split(idx, test_size=n_take, random_state=seed, stratify=s)
    except ValueError:
        rest, taken = train_test_split(idx, test_size=n_take, random_state=seed)
    return np.sort(rest), np.sort(taken)


def group_split(n: int, *, groups: Sequence[str] | None = None, labels: np.ndarray | None = None,
                val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per example; fractions are of groups, stratified by label.

    Without ``groups`` every example is its own group. With them (patient IDs), every example
    of a patient lands in the same split — the leakage PyHealth once shipped cannot happen.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"split fractions must be in [0, 1) and sum below 1 (val {val_fraction}, test {test_fraction})")
    if n == 0:
        return np.array([], dtype=object)
    keys = np.asarray([str(g) for g in groups]) if groups is not None else np.arange(n).astype(str)
    if len(keys) != n:
        raise DataError("one group per example is required")
    uniq, group_ids = np.unique(keys, return_inverse=True)
    strat = _group_labels(group_ids, None if labels is None else np.asarray(labels), len(uniq))
    all_groups = np.arange(len(uniq))
    rest, test = _take(all_groups, strat, test_fraction, seed)
    train, val = _take(rest, strat, val_fraction / max(1e-9, 1 - test_fraction), seed + 1)
    assignment = np.empty(len(uniq), dtype=object)
    assignment[train], assignment[val], assignment[test] = "train", "val", "test"
    return assignment[group_ids]


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
