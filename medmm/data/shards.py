"""``medmm predict --shard i/n``: one contiguous block of the input per process (#30).

Shard ``i`` of ``n`` (0-based) predicts a contiguous block of the units a single process would
predict, in the same order, so the ``n`` prediction files concatenated in shard order (one header)
equal the single-process file. A cluster scheduler (Slurm array, Kubernetes indexed job, Ray)
starts the ``n`` processes; nothing here talks to the others.

- a table: every shard reads the table (rows keep their ids: the row number when there is no id
  column) and predicts only its block of units;
- a folder: the sorted file list is cut into blocks, only between files of different folders
  (the files of one series / study folder stay in one shard), and the shard reads only its files,
  through a temporary folder of links with the same relative paths (the same keys in outputs).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import ConfigError

__all__ = ["FolderShard", "ShardDataset", "block", "folder_files", "keep_units", "parse_shard", "shard_split",
           "shard_windows"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; a :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def block(count: int, shard: tuple[int, int]) -> tuple[int, int]:
    """``[start, stop)`` of shard ``i`` of ``n`` over ``count`` items: sizes differ by at most one."""
    i, n = shard
    return count * i // n, count * (i + 1) // n


class ShardDataset:
    """The examples at ``positions`` of ``base``; batches keep the base's example index, so units
    and pooling are those of the whole split."""

    def __init__(self, base: Any, positions: np.ndarray) -> None:
        self.base, self.positions = base, np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Any:
        return self.base[int(self.positions[i])]

    def __getitems__(self, idx: list[int]) -> Any:
        mapped = [int(self.positions[i]) for i in idx]
        many = getattr(self.base, "__getitems__", None)
        return many(mapped) if many is not None else [self.base[i] for i in mapped]


def shard_split(split: Any, shard: tuple[int, int]) -> Any:
    """``split`` (a :class:`medmm.task.Split`) restricted to shard ``i``'s block of units (first-seen
    order); the skipped-inputs report goes with shard 0 only."""
    order: dict[str, int] = {}
    for u in split.units:
        order.setdefault(u, len(order))
    start, stop = block(len(order), shard)
    rank = np.fromiter((order[u] for u in split.units), dtype=np.int64, count=len(split.units))
    positions = np.flatnonzero((rank >= start) & (rank < stop))
    lengths = None if split.lengths is None else np.asarray(split.lengths)[positions]
    return replace(split, dataset=ShardDataset(split.dataset, positions), lengths=lengths,
                   skipped=list(split.skipped) if shard[0] == 0 else [])


def shard_windows(split: Any, shard: tuple[int, int], window: int) -> tuple[Any, list[str]]:
    """Shard ``i``'s block of a split batched by length inside windows of ``window`` examples
    (:mod:`medmm.batching`): the whole windows its block touches, so that every batch is the one
    pass's batch (the same bits), and the block's units, to keep (:func:`keep_units`) after
    prediction. The extra work is under two windows per shard."""
    part = shard_split(split, shard)
    positions = part.dataset.positions
    keep = list(dict.fromkeys(split.units[int(p)] for p in positions))  # units stay the whole split's
    if not len(positions):
        return part, keep
    lo = int(positions.min()) // window * window
    hi = min(len(split.units), -(-(int(positions.max()) + 1) // window) * window)
    whole = np.arange(lo, hi, dtype=np.int64)
    return replace(part, dataset=ShardDataset(split.dataset, whole),
                   lengths=np.asarray(split.lengths)[whole]), keep


def keep_units(ev: Any, units: Sequence[str]) -> Any:
    """``ev`` (pooled predictions: ``units``, ``scores``, ``targets``) reduced to ``units``, in its order."""
    wanted = set(units)
    rows = [k for k, u in enumerate(ev.units) if u in wanted]
    return replace(ev, units=[ev.units[k] for k in rows], scores=ev.scores[rows],
                   targets=None if ev.targets is None else ev.targets[rows])


def _cut_points(files: Sequence[str]) -> list[int]:
    """Positions where the folder changes: the only places a folder's files may be cut."""
    parents = [os.path.dirname(f) for f in files]
    return [k for k in range(1, len(files)) if parents[k] != parents[k - 1]]


def folder_files(files: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Shard ``i``'s contiguous block of the sorted ``files``, cut only between folders (balanced by
    file count: each block ends at the cut point nearest its even share)."""
    cuts = [0, *_cut_points(files), len(files)]

    def edge(j: int) -> int:
        target = len(files) * j // shard[1]
        return min(cuts, key=lambda c: (abs(c - target), c))

    return list(files[edge(shard[0]): edge(shard[0] + 1)])


class FolderShard:
    """A temporary folder of links to shard ``i``'s files of ``root`` under their relative paths
    (``.path``); removed by :meth:`close` or when dropped, as a temporary predict cache is."""

    def __init__(self, root: Path, shard: tuple[int, int]) -> None:
        from medmm.data.dicom.scan import list_files

        root = Path(root).resolve()
        self._tmp = Path(tempfile.mkdtemp(prefix="medmm-shard-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self.path = self._tmp / root.name
        self.path.mkdir()
        self.files = folder_files(list_files(root), shard)
        for rel in self.files:
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(root / rel, self.path / rel)

    def close(self) -> None:
        self._finalizer()
