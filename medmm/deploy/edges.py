"""Parity at the edges of an exported graph's dynamic axes.

A graph traced on the parity sample can still be wrong at sizes the sample never had: a Python
``if`` on a length is frozen by the exporter (a TextCNN exported on long notes failed on notes of
fewer tokens than its widest kernel). So every dynamic axis is also checked at its edges — size 1
and the largest size prediction feeds (``batch``: the eval batch size the predictors cut by;
``sequence``: the run's ``data.max_length``; any other axis: the largest size seen) — in every
combination, torch graph against onnxruntime on the same inputs.

Edge inputs are cut from a real batch of the sample: an axis is shortened by keeping its first
positions and lengthened by repeating its positions cyclically (``numpy.take`` modulo the size),
so token ids stay in the vocabulary and pixels stay in range. Works for any task's graph; nothing
here knows a task by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["axis_edges", "describe", "edge_cases", "edge_parity"]

Feeds = dict[str, np.ndarray]


def axis_edges(cfg: Any, dynamic: Mapping[str, Mapping[int, str]], feeds: Mapping[str, np.ndarray]
               ) -> dict[str, tuple[int, ...]]:
    """The sizes each dynamic axis label is checked at: ``(1, largest)``."""
    seen: dict[str, int] = {}
    for name, axes in dynamic.items():
        for axis, label in axes.items():
            seen[label] = max(seen.get(label, 1), int(feeds[name].shape[axis]))
    engine = getattr(cfg, "engine", None)
    data = getattr(cfg, "data", None)
    largest = {"batch": getattr(engine, "eval_batch_size", None), "sequence": getattr(data, "max_length", None)}
    out = {}
    for label, size in seen.items():
        top = largest.get(label)
        top = int(top) if isinstance(top, int) and top >= 1 else size
        out[label] = tuple(sorted({1, top}))
    return out


def _resize(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(np.take(a, np.arange(size) % a.shape[axis], axis=axis))


def edge_cases(feeds: Mapping[str, np.ndarray], dynamic: Mapping[str, Mapping[int, str]],
               edges: Mapping[str, Sequence[int]]) -> list[tuple[dict[str, int], Feeds]]:
    """``(sizes, feeds)`` for every combination of edge sizes of the labels in ``edges``."""
    labels = sorted(edges)
    cases = []
    for combo in itertools.product(*(edges[label] for label in labels)):
        sizes = dict(zip(labels, combo))
        out = {}
        for name, a in feeds.items():
            for axis, label in (dynamic.get(name) or {}).items():
                if label in sizes:
                    a = _resize(a, axis, sizes[label])
            out[name] = a
        cases.append((sizes, out))
    return cases


def edge_parity(reference: Callable[[Feeds], np.ndarray], exported: Callable[[Feeds], np.ndarray],
                cases: Sequence[tuple[dict[str, int], Feeds]], *, relative: bool = False
                ) -> tuple[float, list[dict[str, Any]]]:
    """Worst difference over ``cases`` and one row per case (``sizes``, ``max_abs_diff`` or ``error``).

    ``relative``: differences relative to the value's size (regression / survival outputs). A case
    the exported graph cannot run (e.g. onnxruntime refuses the shape) counts as an infinite miss.
    """
    worst, rows = 0.0, []
    for sizes, feeds in cases:
        ref = np.asarray(reference(feeds), np.float64)
        try:
            got = np.asarray(exported(feeds), np.float64)
        except Exception as exc:  # noqa: BLE001 - reported as a parity miss with the runtime's reason
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            rows.append({"sizes": sizes, "max_abs_diff": None, "error": f"{type(exc).__name__}: {reason[:200]}"})
            worst = float("inf")
            continue
        if got.shape != ref.shape:
            rows.append({"sizes": sizes, "max_abs_diff": None, "error": f"output shape {got.shape} != {ref.shape}"})
            worst = float("inf")
            continue
        diff = np.abs(got - ref)
        if relative:
            diff = diff / np.maximum(1.0, np.abs(ref))
        d = float(diff.max()) if diff.size else 0.0
        d = d if np.isfinite(d) else float("inf")
        rows.append({"sizes": sizes, "max_abs_diff": d})
        worst = max(worst, d)
    return worst, rows


def describe(row: Mapping[str, Any]) -> str:
    """``batch=1, sequence=1``: a case's sizes, for messages."""
    return ", ".join(f"{k}={v}" for k, v in row["sizes"].items())
