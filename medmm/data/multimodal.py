"""Row-aligned multimodal data as a torch dataset, and its collate function.

One table row per unit; each modality may be absent from a row (presence mask). ``data`` is
the dict a multimodal reader builds (the fusion task's ``rows.load_rows``), every array indexed by table
row:

- ``names``: the modalities, in mask-column order (``text``, ``image``, ``tabular``);
- ``mask``: ``[n_rows, n_modalities]`` bool presence;
- ``emb``: ``{name: [n_rows, dim] float32}`` precomputed embeddings (frozen encoders); a
  modality listed there is served as ``emb_<name>`` instead of its raw input;
- ``tokens``: per row an int64 token-id array (empty where absent);
- ``image_keys`` + ``pixels``: per row a key of the pixel cache (``""`` where absent);
- ``tabular``: ``[n_rows, n_features]`` float32 preprocessed features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["MultimodalRows", "collate_rows", "pad_tokens"]


class MultimodalRows(Dataset):
    """One dict per row: mask, label, index and each modality's input or cached embedding."""

    def __init__(self, rows: np.ndarray, data: dict[str, Any], labels: np.ndarray | None) -> None:
        self.rows, self.data, self.labels = rows, data, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        d = self.data
        item: dict[str, Any] = {"mask": d["mask"][r], "index": i,
                                "label": None if self.labels is None else self.labels[i]}
        for name in d["names"]:
            emb = d["emb"].get(name)
            if emb is not None:
                item[f"emb_{name}"] = emb[r]
            elif name == "text":
                item["text"] = d["tokens"][r]
            elif name == "image":
                key = d["image_keys"][r]
                item["image"] = d["pixels"].image(key) if key else None
            else:
                item["tabular"] = d["tabular"][r]
        return item


def pad_tokens(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded to the longest sequence (width at least 1) and the attention mask."""
    from medmm.task import pad_sequences

    ids, mask = pad_sequences(sequences, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def collate_rows(items: list[dict[str, Any]], *, pad_id: int, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """Stack :class:`MultimodalRows` items; text padded to the longest row, absent images as zeros.

    A DataLoader's ``collate_fn``: ``functools.partial(collate_rows, pad_id=..., image_shape=...)``
    (picklable, so it works in worker processes)."""
    out: dict[str, Any] = {"mask": torch.from_numpy(np.stack([it["mask"] for it in items])),
                           "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
    if items[0]["label"] is not None:
        out["label"] = torch.tensor(np.asarray([it["label"] for it in items]), dtype=torch.long)
    first = items[0]
    for key in first:
        if key.startswith("emb_") or key == "tabular":
            out[key] = torch.from_numpy(np.stack([np.asarray(it[key], dtype=np.float32) for it in items]))
    if "text" in first:
        out["text"] = pad_tokens([it["text"] for it in items], pad_id)
    if "image" in first:
        zeros = np.zeros(image_shape, dtype=np.float32)
        out["image"] = torch.from_numpy(np.stack([zeros if it["image"] is None else it["image"] for it in items]))
    return out

