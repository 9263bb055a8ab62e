"""Run a module over batches for its outputs, on the configured device and precision.

The inference pass outside training (frozen-encoder embeddings, ...)::

    outputs = run_module(encoder, batches, device=cfg.engine.device, precision=cfg.engine.precision)
    emb = torch.cat(outputs).numpy()

:meth:`medmm.engine.Trainer.evaluate` stays the loop for a task's metrics (it gathers across
ranks and pools per unit); this one is for a plain module and a plain iterable of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from medmm.engine.device import autocast, move_to, no_grad_eval, resolve_precision, select_device

__all__ = ["run_module"]


def _home(module: nn.Module) -> torch.device | None:
    """The device of the module's first parameter (or buffer); ``None`` for a stateless module."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def run_module(module: nn.Module, batches: Iterable[Any], *, device: str | torch.device = "auto",
               precision: str = "auto", forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
               ) -> list[torch.Tensor]:
    """Each batch's output as a float32 CPU tensor, in batch order.

    ``device`` is an ``engine.device`` name (``auto``, ``cpu``, ``cuda:1``, ...) or a
    :class:`torch.device`; ``precision`` an ``engine.precision`` value, resolved for that device.
    Each batch (tensors inside dicts / lists / tuples) is moved to the device and passed to
    ``forward(module, batch)`` (default ``module(batch)``) in eval mode, under
    :func:`torch.inference_mode` and autocast. The module is returned to its previous device
    and train / eval mode afterwards, also when a batch fails.
    """
    dev = device if isinstance(device, torch.device) else select_device(device)
    prec = resolve_precision(precision, dev)
    call = forward or (lambda m, b: m(b))
    home = _home(module)
    outputs: list[torch.Tensor] = []
    module.to(dev)
    try:
        with no_grad_eval(module):
            for batch in batches:
                with autocast(dev, prec):
                    out = call(module, move_to(batch, dev))
                outputs.append(out.float().cpu())
    finally:
        if home is not None:
            module.to(home)
    return outputs
