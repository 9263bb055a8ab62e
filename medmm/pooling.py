"""Pooling example scores per unit: the one rule the engine, the classic baseline, explain and the
torch-free runtime share (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pool_by_unit(units: Sequence[str], scores: np.ndarray,
                 targets: np.ndarray | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Mean score of the examples of each unit (``units[i]`` is example ``i``'s unit), units in
    first-seen order; each unit's target is its first example's. One example per unit: unchanged."""
    order: dict[str, int] = {}
    for u in units:
        order.setdefault(u, len(order))
    if len(order) == len(units):
        return list(units), scores, targets
    group = np.array([order[u] for u in units])
    counts = np.bincount(group, minlength=len(order)).astype(np.float64)
    pooled = np.zeros((len(order),) + scores.shape[1:], dtype=np.float64)
    np.add.at(pooled, group, scores)
    pooled /= counts.reshape((-1,) + (1,) * (scores.ndim - 1))
    first = np.full(len(order), -1)
    for pos, g in enumerate(group):
        if first[g] < 0:
            first[g] = pos
    return list(order), pooled.astype(np.float32), None if targets is None else targets[first]


def smallest_exact(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest of int8 / int16 that holds every value exactly (class indices, 0/1 labels,
    event flags: 1-2 bytes instead of a float32's 4), else unchanged."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or not a.size:
        return a
    lo, hi = a.min(), a.max()
    for kind in (np.int8, np.int16):
        info = np.iinfo(kind)
        if info.min <= lo and hi <= info.max:  # False for NaN: a NaN stays a float
            small = a.astype(kind)
            if np.array_equal(small, a):
                return small
    return a


class Growing:
    """An array appended block by block along its first axis, in one buffer grown in place
    (``ndarray.resize``: a large buffer is remapped, not copied), so the whole never exists twice,
    as a list of blocks joined at the end does. ``exact_small``: each block in :func:`smallest_exact`'s
    dtype (the buffer widens, exactly, when a later block needs it); ``capacity``: the rows to expect, when
    known (the first buffer holds them, so no growth)."""

    def __init__(self, exact_small: bool = False, capacity: int = 0) -> None:
        self.exact_small, self.capacity = exact_small, capacity
        self.buf: np.ndarray | None = None
        self.n = 0

    def add(self, block: np.ndarray) -> None:
        b = smallest_exact(block) if self.exact_small else np.asarray(block)
        if self.buf is None:
            self.buf = np.empty((max(len(b), self.capacity, 1),) + b.shape[1:], dtype=b.dtype)
        if b.shape[1:] != self.buf.shape[1:]:
            raise ValueError(f"a block of shape {b.shape[1:]} after blocks of {self.buf.shape[1:]}")
        wide = np.promote_types(self.buf.dtype, b.dtype)
        if wide != self.buf.dtype:
            self.buf = self.buf.astype(wide)
        need = self.n + len(b)
        if need > len(self.buf):
            self.buf.resize((max(need, len(self.buf) * 3 // 2),) + self.buf.shape[1:], refcheck=False)
        self.buf[self.n:need] = b
        self.n = need

    def array(self) -> np.ndarray | None:
        """The rows added (the buffer trimmed in place; ``None`` when nothing was added)."""
        if self.buf is None:
            return None
        self.buf.resize((self.n,) + self.buf.shape[1:], refcheck=False)
        return self.buf
