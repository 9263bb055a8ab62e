"""The pieces every explainer shares: the model as a function of one input, items, deletion.

An *item* is what an explanation ranks: a word, a grid cell of an image, a source column, a
modality. Each item of an example is a set of flat positions in that example's input tensor,
so one deletion routine (replace the positions by the input's baseline) serves occlusion, the
deletion test and the fallback alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medmm.explain.spec import InputSpec

REGRESSION = ("regression", "survival")


@dataclass
class Items:
    """The items of one example: names and flat positions in the example's input."""

    names: list[str]
    index: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Attribution:
    """Item scores of one example for one input (higher = pushes towards the predicted class)."""

    items: Items
    scores: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)  # delta, cam map, token scores...


# --------------------------------------------------------------------------- batches


def tile(batch: Any, n: int, k: int) -> Any:
    """Repeat every tensor with ``n`` rows ``k`` times along dim 0 (captum's step-major order)."""
    if k == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.repeat(k, *([1] * (batch.ndim - 1))) if batch.ndim and batch.shape[0] == n else batch
    if isinstance(batch, dict):
        return {key: tile(v, n, k) for key, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(tile(v, n, k) for v in batch)
    return batch


def take(batch: Any, n: int, rows: torch.Tensor) -> Any:
    """The given rows of every tensor with ``n`` rows."""
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.ndim and batch.shape[0] == n else batch
    if isinstance(batch, dict):
        return {key: take(v, n, rows) for key, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take(v, n, rows) for v in batch)
    return batch


class Scorer:
    """The task's model as functions of one batch: raw output, attribution target, probability.

    ``target`` per example is the predicted class (classification) or ``0`` (regression /
    survival, where the output itself is explained). The *attributed* value is the predicted
    class's logit (binary: the logit signed towards the predicted class); the deletion test
    reads the predicted class's probability (regression / survival: the output).
    """

    def __init__(self, task: Any, model: torch.nn.Module) -> None:
        self.task, self.model, self.problem = task, model, task.problem

    def output(self, batch: Any) -> torch.Tensor:
        out = self.task.step(self.model, batch)["output"].float()
        if out.ndim == 2 and out.shape[1] == 1 and self.problem in ("binary", *REGRESSION):
            out = out[:, 0]  # one logit / value per example
        return out

    def logit(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.problem in REGRESSION or (self.problem == "binary" and out.ndim == 1):
            z = out.reshape(out.shape[0])
            return z if self.problem in REGRESSION else torch.where(target.bool(), z, -z)
        return out.gather(1, target.view(-1, 1).long()).squeeze(1)

    def prob(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.problem in REGRESSION:
            return out.reshape(out.shape[0])
        if self.problem == "binary" and out.ndim == 1:
            p = torch.sigmoid(out)
            return torch.where(target.bool(), p, 1 - p)
        if self.problem == "multilabel":
            return torch.sigmoid(out).gather(1, target.view(-1, 1).long()).squeeze(1)
        return out.softmax(-1).gather(1, target.view(-1, 1).long()).squeeze(1)

    def predicted(self, out: torch.Tensor) -> torch.Tensor:
        """Predicted class per example (0 for regression / survival)."""
        if self.problem in REGRESSION:
            return torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
        if self.problem == "binary" and out.ndim == 1:
            return (out > 0).long()
        return out.argmax(-1)

    def forward_of(self, spec: InputSpec, batch: Any, target: torch.Tensor,
                   kind: str = "logit") -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> [N]`` with ``x`` put into ``batch``; ``x`` may hold ``k`` copies of the batch."""
        n = int(target.shape[0])
        fn = self.logit if kind == "logit" else self.prob

        def forward(x: torch.Tensor) -> torch.Tensor:
            k = max(1, x.shape[0] // n)
            b = spec.put(tile(batch, n, k), x)
            return fn(self.output(b), target.repeat(k))

        return forward

    @torch.no_grad()
    def probs_with(self, spec: InputSpec, batch: Any, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        return self.prob(self.output(spec.put(batch, x)), target).cpu().numpy()


# --------------------------------------------------------------------------- deletion


def baseline_like(spec: InputSpec, x: torch.Tensor) -> torch.Tensor:
    """The "removed" value of every position of ``x`` (see :attr:`InputSpec.baseline`)."""
    if spec.kind == "image" and spec.baseline is None:
        return x.mean(dim=tuple(range(1, x.ndim)), keepdim=True).expand_as(x)
    b = spec.baseline if spec.baseline is not None else 0
    b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    return b.expand_as(x) if b.ndim <= x.ndim - 1 else b


def delete(spec: InputSpec, x: torch.Tensor, chosen: Sequence[np.ndarray | None]) -> torch.Tensor:
    """``x`` with, per example, the flat positions ``chosen[i]`` replaced by the baseline."""
    mask = torch.zeros(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)), dtype=torch.bool)
    for i, idx in enumerate(chosen):
        if idx is not None and len(idx):
            mask[i, torch.from_numpy(np.asarray(idx, dtype=np.int64))] = True
    mask = mask.view(x.shape).to(x.device)
    return torch.where(mask, baseline_like(spec, x), x)


def union(items: Items, which: Sequence[int]) -> np.ndarray:
    if not len(which):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([items.index[j] for j in which])


@torch.no_grad()
def ablate(scorer: Scorer, spec: InputSpec, batch: Any, items: Sequence[Items | None],
           target: torch.Tensor) -> list[np.ndarray | None]:
    """Occlusion over items: the drop in the predicted class's probability when each item is
    replaced by the baseline; one forward per item position, batched over examples."""
    x = spec.get(batch)
    full = scorer.probs_with(spec, batch, x, target)
    most = max((len(it) for it in items if it is not None), default=0)
    scores = [None if it is None else np.zeros(len(it)) for it in items]
    for j in range(most):
        chosen = [it.index[j] if it is not None and j < len(it) else None for it in items]
        rows = [i for i, c in enumerate(chosen) if c is not None]
        if not rows:
            continue
        p = scorer.probs_with(spec, batch, delete(spec, x, chosen), target)
        for i in rows:
            scores[i][j] = full[i] - p[i]  # type: ignore[index]
    return scores


def grid_items(shape: Sequence[int], grid: tuple[int, int]) -> Items:
    """Items of a ``[C, H, W]`` input: the cells of a ``grid`` (rows x cols), every channel."""
    c, h, w = (1, *shape) if len(shape) == 2 else tuple(shape[-3:])
    gh, gw = grid
    pos = np.arange(c * h * w).reshape(c, h, w)
    rows = np.linspace(0, h, gh + 1).round().astype(int)
    cols = np.linspace(0, w, gw + 1).round().astype(int)
    names, index = [], []
    for r in range(gh):
        for q in range(gw):
            names.append(f"cell r{r}c{q}")
            index.append(pos[:, rows[r]:rows[r + 1], cols[q]:cols[q + 1]].ravel())
    return Items(names, index)
