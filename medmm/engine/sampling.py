"""Deterministic batch plans: the batches of epoch ``e`` are a pure function of (seed, e).

Because a plan is computed, not consumed from a stateful iterator, resuming mid-epoch just
slices the plan at the saved batch position: no batch is replayed or re-read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medmm.batching import length_order
from medmm.errors import ConfigError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from (seed, epoch) only."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1))
    return g


def balanced_class_weights(labels: np.ndarray) -> np.ndarray:
    """Per class index ``0..max``: scikit-learn's ``class_weight='balanced'`` (``n / (k * count_c)``
    over the k classes present), 0 for an index with no example."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    weights = np.zeros(labels.max() + 1)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def plan_epoch(n: int, global_batch: int, *, seed: int, epoch: int, mode: str = "shuffle",
               labels: np.ndarray | None = None, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Global batches (lists of example indices) for one training epoch.

    ``shuffle``: a random permutation; ``weighted``: class-balanced sampling with replacement;
    ``bucket``: batches of similar length (text), stratified by ``labels`` when they are single
    labels, order shuffled. The last short batch is kept.
    """
    if n == 0:
        return []
    g = epoch_generator(seed, epoch)
    if mode == "shuffle":
        order = torch.randperm(n, generator=g).tolist()
    elif mode == "weighted":
        if labels is None or np.asarray(labels).ndim != 1:
            raise ConfigError("engine.sampler=weighted needs single-label classification targets")
        w = balanced_class_weights(labels)[np.asarray(labels).astype(int)]
        order = torch.multinomial(torch.as_tensor(w, dtype=torch.float64), n, replacement=True, generator=g).tolist()
    elif mode == "bucket":
        if lengths is None:
            raise ConfigError("engine.sampler=bucket needs a task that reports example lengths (text)")
        return _bucket_batches(np.asarray(lengths), global_batch, g, labels)
    else:
        raise ConfigError(f"unknown engine.sampler {mode!r} (shuffle, weighted, bucket)")
    return [order[i : i + global_batch] for i in range(0, n, global_batch)]


def _bucket_batches(lengths: np.ndarray, batch: int, g: torch.Generator, labels: np.ndarray | None = None,
                    pool: int = 50) -> list[list[int]]:
    """Order random pools of ``pool`` batches by length, cut batches, shuffle the batch order.

    With single-label ``labels`` the order inside a pool is by length quantile *within each
    class*, so every batch keeps the pool's class mix: in clinical text length tracks the label
    (abnormal reports are longer), and sorting by length alone makes batches nearly single-class.
    """
    order = torch.randperm(len(lengths), generator=g).numpy()
    labels = None if labels is None else np.asarray(labels)
    stratify = labels is not None and labels.ndim == 1 and len(labels) == len(lengths)
    batches: list[list[int]] = []
    size = batch * pool
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        if stratify:
            chunk = chunk[np.argsort(_class_quantiles(labels[chunk]), kind="stable")]
        batches.extend(chunk[i : i + batch].tolist() for i in range(0, len(chunk), batch))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def _class_quantiles(labels: np.ndarray) -> np.ndarray:
    """Each position's rank within its class, as a fraction of the class size (mid-rank)."""
    q = np.empty(len(labels))
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        q[where] = (np.arange(len(where)) + 0.5) / len(where)
    return q


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of a global batch (contiguous slices, sizes differ by at most one)."""
    if world_size == 1:
        return batch
    bounds = np.linspace(0, len(batch), world_size + 1).round().astype(int)
    return batch[bounds[rank] : bounds[rank + 1]]


def eval_batches(n: int, batch: int, rank: int = 0, world_size: int = 1,
                 lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Sequential evaluation batches of this rank's strided share (no padding duplicates); with
    per-example ``lengths``, in length order inside fixed windows (:func:`medmm.batching.length_order`)."""
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} examples")
    order = range(n) if lengths is None else length_order(lengths, batch).tolist()
    mine = list(order[rank::world_size])
    return [mine[i : i + batch] for i in range(0, len(mine), batch)]
