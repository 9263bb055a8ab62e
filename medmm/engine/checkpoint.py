"""Atomic checkpoints: weights as safetensors, trainer state loadable with ``weights_only``.

A checkpoint is a directory::

    model.safetensors     the model's state dict
    trainer.pt            optimizer / scheduler / scaler / RNG tensors (torch.load weights_only=True)
    state.json            progress counters, format marker and SHA-256 of both files

It is written into a temporary sibling directory, fsynced, then swapped in by rename, so a crash
at any point leaves the previous good checkpoint readable. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medmm.errors import CheckpointError

FORMAT = "medmm-checkpoint/1"
WEIGHTS, TRAINER, STATE = "model.safetensors", "trainer.pt", "state.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def excluded_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes a model keeps out of its checkpoints (``checkpoint_exclude``).

    For weights that never change during training and are stored once elsewhere, e.g. frozen
    pretrained encoders saved with the run's artifacts.
    """
    module = getattr(model, "module", model)
    return tuple(getattr(module, "checkpoint_exclude", ()) or ())


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, with shared storage broken (safetensors refuses aliases)."""
    module = getattr(model, "module", model)  # unwrap DDP
    skip = excluded_prefixes(module)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()
            if not (skip and k.startswith(skip))}


def save_checkpoint(directory: Path, model: torch.nn.Module, state: dict[str, Any],
                    trainer: dict[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint to ``directory`` (replacing a previous one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(model_state(model), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        files = [WEIGHTS]
        if trainer is not None:
            torch.save(trainer, tmp / TRAINER)
            files.append(TRAINER)
        meta = {"format": FORMAT, **state, "files": {name: _sha256(tmp / name) for name in files}}
        (tmp / STATE).write_text(json.dumps(meta, indent=1, allow_nan=True))
        for name in [*files, STATE]:
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def clean_orphans(parent: Path) -> list[Path]:
    """Remove temporary ``.NAME-*`` checkpoint dirs a killed writer left behind (none is live:
    only the run's own, single writer creates them). Returns what was removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for p in parent.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name.startswith(".") and "-" in p.name:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def find_checkpoint(directory: Path) -> Path:
    """``directory`` or, if a crash interrupted the swap, its ``.old`` sibling."""
    directory = Path(directory)
    if (directory / STATE).exists():
        return directory
    old = directory.with_name(directory.name + ".old")
    if (old / STATE).exists():
        return old
    raise CheckpointError(f"no checkpoint in {directory}")


def read_state(directory: Path, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's ``state.json``, after checking it is ours and its files are intact."""
    directory = find_checkpoint(directory)
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory} is not a readable medmm checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not a medmm checkpoint (format marker missing)")
    if verify:
        for name, digest in state.get("files", {}).items():
            path = directory / name
            if not path.exists() or _sha256(path) != digest:
                raise CheckpointError(f"checkpoint file {path} is truncated or modified; refusing to load it")
    state["path"] = str(directory)
    return state


def load_weights(directory: Path, model: torch.nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load verified safetensors weights into ``model``; returns the checkpoint state."""
    state = read_state(directory)
    path = Path(state["path"]) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None
    module = getattr(model, "module", model)
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    skip = excluded_prefixes(module)
    missing = [k for k in missing if not (skip and k.startswith(skip))]
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"weights in {path} do not fit the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return state


def load_module_weights(module: torch.nn.Module, path: Path, *, only: list[str] | None = None) -> None:
    """Safetensors weights saved beside a run's artifacts (e.g. a frozen encoder, stored once) into
    ``module``; a key the file lacks counts only under the top-level names in ``only`` (all if None)."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any read failure is the same user-facing error
        raise CheckpointError(f"cannot read the weights file {path.name}: {type(exc).__name__}") from None
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if only is not None:
        missing = [k for k in missing if k.split(".")[0] in only]
    if missing or unexpected:
        raise CheckpointError(f"{path.name} does not fit the model: missing {list(missing)[:3]}, "
                              f"unexpected {list(unexpected)[:3]}")


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The optimizer / scheduler / RNG state, loaded with ``weights_only=True``."""
    state = read_state(directory)
    path = Path(state["path"]) / TRAINER
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read trainer state {path}: {exc}") from None
