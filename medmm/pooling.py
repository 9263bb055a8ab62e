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
