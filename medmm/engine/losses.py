"""The default loss of each problem kind, as a SUM over the batch plus the item count.

Returning sums lets the engine normalise by the number of items in the whole accumulation
window (and across data-parallel ranks), so ``grad_accum=k, batch=b`` equals ``batch=k*b``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmm.errors import ConfigError


def problem_loss(problem: str, output: torch.Tensor, target: torch.Tensor, *,
                 class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 regression_loss: str = "mse") -> tuple[torch.Tensor, int]:
    """``(sum of per-example losses, number of examples)`` for one micro-batch."""
    n = int(target.shape[0])
    output = output.float()
    if problem == "binary":
        logit = output.reshape(n, -1)[:, -1] if output.ndim > 1 and output.shape[-1] == 1 else output.reshape(n)
        pos_weight = None
        if class_weights is not None and len(class_weights) == 2:
            pos_weight = class_weights[1] / class_weights[0]
        loss = F.binary_cross_entropy_with_logits(logit, target.float().reshape(n), pos_weight=pos_weight, reduction="sum")
    elif problem == "multiclass":
        loss = F.cross_entropy(output, target.long().reshape(n), weight=class_weights,
                               label_smoothing=label_smoothing, reduction="sum")
    elif problem == "multilabel":
        per = F.binary_cross_entropy_with_logits(output, target.float(), pos_weight=class_weights, reduction="none")
        loss = per.mean(dim=1).sum()
    elif problem == "regression":
        pred = output.reshape(n)
        y = target.float().reshape(n)
        if regression_loss == "huber":
            loss = F.huber_loss(pred, y, reduction="sum")
        elif regression_loss == "mse":
            loss = F.mse_loss(pred, y, reduction="sum")
        else:
            raise ConfigError(f"unknown regression loss {regression_loss!r} (mse, huber)")
    elif problem == "survival":
        from medmm.losses import cox_ph_loss

        loss = cox_ph_loss(output.reshape(n), target[:, 0].float(), target[:, 1].float()) * n
    else:
        raise ConfigError(f"unknown problem kind {problem!r}")
    return loss, n


def multilabel_pos_weight(targets: Any, max_weight: float = 10.0) -> np.ndarray:
    """Per-label ``BCEWithLogits`` ``pos_weight``: negatives / positives in train, within [1, max_weight]."""
    y = np.asarray(targets, dtype=np.float64)
    pos = y.sum(axis=0)
    return np.clip((len(y) - pos) / np.maximum(pos, 1.0), 1.0, max_weight).astype(np.float32)


def scores_from_output(problem: str, output: torch.Tensor) -> torch.Tensor:
    """Probabilities (classification) or raw values (regression, survival log hazard)."""
    output = output.float()
    if problem == "binary":
        if output.ndim > 1 and output.shape[-1] == 2:
            return output.softmax(-1)[:, 1]
        return torch.sigmoid(output.reshape(output.shape[0]))
    if problem == "multiclass":
        return output.softmax(-1)
    if problem == "multilabel":
        return torch.sigmoid(output)
    return output.reshape(output.shape[0])
