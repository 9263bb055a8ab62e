"""Device and numeric precision: cuda > mps > cpu, and mixed precision only where it pays."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

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
    picks reduced precision on a CPU here; with ``engine.cpu_bf16=auto`` the trainer may switch to
    bf16 after detection (:func:`cpu_native_bf16`) and a probe step (:func:`probe_bf16`). An
    explicit ``bf16`` on a CPU is honoured with a warning.
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


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic (x86)
PROBE_GAIN = 0.9  # bf16 is kept only when a probe step takes at most this share of the fp32 one
PROBE_REPEATS = 3  # timed probe steps per precision (interleaved; the median counts)


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``'s flags).

    Elsewhere (no flags, another OS, ARM) ``False``: bf16 there is emulated, orders of magnitude slower.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(f in flags for f in BF16_FLAGS)


def probe_bf16(step: Callable[[str], None], repeats: int = PROBE_REPEATS,
               clock: Callable[[], float] | None = None) -> tuple[bool, float, float]:
    """Time ``step(precision)`` (one forward + backward) in fp32 and in bf16 autocast.

    One warm-up each, then ``repeats`` rounds, interleaved (fp32, bf16 / bf16, fp32 / ...) so both see
    the same drift; each precision's median counts. ``clock`` defaults to ``time.process_time``: the
    process's CPU seconds (all its threads), which time spent waiting for a core on a busy machine does
    not inflate. ``(bf16 median <= PROBE_GAIN x fp32 median, fp32 seconds, bf16 seconds)``.
    """
    import statistics
    import time

    tick = clock or time.process_time
    step("fp32")  # warm-up: kernels chosen, caches filled
    step("bf16")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(repeats):
        for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            t0 = tick()
            step(precision)
            times[precision].append(tick() - t0)
    t32, t16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return t16 <= PROBE_GAIN * t32, t32, t16


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
