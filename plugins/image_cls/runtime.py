"""image-cls's torch-free input reader for its exports (``TaskSpec.runtime``): the DICOM scan
and pixel pipeline (windowing, resize, 8-bit cache) of the run, units per instance / series /
study as the task pools them, and the source records each unit came from (for DICOM SR)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmm import DataError, Examples, read_json, require
from medmm_plugins.image_cls.config import ImageClsConfig

EXTRA = "runtime"


class PixelBatches(Sequence):  # type: ignore[type-arg]
    """The eval batches of a pixel cache's ``rows``, read from its file one batch at a time (``[B, C, H, W]``
    float32 in ``[0, 1]``), so a prediction never holds every image: each batch opens the file's memory map
    and lets it go, so the pages read do not stay in the process's memory either. Holds the temporary folder
    the cache lives in (removed with this object)."""

    def __init__(self, cache: Any, rows: list[int], batch_size: int, folder: Any = None) -> None:
        self.file, self.rows, self.batch_size, self.folder = Path(cache.path) / "pixels.npy", rows, batch_size, folder
        self.scale = np.float32(cache.scale)

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        start = (i % len(self)) * self.batch_size
        pixels = np.load(self.file, mmap_mode="r")
        x = np.stack([np.asarray(pixels[r], dtype=np.float32) * self.scale
                      for r in self.rows[start:start + self.batch_size]])
        del pixels  # the map (and its resident pages) goes with the batch
        return {"x": x}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))


class ImageInputs:
    """The DICOM scan and pixel pipeline (windowing, resize, 8-bit cache) of the run."""

    accepts = "dicom"

    def __init__(self, export_dir: Path, cfg: ImageClsConfig, batch_size: int, manifest: Mapping[str, Any]) -> None:
        require("pydicom", EXTRA, "image prediction from an export")
        from medmm import PixelConfig

        self.cfg, self.d, self.batch_size = cfg, cfg.data, batch_size
        payload = read_json(export_dir / "artifacts" / "image.json")
        self.problem, self.label_names = payload["problem"], payload["label_names"]
        self.pixels = PixelConfig.from_dict(payload["pixels"])
        self.level = self.d.level

    def read(self, path: Path) -> Path:
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"image prediction expects a folder of DICOM files, got a file: {path}")
        return path

    def _unit(self, item: Any) -> str:
        from medmm import group_key

        return item.key if self.level == "instance" else group_key(item, self.level)

    def examples(self, root: Path) -> Examples:
        from medmm import PixelCache, image_items, labels_from_folders, scan_folder

        records, skipped = scan_folder(root, workers=0)
        if not records:
            raise DataError(f"no readable DICOM image in {root} ({len(skipped)} files skipped)")
        items = image_items(records, self.pixels.frames)
        folder = tempfile.TemporaryDirectory(prefix="medmm-pixels-")  # removed with the batches that read it
        cache = PixelCache.build(root, items, self.pixels, Path(folder.name), workers=0)
        rows = [r for r, it in enumerate(cache.items) if it.key in cache.index]
        chosen = [cache.items[r] for r in rows]
        names = self.label_names or []
        folders = labels_from_folders(sorted({it.record for it in items}, key=lambda r: r.path))
        known = bool(chosen) and self.problem != "multilabel" and all(
            it.record.path in folders and folders[it.record.path] in names for it in chosen)
        y = np.asarray([names.index(folders[it.record.path]) for it in chosen], dtype=np.float32) if known else None
        units = [self._unit(it) for it in chosen]
        cols: dict[str, dict[str, str]] = {}
        recs: dict[str, list[Any]] = {}
        out = self.cfg.output
        pseudonym = None
        if out.include_patient_id and out.hash_patient_id:  # as the task does: keyed HMAC
            from medmm import Pseudonymizer, load_key

            pseudonym = Pseudonymizer(load_key()[0]).patient_id
        for unit, it in zip(units, chosen):
            extra = {"sop_instance_uid": it.record.sop_uid} if self.level == "instance" else {}
            if out.include_patient_id:
                extra["patient_id"] = pseudonym(it.record.patient_id) if pseudonym else it.record.patient_id
            cols.setdefault(unit, extra)
            recs.setdefault(unit, []).append(it.record)
        batches = PixelBatches(cache, rows, self.batch_size, folder)  # read batch by batch, never all images at once
        return Examples(batches, units, y, cols, [(s.path, s.reason) for s in [*skipped, *cache.failed]], recs,
                        skipped_key="path")
