"""DICOM folder reader for image tasks: scan, pixel pipeline, cache, labels, dataset.

Typical use in a task's ``build_data``::

    records, skipped = scan_folder(root, workers=2)
    labels = labels_from_folders(records)            # or labels_from_csv(records, csv)
    cfg = PixelConfig(size=224, channels=3)
    cache = PixelCache.build(root, records, cfg, cache_dir, workers=2)
    rows = [r for r, item in enumerate(cache.items)
            if item.key in cache.index and item.record.path in labels]  # decoded and labelled
    targets = [labels.target(cache.items[r].record.path) for r in rows]
    groups = [group_key(cache.items[r], "patient") for r in rows]      # for Task.assign_splits
    dataset = DicomImageDataset(cache, rows, targets)
    task.write_skipped([(s.path, s.reason) for s in skipped + cache.failed], key="path")

The submodules import no torch; only :class:`DicomImageDataset` here does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medmm.data.dicom.cache import PixelCache, cache_key
from medmm.data.dicom.labels import LabelTable, labels_from_csv, labels_from_folders
from medmm.data.dicom.pixels import (
    WINDOW_PRESETS,
    PixelConfig,
    PixelDecodeError,
    apply_window,
    is_constant,
    load_pixels,
)
from medmm.data.dicom.scan import (
    DicomRecord,
    ImageItem,
    Skipped,
    expand_frames,
    group_key,
    image_items,
    scan_folder,
    write_skipped_csv,
)

__all__ = [
    "WINDOW_PRESETS",
    "DicomImageDataset",
    "DicomRecord",
    "ImageItem",
    "LabelTable",
    "PixelCache",
    "PixelConfig",
    "PixelDecodeError",
    "Skipped",
    "apply_window",
    "cache_key",
    "expand_frames",
    "group_key",
    "image_items",
    "is_constant",
    "labels_from_csv",
    "labels_from_folders",
    "load_pixels",
    "scan_folder",
    "write_skipped_csv",
]


# Images read between two releases of the pixel cache's memory map: each release drops the pages read so
# far from this process's RSS (a remap costs one .npy header read), so a pass over the cache holds at most
# this many images' pages (4 MB at 32 px, 200 MB at 224 px in uint8), not the whole cache.
RELEASE_EVERY = 4096


class DicomImageDataset(Dataset):
    """``(float32 tensor [C, H, W] in [0, 1], label)`` pairs read from a :class:`PixelCache`.

    No DICOM is decoded here. Labels that are sequences (multi-label) become float32
    tensors; anything else is returned as given. ``transform`` receives the tensor.
    The memory map is reopened lazily in each DataLoader worker, never pickled.
    """

    def __init__(
        self,
        cache: PixelCache,
        rows: Sequence[int],
        labels: Sequence[Any],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
        self.cache, self.rows, self.labels, self.transform = cache, list(rows), list(labels), transform
        self._scale = np.float32(cache.scale)
        self.release_every = RELEASE_EVERY  # images read between two releases of the memory map
        self._reads = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image = torch.from_numpy(np.asarray(self.cache.array[self.rows[i]], dtype=np.float32) * self._scale)
        self._reads += 1
        if self._reads % self.release_every == 0:  # a pass over 20,000 images kept all their pages resident (#30)
            self.cache.release()
        if self.transform is not None:
            image = self.transform(image)
        label = self.labels[i]
        if isinstance(label, (list, tuple, np.ndarray)):
            label = torch.as_tensor(label, dtype=torch.float32)
        return image, label
