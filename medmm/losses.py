"""Losses that torch does not ship. For regression use ``torch.nn.functional.mse_loss`` or
``huber_loss``; for binary risk ``binary_cross_entropy_with_logits``."""

from __future__ import annotations

import torch

__all__ = ["cox_ph_loss"]


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
