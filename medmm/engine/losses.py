"""Losses: the default loss of each problem kind (:func:`problem_loss`) and the one torch does not
ship (:func:`cox_ph_loss`).

:func:`problem_loss` returns a SUM over the batch plus the item count, so that the engine normalises
by the number of items in the whole accumulation window (and across data-parallel ranks):
``grad_accum=k, batch=b`` equals ``batch=k*b``. For regression it uses ``mse_loss`` or
``huber_loss``, for binary risk ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmm.errors import ConfigError

__all__ = ["cox_ph_loss", "multilabel_pos_weight", "problem_loss", "scores_from_output"]


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
        loss = cox_ph_loss(output.reshape(n), target[:, 0].float(), target[:, 1].float()) * n
    else:
        raise ConfigError(f"unknown problem kind {problem!r}")
    return loss, n


def cox_ph_loss(log_hazard: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    r"""Negative Cox partial log-likelihood with Breslow ties, averaged over events.

    .. math::
        -\frac{1}{D} \sum_{i:\,e_i=1} \Big(\eta_i - \log \sum_{j:\,t_j \ge t_i} e^{\eta_j}\Big)

    All subjects with a tied time share one risk set (everyone still at risk at that time),
    which is Breslow's approximation. Vectorised: one sort and one ``logcumsumexp``.

    Parameters
    ----------
    log_hazard : ``[N]`` (or ``[N, 1]``) model output :math:`\eta`.
    time : ``[N]`` follow-up times.
    event : ``[N]`` 1 when the event was observed, 0 when censored.

    Returns a scalar; a batch without events gives 0 connected to the graph, so
    ``backward()`` still works (with zero gradients).
    """
    eta = log_hazard.reshape(-1)
    time = time.reshape(-1)
    event = event.reshape(-1)
    if not (eta.shape == time.shape == event.shape):
        raise ValueError(
            f"log_hazard, time and event must have N elements each, got "
            f"{tuple(log_hazard.shape)}, {tuple(time.shape)}, {tuple(event.shape)}"
        )
    if eta.numel() == 0:
        return eta.sum() * 0.0
    event = event.to(eta.dtype)
    order = torch.argsort(time, descending=True, stable=True)
    eta, time, event = eta[order], time[order], event[order]
    log_cum = torch.logcumsumexp(eta, dim=0)  # log sum over everyone with a time >= this one ...
    # ... except for ties: a subject placed before its tied peers must use the peers' sum too,
    # i.e. the value at the LAST position of its tie group (the full risk set of that time).
    _, counts = torch.unique_consecutive(time, return_counts=True)
    last = torch.cumsum(counts, dim=0) - 1
    log_risk = log_cum[torch.repeat_interleave(last, counts)]
    # no host sync: without events the sum is 0 and the clamp avoids 0 / 0
    return ((log_risk - eta) * event).sum() / event.sum().clamp_min(1.0)


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
