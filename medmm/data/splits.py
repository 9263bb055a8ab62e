"""Train / val / test assignment by patient (group): no group ever lands in two splits."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmm.errors import DataError

SPLITS = ("train", "val", "test")


#: Elements per block of the row-wise passes below: their scratch arrays stay in the CPU cache, so a
#: pass over 10M rows costs 10x one over 1M (fresh 80 MB temporaries cost 20-30x: page faults and
#: memory traffic, measured in docs/scale.md).
BLOCK = 1 << 16


#: Up to this many strata (label values) the split finds each stratum's groups by one comparison pass
#: over the groups instead of sorting them (same order: a stable sort keeps group order within a stratum).
_FEW_STRATA = 16


def _blocks(n: int) -> list[slice]:
    """``slice``s of at most :data:`BLOCK` elements covering ``range(n)``."""
    return [slice(i, min(i + BLOCK, n)) for i in range(0, n, BLOCK)]


def _code_dtype(count: int) -> type:
    """The smallest integer type for codes ``0 .. count - 1`` (less memory traffic per row)."""
    return np.int8 if count <= 2 ** 7 else np.int16 if count <= 2 ** 15 else np.int64


def _counts(values: np.ndarray, size: int, offset: int = 0) -> np.ndarray:
    """``np.bincount(values - offset, minlength=size)`` counted a block at a time: no row-sized int64
    temporary (a fresh 80 MB at 10M rows)."""
    out = np.zeros(size, dtype=np.int64)
    for b in _blocks(len(values)):
        block = values[b]
        out += np.bincount((block - offset if offset else block).astype(np.intp, copy=False), minlength=size)
    return out


def _label_codes(labels: np.ndarray) -> np.ndarray:
    """Each label's rank among the distinct ``str(label)`` values (the order ``sorted`` gives)."""
    if labels.dtype.kind in "biu" and labels.size:  # integers of a small range: one count, no sort
        lo, hi = int(labels.min()), int(labels.max())
        if hi - lo <= max(4 * labels.size, 1 << 16):
            present = np.flatnonzero(_counts(labels, hi - lo + 1, lo)) + lo
            order = np.argsort(present.astype(str), kind="stable")  # the distinct values as strings
            lut = np.zeros(hi - lo + 1, dtype=_code_dtype(len(present)))
            lut[present[order] - lo] = np.arange(len(present))
            codes = np.empty(labels.size, dtype=lut.dtype)
            for b in _blocks(labels.size):
                codes[b] = lut[labels[b] - lo]
            return codes
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
        out = np.empty(n_groups, dtype=codes.dtype)
        out[np.asarray(group_ids)] = codes  # int32 / int64 ranks index as they are (no int64 copy)
        return out
    width = int(codes.max()) + 1
    pairs = np.asarray(group_ids, dtype=np.int64) * width + codes.astype(np.int64)
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
    """Rank of ``str(i)`` among ``str(0) .. str(n-1)`` in string order, without making the strings
    and without a sort.

    For ``i`` of ``L`` digits, the strings below it among the ``m``-digit numbers are those under
    its first ``m`` digits plus that prefix itself (``m < L``), the ``L``-digit numbers below it, and
    the ``m``-digit numbers below ``i * 10**(m - L)`` (``m > L``). Counted in cache-sized blocks.
    """
    ranks = np.empty(n, dtype=np.int32 if n < 2 ** 31 else np.int64)  # half the memory traffic below 2**31 rows
    digits = len(str(max(n - 1, 0)))
    bounds = [(0 if m == 1 else 10 ** (m - 1), min(10 ** m, n)) for m in range(1, digits + 1)]
    base = np.arange(BLOCK, dtype=np.int64)
    i_buf, t_buf, r_buf = (np.empty(BLOCK, dtype=np.int64) for _ in range(3))
    for length, (lo, hi) in enumerate(bounds, start=1):
        for start in range(lo, hi, BLOCK):
            k = min(BLOCK, hi - start)
            i, t, r = i_buf[:k], t_buf[:k], r_buf[:k]
            np.add(base[:k], start, out=i)
            np.subtract(i, lo, out=r)  # the L-digit numbers below i
            for m, (lo_m, hi_m) in enumerate(bounds, start=1):
                if m < length:  # m-digit numbers below i's first m digits, and that prefix
                    np.floor_divide(i, 10 ** (length - m), out=t)
                    np.minimum(t, hi_m, out=t)
                    r += t
                    r += 1 - lo_m
                elif m > length:  # m-digit numbers whose first L digits are below i
                    np.multiply(i, 10 ** (m - length), out=t)
                    t -= lo_m
                    np.clip(t, 0, hi_m - lo_m, out=t)
                    r += t
            ranks[start : start + k] = r
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
    top = int(strata.max(initial=0))
    strata = strata.astype(_code_dtype(top + 1), copy=False)
    sizes = _counts(strata, top + 1)
    few = top < _FEW_STRATA  # few strata: each one's members by one comparison pass, no sort
    by_stratum = None if few else np.argsort(strata, kind="stable")  # radix sort
    for code, (hi, size) in enumerate(zip(np.cumsum(sizes), sizes)):  # members in group order; strata in string order
        if not size:
            continue
        shuffled = rng.permutation(size)  # positions in the stratum's group order: test first, then val
        n_val, n_test = _allocate(size, val_fraction, test_fraction)
        local = np.zeros(size, dtype=np.int8)  # written at the shuffled positions (a small array), then
        local[shuffled[:n_test]] = 2  # copied out in group order (no random gather over the groups)
        local[shuffled[n_test : n_test + n_val]] = 1
        del shuffled
        if few:  # the stable sort's block of this stratum, without the sort
            assignment[strata == code] = local
        else:
            assignment[by_stratum[hi - size : hi]] = local
    names, out = np.asarray(SPLITS, dtype=object), np.empty(n, dtype=object)
    for b in _blocks(n):
        out[b] = names[assignment[group_ids[b]]]
    return out


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
