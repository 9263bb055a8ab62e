"""Decoded-pixel cache: one memory-mapped ``(N, C, H, W)`` array per dataset and config.

A cache entry is keyed by a SHA-256 over the cache format version, the
:class:`~medmm.data.dicom.pixels.PixelConfig`, the storage dtype and, for every item in
order, its relative path, frame, file size and ``mtime_ns``. File *contents* are not
hashed (that would read every byte on every run); any tool that rewrites a file changes
its mtime, so an edited, replaced or touched file invalidates the entry, as does any
change to the pixel config. Moving the folder keeps the entry valid (paths are relative).

Layout under ``cache_dir`` (which gets a ``CACHEDIR.TAG``, so backups and
:func:`~medmm.data.dicom.scan.scan_folder` skip it)::

    <key[:24]>/pixels.npy   uint8 (or float16) array, opened with mmap_mode="r"
    <key[:24]>/meta.json    config, item keys, per-file failures, constant images

Entries are built in a temporary directory and renamed into place, so a crash never
leaves a half-written entry that a later run would trust. Decoding runs in a process
pool; a file whose decoder fails becomes a :class:`~medmm.data.dicom.scan.Skipped`, and
one whose decoder crashes the worker process is isolated and skipped the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmm.data.dicom import pixels
from medmm.data.dicom.pixels import PixelConfig
from medmm.data.dicom.scan import (
    CACHEDIR_TAG,
    DicomRecord,
    ImageItem,
    Skipped,
    image_items,
    process_pool,
    short_reason,
)
from medmm.errors import DataError

__all__ = ["CACHE_VERSION", "DTYPES", "PixelCache", "cache_key"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DTYPES = ("uint8", "float16")
_TAG_TEXT = "Signature: 8a477f597d28d172789f06886806bc55\n# Cache directory created by medmm.\n"
_CRASHED = "decoder crashed the worker process"

Job = tuple[int, str, "int | None", int]  # row, relative path, frame, number of frames
Outcome = tuple[int, "str | None", bool]  # row, failure reason, image is constant


@dataclass
class PixelCache:
    """A built (or reused) cache entry; ``array[index[item.key]]`` is one image.

    ``items[row]`` is the :class:`ImageItem` behind each row (records expanded per
    ``cfg.frames``), for mapping rows back to labels and patient / series groups.
    """

    path: Path
    cfg: PixelConfig
    dtype: str
    keys: list[str]
    failed: list[Skipped] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)
    hit: bool = False
    items: list[ImageItem] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        failed = {s.path for s in self.failed}
        self.index: dict[str, int] = {k: i for i, k in enumerate(self.keys) if k not in failed}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """Read-only memory map ``(N, C, H, W)``; rows of failed items are zeros."""
        if self._array is None:
            self._array = np.load(self.path / "pixels.npy", mmap_mode="r")
        return self._array

    def release(self) -> None:
        """Let go of the memory map (the next :attr:`array` maps the file again): the pages read so far
        leave this process's resident memory, where a long pass over the map would keep every one of them."""
        self._array = None

    @property
    def scale(self) -> float:
        """Multiply stored values by this to get ``[0, 1]`` floats."""
        return 1.0 / 255.0 if self.dtype == "uint8" else 1.0

    def image(self, key: str) -> np.ndarray:
        """One image as ``float32 [C, H, W]`` in ``[0, 1]``."""
        return np.asarray(self.array[self.index[key]], dtype=np.float32) * np.float32(self.scale)

    def rekeyed(self, items: list[ImageItem]) -> PixelCache:
        """This entry with the keys of ``items`` (the same files in the same order: the cache key
        covers them), so that public path tokens made under another process's key still index it."""
        keys = [i.key for i in items]
        remap = dict(zip(self.keys, keys))
        return PixelCache(path=self.path, cfg=self.cfg, dtype=self.dtype, keys=keys,
                          failed=[Skipped(remap.get(s.path, s.path), s.reason) for s in self.failed],
                          constant=[remap.get(k, k) for k in self.constant], hit=self.hit, items=items)

    def __getstate__(self) -> dict[str, Any]:  # never pickle the memory map's contents
        return {**self.__dict__, "_array": None}

    @classmethod
    def build(
        cls,
        root: Path,
        items: Iterable[DicomRecord | ImageItem],
        cfg: PixelConfig,
        cache_dir: Path,
        workers: int = 0,
        dtype: str = "uint8",
        progress: Callable[[int, int], None] | None = None,
    ) -> PixelCache:
        """Reuse the entry for these files and config, or decode them into a new one.

        Records are expanded per ``cfg.frames`` (one item per frame for ``"all"``).
        ``workers=0`` decodes in this process; ``progress(done, total)`` is called as
        files finish.
        """
        if dtype not in DTYPES:
            raise DataError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        root, cache_dir = Path(root), Path(cache_dir)
        items = _as_items(items, cfg)
        if not items:
            raise DataError("no DICOM images to decode")
        key = cache_key(root, items, cfg, dtype)
        entry = cache_dir / key[:24]
        cached = cls._open(entry, key, cfg, dtype)
        if cached is not None:
            log.info("pixel cache hit: %d images in %s", len(cached.keys), entry)
            cached = cached.rekeyed(items)
            _warn_constant(cached.constant)
            return cached
        _prepare_cache_dir(cache_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=cache_dir))
        try:
            meta = _build_entry(tmp, root, items, cfg, dtype, workers, progress)
            meta["key"] = key
            _write_json(tmp / "meta.json", meta)
            try:
                os.replace(tmp, entry)
            except OSError:  # another process finished the same entry first
                if cls._open(entry, key, cfg, dtype) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built = cls._open(entry, key, cfg, dtype)
        assert built is not None
        built.hit, built.items = False, items
        _warn_constant(built.constant)
        return built

    @classmethod
    def _open(cls, entry: Path, key: str, cfg: PixelConfig, dtype: str) -> PixelCache | None:
        """The entry if complete and matching, else ``None`` (a broken one is removed)."""
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
                raise ValueError("stale entry")
            cache = cls(
                path=entry,
                cfg=cfg,
                dtype=dtype,
                keys=list(meta["keys"]),
                failed=[Skipped(**s) for s in meta["failed"]],
                constant=list(meta["constant"]),
                hit=True,
            )
            if cache.array.shape != (len(cache.keys), *cfg.shape) or cache.array.dtype != dtype:
                raise ValueError("array shape does not match")
            return cache
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("discarding unreadable pixel cache entry %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
            return None


def _warn_constant(keys: Sequence[str], shown: int = 10) -> None:
    """Name the images that are one flat value after preprocessing (legal, but they carry no signal)."""
    if keys:
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        log.warning("%d image(s) are constant after preprocessing (no signal; check windowing and the files): %s%s",
                    len(keys), ", ".join(keys[:shown]), more)


def cache_key(root: Path, items: Sequence[ImageItem], cfg: PixelConfig, dtype: str) -> str:
    """SHA-256 over version, config, dtype and each item's path, frame, size and mtime."""
    stats: dict[str, tuple[int, int]] = {}
    for item in items:
        if item.record.path not in stats:
            try:
                st = os.stat(root / item.record.path)
                stats[item.record.path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[item.record.path] = (-1, -1)
    payload = {
        "version": CACHE_VERSION,
        "cfg": cfg.to_dict(),
        "dtype": dtype,
        "items": [[i.record.path, i.frame, *stats[i.record.path]] for i in items],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _as_items(items: Iterable[DicomRecord | ImageItem], cfg: PixelConfig) -> list[ImageItem]:
    out: list[ImageItem] = []
    for item in items:
        out.extend(image_items([item], cfg.frames) if isinstance(item, DicomRecord) else [item])
    if cfg.frames != "all" and any(i.frame is not None for i in out):
        raise DataError("items with explicit frames need PixelConfig(frames='all')")
    return out


def _prepare_cache_dir(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = cache_dir / CACHEDIR_TAG
    if not tag.exists():
        tag.write_text(_TAG_TEXT, encoding="utf-8")


def _build_entry(tmp, root, items, cfg, dtype, workers, progress) -> dict[str, Any]:
    shape = (len(items), *cfg.shape)
    np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=dtype, shape=shape).flush()
    jobs: list[Job] = [(row, i.record.path, i.frame, i.record.frames) for row, i in enumerate(items)]
    args = (str(tmp / "pixels.npy"), str(root), cfg.to_dict(), dtype)
    outcomes = _run_jobs(jobs, args, workers, progress)
    keys = [i.key for i in items]
    failed = [Skipped(keys[row], reason) for row, reason, _ in sorted(outcomes) if reason]
    constant = [keys[row] for row, reason, const in sorted(outcomes) if const and not reason]
    return {
        "version": CACHE_VERSION,
        "cfg": cfg.to_dict(),
        "dtype": dtype,
        "keys": keys,
        "failed": [s.__dict__ for s in failed],
        "constant": constant,
    }


def _decode_jobs(
    jobs: Sequence[Job], array_path: str, root: str, cfg_dict: dict, dtype: str
) -> list[Outcome]:
    """Worker: decode ``jobs`` straight into the shared memory map."""
    cfg = PixelConfig.from_dict(cfg_dict)
    array = np.load(array_path, mmap_mode="r+")
    outcomes: list[Outcome] = []
    for row, rel_path, frame, n_frames in jobs:
        try:
            image = pixels.load_pixels(Path(root) / rel_path, cfg, frame, n_frames=n_frames)
        except pixels.PixelDecodeError as exc:
            outcomes.append((row, exc.reason, False))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the build
            outcomes.append((row, short_reason(exc), False))
            continue
        array[row] = np.rint(image * 255.0) if dtype == "uint8" else image
        outcomes.append((row, None, pixels.is_constant(image)))
    array.flush()
    return outcomes


def _run_jobs(jobs: list[Job], args: tuple, workers: int, progress, fn=_decode_jobs) -> list[Outcome]:
    """Run ``fn(chunk, *args)`` over ``jobs``, in-process or in a pool that survives crashes.

    When a worker process dies (a decoder segfault), the unfinished jobs are replayed
    one at a time in a single worker: the first one that kills it again is the culprit
    and is recorded as failed; the rest continue in parallel.
    """
    total, done = len(jobs), 0
    if workers <= 0:
        outcomes = []
        for job in jobs:
            outcomes.extend(fn([job], *args))
            done += 1
            if progress:
                progress(done, total)
        return outcomes
    outcomes: list[Outcome] = []
    queue, sequential = _chunks(jobs, workers), False
    while queue:
        finished, unfinished = _pool_round(fn, queue, args, 1 if sequential else workers)
        for part in finished:
            outcomes.extend(part)
            done += len(part)
            if progress:
                progress(done, total)
        if not unfinished:
            break
        if sequential:  # the first unfinished job crashed a lone worker: it is the culprit
            culprit, *rest = unfinished
            outcomes.append((culprit[0], _CRASHED, False))
            queue, sequential = _chunks(rest, workers), False
        else:
            queue, sequential = [[job] for job in unfinished], True
    return outcomes


def _pool_round(fn, chunks: list[list[Job]], args: tuple, workers: int):
    """Submit ``chunks``; returns finished outcome lists and unfinished jobs, in order."""
    finished: list[list[Outcome]] = []
    broken: set[int] = set()
    with process_pool(workers) as pool:
        futures = {pool.submit(fn, chunk, *args): n for n, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            try:
                finished.append(future.result())
            except BrokenProcessPool:
                broken.add(futures[future])
    unfinished = [job for n, chunk in enumerate(chunks) if n in broken for job in chunk]
    return finished, unfinished


def _chunks(jobs: Sequence[Job], workers: int) -> list[list[Job]]:
    size = max(1, min(32, len(jobs) // (workers * 4) or 1))
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
