"""Model-agnostic fallback: occlusion of the float tensors of a task's batches.

A task that provides no :meth:`~medmm.task.Task.explain_spec` is explained by replacing parts
of its input with zero and measuring how far the predicted class's probability falls
(:func:`medmm.explain.core.ablate`): per column for ``[B, D]`` inputs, per cell of an 8 x 8
grid for ``[B, ..., H, W]`` inputs, per position for ``[B, L]`` sequences of floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmm.errors import MedmmError
from medmm.explain.core import Items, grid_items
from medmm.explain.spec import ExplainSpec, InputSpec


def _float_paths(batch: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], torch.Tensor]]:
    if isinstance(batch, torch.Tensor):
        return [(path, batch)] if batch.is_floating_point() and batch.ndim >= 2 else []
    if isinstance(batch, dict):
        return [p for k, v in batch.items() for p in _float_paths(v, (*path, k))]
    if isinstance(batch, (list, tuple)):
        return [p for i, v in enumerate(batch) for p in _float_paths(v, (*path, i))]
    return []


def _get(batch: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        batch = batch[key]
    return batch


def _put(batch: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(batch, dict):
        return {**batch, key: _put(batch[key], rest, value)}
    items = list(batch)
    items[key] = _put(items[key], rest, value)
    return type(batch)(items) if not hasattr(batch, "_fields") else type(batch)(*items)


def fallback_spec(task_name: str, batch: Any) -> ExplainSpec:
    """Occlusion over the largest float tensor of ``batch`` (one-line error if there is none)."""
    found = _float_paths(batch)
    if not found:
        raise MedmmError(f"task {task_name!r} provides no explain_spec and its batches hold no float input to "
                         "occlude; add Task.explain_spec to the task to explain it")
    path, x = max(found, key=lambda p: p[1][0].numel())
    kind = "image" if x.ndim >= 4 else "features" if x.ndim == 2 else "tensor"
    return ExplainSpec([InputSpec(
        name="input" if not path else ".".join(str(p) for p in path), kind=kind,
        get=lambda b, p=path: _get(b, p), put=lambda b, v, p=path: _put(b, p, v), baseline=0.0,
        baseline_doc="zero")], notes=["the task provides no explainer: model-agnostic occlusion (zero baseline)"])


def tensor_items(spec: InputSpec, batch: Any) -> list[Items | None]:
    """Items of a generic tensor input: positions of ``[B, L]`` / cells of ``[B, C, L]``-like inputs."""
    x = spec.get(batch)
    shape = tuple(x.shape[1:])
    if len(shape) == 1:
        items = Items([f"position {j}" for j in range(shape[0])], [np.array([j]) for j in range(shape[0])])
    else:
        items = grid_items(shape if len(shape) >= 2 else (1, *shape), (min(8, shape[-2]), min(8, shape[-1])))
    return [items] * x.shape[0]


def modality_items(spec: InputSpec, batch: Any) -> list[Items | None]:
    """One item per modality present in the row (its column of the presence mask)."""
    mask = spec.get(batch).bool().cpu().numpy()
    names = spec.item_names or [f"modality {j}" for j in range(mask.shape[1])]
    out: list[Items | None] = []
    for row in mask:
        cols = np.flatnonzero(row)
        out.append(Items([names[j] for j in cols], [np.array([j]) for j in cols]) if len(cols) else None)
    return out
