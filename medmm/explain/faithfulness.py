"""Are the explanations faithful? Two checks run on every explanation set.

* **Deletion** (top-k vs random k): replace the ``k`` highest-attributed items of an example by
  the baseline and record the drop in the predicted class's probability (regression /
  survival: the absolute change of the output, items ranked by |attribution|); the control
  deletes ``k`` random items of the same example. Faithful attributions drop more.
* **Model randomisation** (Adebayo et al., 2018): the same method on a copy of the model with
  re-initialised weights; the Spearman rank correlation of the two item rankings per example.
  A high correlation means the method shows the input, not what the model learnt.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medmm.explain.core import REGRESSION, Attribution, Scorer, delete, union
from medmm.explain.spec import InputSpec


def k_for(n_items: int) -> int:
    """Items deleted: 10% of them (at least one)."""
    return max(1, math.ceil(0.1 * n_items)) if n_items >= 10 else 1


@torch.no_grad()
def deletion(scorer: Scorer, spec: InputSpec, batch: Any, attrs: Sequence[Attribution | None],
             target: torch.Tensor, rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """Per example with at least two items: (drop with the top-k deleted, drop with k random)."""
    x = spec.get(batch)
    full = scorer.probs_with(spec, batch, x, target)
    top, rand, rows = [], [], []
    signed = scorer.problem not in REGRESSION
    for i, a in enumerate(attrs):
        if a is None or len(a.items) < 2:
            top.append(None)
            rand.append(None)
            continue
        k = k_for(len(a.items))
        order = np.argsort(-(a.scores if signed else np.abs(a.scores)), kind="stable")
        top.append(union(a.items, order[:k]))
        rand.append(union(a.items, rng.choice(len(a.items), size=k, replace=False)))
        rows.append(i)
    if not rows:
        return [], []
    p_top = scorer.probs_with(spec, batch, delete(spec, x, top), target)
    p_rand = scorer.probs_with(spec, batch, delete(spec, x, rand), target)
    if signed:
        return [float(full[i] - p_top[i]) for i in rows], [float(full[i] - p_rand[i]) for i in rows]
    return [float(abs(full[i] - p_top[i])) for i in rows], [float(abs(full[i] - p_rand[i])) for i in rows]


def randomized_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A deep copy with every parameterised layer re-initialised (its own ``reset_parameters``)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and any(True for _ in module.parameters(recurse=False)):
                reset()
        for name, p in clone.named_parameters():  # parameters owned by modules without a reset (ViT tokens)
            owner = clone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else clone
            if not callable(getattr(owner, "reset_parameters", None)):
                with torch.no_grad():
                    p.normal_(0, 0.02)
    clone.eval()
    return clone


def same_layer(model: torch.nn.Module, clone: torch.nn.Module, layer: Any) -> Any:
    """``layer`` of ``model`` -> the module at the same path in ``clone``."""
    if layer is None:
        return None
    for name, module in model.named_modules():
        if module is layer:
            return clone.get_submodule(name)
    raise ValueError("the explain layer is not a submodule of the model")


def rank_correlation(a: Sequence[Attribution | None], b: Sequence[Attribution | None]) -> list[float]:
    """Spearman correlation of item scores, per example with at least three items.

    A flat map from the randomised model (e.g. Grad-CAM's ReLU leaving nothing) ranks nothing:
    it counts as 0, no relation; examples whose trained-model map is flat are left out.
    """
    from scipy.stats import spearmanr

    out = []
    for x, y in zip(a, b):
        if x is None or y is None or len(x.scores) < 3 or np.ptp(x.scores) == 0:
            continue
        out.append(0.0 if np.ptp(y.scores) == 0 else float(spearmanr(x.scores, y.scores).statistic))
    return out
