"""Learning-rate schedules with linear warmup, and AdamW parameter groups."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from medmm.errors import ConfigError


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``s``."""
    if schedule not in {"constant", "linear", "cosine"}:
        raise ConfigError(f"unknown engine.schedule {schedule!r} (constant, linear, cosine)")
    total = max(total_steps, 1)

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def adamw_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                 group: str = "all") -> list[dict[str, Any]]:
    """Two AdamW groups: with weight decay, and without it (biases, norms, scalars)."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{group}/decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group}/no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    task_groups: list[tuple[str, list[Any], float]] | None) -> torch.optim.Optimizer:
    """AdamW (the fused kernel where parameters allow); ``task_groups`` gives per-group lr multipliers
    (e.g. encoder 0.1, head 1)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[dict[str, Any]] = []
    if task_groups:
        seen: set[int] = set()
        for gname, params, mult in task_groups:
            named = [(names.get(id(p), ""), p) for p in params if id(p) not in seen]
            seen.update(id(p) for _, p in named)
            groups += adamw_groups(named, lr * mult, weight_decay, gname)
        rest = [(n, p) for n, p in model.named_parameters() if id(p) not in seen]
        groups += adamw_groups(rest, lr, weight_decay, "rest")
    else:
        groups = adamw_groups(model.named_parameters(), lr, weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    # the fused kernel: MiniLM-L6 (22.7M parameters), one CPU thread: 20 ms per step vs 184 ms
    # for the default per-parameter loop (README: text training speed); same update rule
    fused = {p.device.type for p in params} <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))
