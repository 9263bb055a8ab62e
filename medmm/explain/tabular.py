"""Tables: per-row attributions in the source columns, and global importance.

Integrated Gradients (or Shapley value sampling, ``--method shap``) runs on the model's encoded
columns against the task's documented baseline, then one-hot / missing-indicator columns are
summed back to the column they came from. Permutation importance shuffles one source column
(all of its encoded columns together) across the explained rows and measures how far the
model's output moves; 95% CIs come from a bootstrap over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medmm.explain.core import Attribution, Items, Scorer
from medmm.explain.spec import InputSpec
from medmm.metrics import interval


def feature_items(spec: InputSpec, batch: Any) -> list[Items | None]:
    x = spec.get(batch)
    present = None if spec.present is None else spec.present(batch).cpu().numpy()
    if spec.groups:
        names = list(spec.groups)
        index = [np.asarray(spec.groups[n], dtype=np.int64) for n in names]
    else:
        d = int(x.shape[1])
        names = list(spec.feature_names or [f"feature {j}" for j in range(d)])
        index = [np.array([j]) for j in range(d)]
    items = Items(names, index)
    return [None if present is not None and not present[i] else items for i in range(x.shape[0])]


def _baseline(spec: InputSpec, x: torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(spec.baseline if spec.baseline is not None else 0.0, dtype=x.dtype, device=x.device)
    return b.expand_as(x).contiguous()


def integrated_gradients(scorer: Scorer, spec: InputSpec, batch: Any, items: Sequence[Items | None],
                         target: torch.Tensor, *, steps: int, internal_batch_size: int) -> list[Attribution | None]:
    from captum.attr import IntegratedGradients

    x = spec.get(batch).float()
    attr, delta = IntegratedGradients(scorer.forward_of(spec, batch, target)).attribute(
        x, baselines=_baseline(spec, x), n_steps=steps, return_convergence_delta=True,
        internal_batch_size=max(x.shape[0], internal_batch_size))
    return _grouped(attr.detach().cpu().numpy(), items, delta.detach().abs().cpu().numpy())


def shapley(scorer: Scorer, spec: InputSpec, batch: Any, items: Sequence[Items | None],
            target: torch.Tensor, *, samples: int = 25) -> list[Attribution | None]:
    """Shapley values by permutation sampling (captum), one player per source column."""
    from captum.attr import ShapleyValueSampling

    x = spec.get(batch).float()
    first = next((it for it in items if it is not None), None)
    if first is None:
        return [None] * len(items)
    mask = torch.zeros(x.shape[1], dtype=torch.long)
    for g, idx in enumerate(first.index):
        mask[torch.from_numpy(idx)] = g
    attr = ShapleyValueSampling(scorer.forward_of(spec, batch, target)).attribute(
        x, baselines=_baseline(spec, x), feature_mask=mask.unsqueeze(0).to(x.device), n_samples=samples,
        perturbations_per_eval=8)
    # each column of a group carries the group's value: take one column per group
    values = attr.detach().cpu().numpy()
    return [None if it is None else Attribution(it, np.array([values[i, idx[0]] for idx in it.index]))
            for i, it in enumerate(items)]


def _grouped(per_column: np.ndarray, items: Sequence[Items | None], delta: np.ndarray | None) -> list[Attribution | None]:
    out: list[Attribution | None] = []
    for i, it in enumerate(items):
        if it is None:
            out.append(None)
            continue
        extra = {} if delta is None else {"delta": float(delta[i])}
        out.append(Attribution(it, np.array([per_column[i, idx].sum() for idx in it.index]), extra))
    return out


@torch.no_grad()
def permutation_importance(scorer: Scorer, spec: InputSpec, batch: Any, items: Items, target: torch.Tensor, *,
                           repeats: int = 5, n_boot: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Per source column: mean |change of the explained output| when the column is shuffled
    across rows (averaged over ``repeats`` shuffles), with a bootstrap 95% CI over rows."""
    rng = np.random.default_rng(seed)
    x = spec.get(batch)
    n = x.shape[0]
    full = scorer.prob(scorer.output(batch), target).cpu().numpy()
    rows = []
    for name, idx in zip(items.names, items.index):
        cols = torch.from_numpy(idx).to(x.device)
        change = np.zeros(n)
        for _ in range(repeats):
            perm = torch.from_numpy(rng.permutation(n)).to(x.device)
            xp = x.clone()
            xp[:, cols] = x[perm][:, cols]
            change += np.abs(scorer.probs_with(spec, batch, xp, target) - full)
        change /= repeats
        boots = [change[rng.integers(0, n, n)].mean() for _ in range(n_boot)] if n > 1 else [change.mean()]
        low, high = interval(boots, float(change.mean()))  # holds the estimate
        rows.append({"item": name, "importance": float(change.mean()), "ci_low": low, "ci_high": high})
    return sorted(rows, key=lambda r: -r["importance"])


def feature_input(name: str, preprocessor: Any, *, get: Any, put: Any, present: Any = None) -> InputSpec:
    """The :class:`InputSpec` of a :class:`~medmm.data.tabular.preprocess.Preprocessor`'s output columns.

    Groups: a numeric column with its missing indicator, a categorical column with its one-hot
    columns. Baseline: the training-set reference patient, i.e. every numeric column at its
    training mean (0 after scaling) and every categorical column at its most frequent training value.
    """
    p = preprocessor
    names = p.feature_names
    groups: dict[str, list[int]] = {c: [j] for j, c in enumerate(p.numeric)}
    for k, c in enumerate(p.indicators):
        groups[c].append(len(p.numeric) + k)
    baseline = np.zeros(len(names), dtype=np.float32)
    start = len(p.means)
    for col, cats, mode in zip(p.categorical, p.categories, p.modes):
        groups[col] = list(range(start, start + len(cats)))
        baseline[start + cats.index(mode)] = 1.0
        start += len(cats)
    return InputSpec(name=name, kind="features", get=get, put=put, baseline=torch.from_numpy(baseline),
                     baseline_doc="training reference: numeric columns at their training mean, categorical "
                                  "columns at their most frequent training value",
                     feature_names=names, groups=groups, present=present, describe=_describer(p, list(groups)))


def _describer(p: Any, items: list[str]) -> Any:
    """``row [D] -> [value per source column]``: the preprocessor undone (scaling, one-hot; an imputed
    value shows as ``missing``), in the order of ``items``."""
    n_num = len(p.numeric)

    def describe(row: Any) -> list[str]:
        x = np.asarray(row, dtype=np.float64)
        raw = x[: len(p.means)] * np.asarray(p.scales) + np.asarray(p.means)
        out: dict[str, str] = {c: f"{raw[j]:.4g}" for j, c in enumerate(p.numeric)}
        for k, c in enumerate(p.indicators):
            if raw[n_num + k] > 0.5:
                out[c] = "missing"
        start = len(p.means)
        for col, cats in zip(p.categorical, p.categories):
            out[col] = str(cats[int(np.argmax(x[start:start + len(cats)]))])
            start += len(cats)
        return [out.get(c, "") for c in items]

    return describe
