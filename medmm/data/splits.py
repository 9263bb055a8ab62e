"""Train / val / test assignment by patient (group): no group ever lands in two splits."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmm.errors import DataError

SPLITS = ("train", "val", "test")


def _label_codes(labels: np.ndarray) -> np.ndarray:
    """Each label's rank among the distinct ``str(label)`` values (the order ``sorted`` gives)."""
    try:
        values, codes = np.unique(labels, return_inverse=True)  # native values: no string per row
    except TypeError:  # mixed kinds (e.g. None beside numbers) compare only as strings
        values, codes = np.unique(labels.astype(str), return_inverse=True)
    _, remap = np.unique(values.astype(str), return_inverse=True)  # 1 and 1.0 are one stratum if one string
    return remap.reshape(-1)[codes.reshape(-1)]


def group_strata(group_ids: np.ndarray, labels: np.ndarray | None, n_groups: int) -> np.ndarray:
    """One stratum code per group: the rank of its most common example label as a string (ties:
    the smallest string); one stratum (0) without 1-D labels. O(n log n): one sort of the
    (group, label) pairs, never a scan of the rows per group."""
    if labels is None or np.asarray(labels).ndim != 1:
        return np.zeros(n_groups, dtype=np.int64)
    codes = _label_codes(np.asarray(labels))
    if n_groups == len(codes):  # every group has one example (no group column): its label is the group's
        out = np.empty(n_groups, dtype=np.int64)
        out[np.asarray(group_ids, dtype=np.int64)] = codes
        return out
    width = int(codes.max()) + 1
    pairs = np.asarray(group_ids, dtype=np.int64) * width + codes
    if n_groups * width <= 4 * len(pairs) + 1024:  # few labels: count in a table, no sort at all
        table = np.bincount(pairs, minlength=n_groups * width).reshape(n_groups, width)
        return table.argmax(axis=1).astype(np.int64)  # argmax: the first (smallest) label of the most
    pairs, counts = np.unique(pairs, return_counts=True)
    group, label = pairs // width, pairs % width
    order = np.lexsort((label, -counts, group))  # per group: most examples first, then the smallest label
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    out = np.zeros(n_groups, dtype=np.int64)
    out[group[first]] = label[first]
    return out


def _row_key_ranks(n: int) -> np.ndarray:
    """Rank of ``str(i)`` among ``str(0) .. str(n-1)`` in string order, without making the strings.

    Digits right-padded with zeros to one width and ties broken by length (a prefix sorts first)
    order decimal strings exactly as string comparison does.
    """
    values = np.arange(n, dtype=np.int64)
    lengths = np.ones(n, dtype=np.int64)
    for k in range(1, len(str(max(n - 1, 0)))):
        lengths += values >= 10 ** k
    width = int(lengths.max(initial=1))
    key = values * 10 ** (width - lengths) * 32 + lengths  # unique per row: one plain sort
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(key)] = np.arange(n)
    return ranks


def _group_ids(n: int, groups: Sequence[str] | None) -> tuple[np.ndarray, int]:
    """Each example's group as its rank among the sorted distinct group strings, and the count."""
    if groups is None:
        return _row_key_ranks(n), n
    import pandas as pd

    keys = np.asarray([str(g) for g in groups], dtype=object)
    if len(keys) != n:
        raise DataError("one group per example is required")
    codes, uniq = pd.factorize(keys)  # hashing: O(n)
    ranks = np.empty(len(uniq), dtype=np.int64)  # then a sort of the distinct groups only
    ranks[np.argsort(np.asarray(uniq, dtype=str), kind="stable")] = np.arange(len(uniq))
    return ranks[codes], len(uniq)


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
    group_ids, n_groups = _group_ids(n, groups)
    strata = group_strata(group_ids, None if labels is None else np.asarray(labels), n_groups)
    rng = np.random.default_rng(seed)
    assignment = np.zeros(n_groups, dtype=np.int8)  # index into SPLITS
    by_stratum = np.argsort(strata, kind="stable")  # members of each stratum in group order
    bounds = np.flatnonzero(np.r_[True, np.diff(strata[by_stratum]) != 0, True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # strata in string order, as before
        members = by_stratum[lo:hi]
        members = members[rng.permutation(len(members))]
        n_val, n_test = _allocate(len(members), val_fraction, test_fraction)
        assignment[members[:n_test]] = 2
        assignment[members[n_test : n_test + n_val]] = 1
    return np.asarray(SPLITS, dtype=object)[assignment[group_ids]]


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
