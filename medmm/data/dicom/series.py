"""Which DICOM instance stands for a table row's image cell, and the decoded pixels of those rows.

A cell names a DICOM file, a series folder or a study folder (relative to the table): the row's
image is the middle instance (in file order) of its largest series. Torch-free: the fusion
task and its exported runtime reader both read images through here.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from medmm.data.dicom.cache import PixelCache
from medmm.data.dicom.pixels import PixelConfig
from medmm.data.dicom.header_index import stat_key
from medmm.data.dicom.records import Skipped
from medmm.data.dicom.scan import DicomRecord, list_files, scan_file
from medmm.data.readers import is_missing

__all__ = ["HeaderCache", "RowImages", "choose_images", "load_row_images"]


class RowImages(NamedTuple):
    """Per row a key of ``pixels`` (``""``: no usable image) and the rows' failures."""

    root: Path
    keys: list[str]
    pixels: PixelCache | None  # None when no row has an image
    problems: list[tuple[int, str]]


def choose_images(cells: Iterable[Any], base: Path, *, index_dir: Path | None = None,
                  stats: dict[str, int] | None = None) -> tuple[Path, list[str], list[tuple[int, str]]]:
    """Per row the chosen image's path (relative to the returned root) or ``""``, and failures.

    ``index_dir`` (the pixel cache's folder): headers come from the folder's
    :class:`~medmm.data.dicom.header_index.HeaderIndex` where a file kept its size and mtime, so a
    second run on the same table reads no header again. ``stats`` receives ``headers_read`` and
    ``reused`` (counts of work)."""
    root, choice, problems, headers = _choose(cells, base, index_dir)
    if stats is not None:
        stats.update(headers_read=headers.read, reused=headers.reused)
    return root, choice, problems


def _choose(cells: Iterable[Any], base: Path,
            index_dir: Path | None) -> tuple[Path, list[str], list[tuple[int, str]], HeaderCache]:
    """:func:`choose_images` and the headers it read or found (for the caller's next lookups)."""
    paths = [None if is_missing(v) else Path(str(v).strip()) for v in cells]
    full = [None if c is None else (c if c.is_absolute() else base / c) for c in paths]
    existing = [p.resolve() for p in full if p is not None and p.exists()]
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in existing])) if existing else base
    choice: list[str] = [""] * len(full)
    problems: list[tuple[int, str]] = []
    headers = HeaderCache(root, index_dir)
    for r, p in enumerate(full):
        if p is None:
            continue
        if not p.exists():
            problems.append((r, "image path does not exist"))
            continue
        rel = p.resolve().relative_to(root)
        files = [rel.as_posix()] if p.is_file() else [(rel / f).as_posix() for f in list_files(p)]
        records = [x for x in (headers.scan(f) for f in files) if isinstance(x, DicomRecord)]
        if not records:
            problems.append((r, "no readable DICOM image at the image path"))
            continue
        series: dict[str, list[DicomRecord]] = defaultdict(list)
        for rec in records:
            series[rec.series_uid or rec.path].append(rec)
        largest = max(series.values(), key=len)  # ties: the first in file order
        largest.sort(key=lambda x: x.path)
        choice[r] = largest[len(largest) // 2].path
    headers.save()
    return root, choice, problems, headers


class HeaderCache:
    """One header read per file per run, and none for a file the folder's index already knows."""

    def __init__(self, root: Path, index_dir: Path | None) -> None:
        self.root, self.read, self.reused = root, 0, 0
        self.seen: dict[str, DicomRecord | Skipped] = {}
        self.index = None
        if index_dir is not None:
            from medmm.data.dicom.header_index import HeaderIndex

            self.index = HeaderIndex(Path(index_dir), root)

    def scan(self, rel: str) -> DicomRecord | Skipped:
        """The scan result of ``rel`` (relative to the root)."""
        if rel in self.seen:
            return self.seen[rel]
        stat = stat_key(self.root / rel) if self.index is not None else None
        hit = self.index.get(rel, stat) if self.index is not None else None
        if hit is None:
            hit = scan_file(self.root, rel)
            self.read += 1
            if self.index is not None:
                self.index.put(rel, stat, hit)
        else:
            self.reused += 1
        self.seen[rel] = hit
        return hit

    def save(self) -> None:
        """Write the index (when there is one and it changed)."""
        if self.index is not None:
            self.index.save()


def load_row_images(cells: Iterable[Any], base: Path, config: PixelConfig, cache_dir: Path, *,
                    workers: int) -> RowImages:
    """:func:`choose_images`, then each chosen instance decoded once into a :class:`PixelCache`
    under ``cache_dir``; a row whose image cannot be decoded gets ``""`` and a problem."""
    root, keys, problems, headers = _choose(cells, base, cache_dir)
    if not any(keys):
        return RowImages(root, keys, None, problems)
    records = [x for x in (headers.scan(k) for k in sorted({k for k in keys if k})) if isinstance(x, DicomRecord)]
    pixels = PixelCache.build(root, records, config, cache_dir, workers=workers)
    public = {rec.path: rec.public_path for rec in records}  # the cache is keyed as outputs show files
    keys = [public.get(k, k) if k else k for k in keys]
    failed = {s.path for s in pixels.failed}
    for r, k in enumerate(keys):
        if k and (k in failed or k not in pixels.index):
            problems.append((r, "image could not be decoded"))
            keys[r] = ""
    return RowImages(root, keys, pixels, problems)
