"""image-cls's torch-free input reader for its exports (``TaskSpec.runtime``): the DICOM scan
and pixel pipeline (windowing, resize, 8-bit cache) of the run, units per instance / series /
study as the task pools them, and the source records each unit came from (for DICOM SR)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmm import DataError, Examples, batch_slices, read_json, require
from medmm_plugins.image_cls.config import ImageClsConfig

EXTRA = "runtime"


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
        with tempfile.TemporaryDirectory(prefix="medmm-pixels-") as tmp:
            cache = PixelCache.build(root, items, self.pixels, Path(tmp), workers=0)
            rows = [r for r, it in enumerate(cache.items) if it.key in cache.index]
            scale = np.float32(cache.scale)
            images = np.stack([np.asarray(cache.array[r], dtype=np.float32) * scale for r in rows]) if rows else None
            cache._array = None  # release the memory map before the folder goes
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
        batches = [] if images is None else [{"x": images[s]} for s in batch_slices(len(images), self.batch_size)]
        return Examples(batches, units, y, cols, [(s.path, s.reason) for s in [*skipped, *cache.failed]], recs,
                        skipped_key="path")
