"""Device and numeric precision: cuda > mps > cpu, and mixed precision only where it pays."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from medmm.errors import ConfigError

log = logging.getLogger(__name__)


def select_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` picks cuda (this process's local rank), then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"engine.device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device=cuda but no CUDA GPU is available; use engine.device=auto or cpu")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("engine.device=mps but MPS is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 elsewhere.

    CPUs without native bf16 run it orders of magnitude slower than fp32, so ``auto`` never
    picks reduced precision on a CPU; an explicit ``bf16`` there is honoured with a warning.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("engine.precision=fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 on the CPU can be far slower than fp32 on CPUs without native bf16")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def no_grad_eval(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode without gradients; restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def move_to(batch: object, device: torch.device) -> object:
    """Move tensors inside nested dicts / lists / tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
